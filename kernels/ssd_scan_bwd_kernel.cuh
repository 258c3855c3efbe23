#pragma once
// Mamba2 SSD scan backward (math, grid and precision: ssd_scan_common.cuh).
//
// First pass: the forward kernel without outputs stores the state entering every chunk
// (chunk_states). Second pass: a block (P tile, head h, sequence b) walks the chunks in reverse
// with dS [p_tile, N] (the gradient of the state leaving the chunk) in shared memory, fp32. Per
// chunk, separated by block barriers:
//   P1. load x, dy [T, p_tile], B, C [T, N], S_prev [p_tile, N]; warp 0: delta, cum, softplus'
//   P2. CB = C B^T, Q = dY X^T [T, T];  Z = C S_prev^T [T, p_tile]
//   P3. Md = CB o L o delta, Rm = Q o L o delta (input type); V = CB o L o Q (fp32, over Q),
//       its delta-weighted row sums; off_i = exp(cum_i) dy_i . Z_i; edy = exp(cum) dY;
//       block partials of <dS, S_prev>; dD partials (thread per column)
//   P4. U = B dSt^T [T, p_tile] (over Z); column sums of V; <dS, S_prev>
//   P5. per row j: xu_j = x_j . U_j; U_j <- delta_j exp(cum_last - cum_j) U_j + D dy_j;
//       x_j <- delta_j exp(cum_last - cum_j) x_j (in place: x is not needed raw any more)
//   P6. dX = Md^T dY + U;  dB = Rm^T C + X' dSt;  dC = Rm B + edy S_prev (straight to the
//       fp32 partial slices in global memory; in a cluster, to dbr / dcr in shared memory);
//       dS = exp(cum_last) dS + edy^T C
//   P7. write dx; dSt = dS; warp 0: dcum, its suffix scan da, ddt, dA partial; in a cluster
//       (after a cluster barrier), block rank r adds rows r, r + K, ... of the K blocks' dbr /
//       dcr in rank order and writes them to the partial slice, then a cluster barrier keeps
//       every block's dbr / dcr until its peers have read them.
#include <cooperative_groups.h>

#include <type_traits>

#include "ssd_scan_bwd_regs_kernel.cuh"
#include "ssd_scan_common.cuh"
#include "ssd_scan_fwd_kernel.cuh"
#include "static_switch.h"

namespace aim::kernels {

namespace ssd {

namespace cg = cooperative_groups;

// kCluster: launched in clusters of p.cluster_heads (> 1) blocks. A separate instantiation keeps
// the cluster's code out of the plain kernel (whose register allocation it would change).
// vec: the tiles move in 16-byte vectors (ssd_vec16_ok), else element by element.
template <typename Tin, bool kSoftplus, bool kCluster>
__global__ void __launch_bounds__(kThreads) ssd_bwd_kernel(const SsdScanParams p, bool vec) {
  using Ops = TileOps<Tin>;
  using Acc = typename Ops::Acc;
  constexpr int tin = static_cast<int>(sizeof(Tin));
  extern __shared__ __align__(128) unsigned char smem[];

  const int pt = p.p_tile, np = p.dstate_pad, nstate = p.dstate, hdim = p.headdim;
  const int kc = kCluster ? p.cluster_heads : 1;  // blocks (heads) per cluster
  const BwdSmem lay(pt, np, tin, kc > 1);
  Tin* xs = smem_at<Tin>(smem, lay.xs);
  Tin* dys = smem_at<Tin>(smem, lay.dys);
  Tin* edy = smem_at<Tin>(smem, lay.edy);
  Tin* bs = smem_at<Tin>(smem, lay.bs);
  Tin* cs = smem_at<Tin>(smem, lay.cs);
  Tin* sp = smem_at<Tin>(smem, lay.sp);
  Tin* dst = smem_at<Tin>(smem, lay.dst);
  Tin* md = smem_at<Tin>(smem, lay.md);
  Tin* rm = smem_at<Tin>(smem, lay.rm);
  float* ds = smem_at<float>(smem, lay.ds);
  float* cb = smem_at<float>(smem, lay.cb);
  float* q = smem_at<float>(smem, lay.q);
  float* zu = smem_at<float>(smem, lay.zu);
  float* delta = smem_at<float>(smem, lay.delta);
  float* cum = smem_at<float>(smem, lay.cum);
  float* dsig = smem_at<float>(smem, lay.dsig);
  float* rowv = smem_at<float>(smem, lay.rowv);
  float* colv = smem_at<float>(smem, lay.colv);
  float* off = smem_at<float>(smem, lay.off);
  float* xu = smem_at<float>(smem, lay.xu);
  float* wsum = smem_at<float>(smem, lay.wsum);
  float* dssp = smem_at<float>(smem, lay.dssp);
  float* dbr = smem_at<float>(smem, lay.dbr);
  float* dcr = smem_at<float>(smem, lay.dcr);
  const int ldp = padded_ld(pt, tin), ldn = padded_ld(np, tin), ldt = padded_ld(kChunk, tin);
  const int ldnf = padded_ld(np, 4), ldtf = padded_ld(kChunk, 4), ldpf = padded_ld(pt, 4);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int p0 = tile * pt;
  const int prows = min(pt, hdim - p0);
  const int grp = h / (p.nheads / p.ngroups);
  const float a_h = p.A[h];
  const float bias = p.dt_bias != nullptr ? p.dt_bias[h] : 0.f;
  const int nchunks = p.nchunks, ptot = p.p_tiles * pt;

  const Tin* x = static_cast<const Tin*>(p.x) + b * p.x_batch_stride + h * p.x_head_stride + p0;
  const Tin* dy = static_cast<const Tin*>(p.dy) + b * p.dy_batch_stride + h * p.dy_head_stride + p0;
  const Tin* dt = static_cast<const Tin*>(p.dt) + b * p.dt_batch_stride + h * p.dt_head_stride;
  const Tin* bm = static_cast<const Tin*>(p.Bm) + b * p.b_batch_stride + grp * p.b_group_stride;
  const Tin* cm = static_cast<const Tin*>(p.Cm) + b * p.c_batch_stride + grp * p.c_group_stride;
  Tin* dx = static_cast<Tin*>(p.dx) + b * p.dx_batch_stride + h * p.dx_head_stride + p0;
  const Tin* states = static_cast<const Tin*>(p.chunk_states) +
                      (static_cast<int64_t>(b) * p.nheads + h) * nchunks * ptot * np +
                      static_cast<int64_t>(p0) * np;
  // dB / dC partial slices: rows (b, t) of [B, nchunks * T], column block
  // (h / kc) * p_tiles + tile (the cluster's heads share it).
  const int64_t part_ld = static_cast<int64_t>(p.nheads / kc) * p.p_tiles * np;
  const int64_t part_col = (static_cast<int64_t>(h / kc) * p.p_tiles + tile) * np;
  const int64_t head_state = (static_cast<int64_t>(b) * p.nheads + h) * hdim;

  // dS from the final state's gradient, zeros in the padding.
  for (int idx = tid; idx < pt * np; idx += kThreads) {
    const int r = idx / np, n = idx % np;
    float v = 0.f;
    if (p.dfinal_state != nullptr && r < prows && n < nstate) {
      v = p.dfinal_state[(head_state + p0 + r) * nstate + n];
    }
    ds[r * ldnf + n] = v;
    dst[r * ldn + n] = from_float<Tin>(v);
  }
  // Per-thread running sums: dD for column tid (tid < pt), dA on warp 0.
  float dd_acc = 0.f, da_acc = 0.f;

  const Tin zero = from_float<Tin>(0.f);
  for (int c = nchunks - 1; c >= 0; --c) {
    const int t0 = c * kChunk, clen = min(kChunk, p.len - t0);

    // P1. Loads.
    // Warp 0's dt of the chunk first, so that its load is in flight with the tiles'.
    const float dt_raw =
        warp == 0 && lane < clen ? to_float(dt[(t0 + lane) * p.dt_len_stride]) : 0.f;
    const Tin* chunk_state = states + static_cast<int64_t>(c) * ptot * np;
    if (vec) {
      TileCopy16<Tin, 1> xl, dyl;
      TileCopy16<Tin, 2> bl, cl;
      TileCopy16<Tin, 4> sl;
      xl.load(x + t0 * p.x_len_stride, p.x_len_stride, kChunk, pt, clen, prows);
      dyl.load(dy + t0 * p.dy_len_stride, p.dy_len_stride, kChunk, pt, clen, prows);
      bl.load(bm + t0 * p.b_len_stride, p.b_len_stride, kChunk, np, clen, nstate);
      cl.load(cm + t0 * p.c_len_stride, p.c_len_stride, kChunk, np, clen, nstate);
      sl.load(chunk_state, np, pt, np, pt, np);
      xl.store(xs, ldp);
      dyl.store(dys, ldp);
      bl.store(bs, ldn);
      cl.store(cs, ldn);
      sl.store(sp, ldn);
    } else {
      for (int idx = tid; idx < kChunk * pt; idx += kThreads) {
        const int i = idx / pt, pp = idx % pt;
        const bool in = i < clen && pp < prows;
        xs[i * ldp + pp] = in ? x[(t0 + i) * p.x_len_stride + pp] : zero;
        dys[i * ldp + pp] = in ? dy[(t0 + i) * p.dy_len_stride + pp] : zero;
      }
      for (int idx = tid; idx < kChunk * np; idx += kThreads) {
        const int i = idx / np, n = idx % np;
        const bool in = i < clen && n < nstate;
        bs[i * ldn + n] = in ? bm[(t0 + i) * p.b_len_stride + n] : zero;
        cs[i * ldn + n] = in ? cm[(t0 + i) * p.c_len_stride + n] : zero;
      }
      for (int idx = tid; idx < pt * np; idx += kThreads) {
        const int r = idx / np, n = idx % np;
        sp[r * ldn + n] = chunk_state[idx];
      }
    }
    if (warp == 0) {
      float d = 0.f, dsg = 0.f;
      if (lane < clen) {
        const float z = dt_raw + bias;
        d = kSoftplus ? softplus(z) : z;
        dsg = kSoftplus ? softplus_grad(z) : 1.f;
      }
      delta[lane] = d;
      dsig[lane] = dsg;
      cum[lane] = warp_inclusive_scan(d * a_h);
    }
    __syncthreads();
    const float cum_last = cum[kChunk - 1];

    // P2. CB = C B^T, Q = dY X^T, Z = C S_prev^T.
    for_each_tile(kChunk, kChunk, 0, [&](int m0, int n0) {
      Acc acc;
      Ops::zero(acc);
      Ops::template mma<RowMajor, ColMajor>(acc, a_tile<RowMajor>(cs, ldn, m0), ldn,
                                            b_tile<ColMajor>(bs, ldn, n0), ldn, np);
      Ops::store(cb + m0 * ldtf + n0, acc, ldtf);
    });
    for_each_tile(kChunk, kChunk, 4, [&](int m0, int n0) {
      Acc acc;
      Ops::zero(acc);
      Ops::template mma<RowMajor, ColMajor>(acc, a_tile<RowMajor>(dys, ldp, m0), ldp,
                                            b_tile<ColMajor>(xs, ldp, n0), ldp, pt);
      Ops::store(q + m0 * ldtf + n0, acc, ldtf);
    });
    for_each_tile(kChunk, pt, 0, [&](int m0, int n0) {
      Acc acc;
      Ops::zero(acc);
      Ops::template mma<RowMajor, ColMajor>(acc, a_tile<RowMajor>(cs, ldn, m0), ldn,
                                            b_tile<ColMajor>(sp, ldn, n0), ldn, np);
      Ops::store(zu + m0 * ldpf + n0, acc, ldpf);
    });
    __syncthreads();

    // P3. Row-owned work: warp w takes rows w, w + 8, ...; lane j is a column of [T, T].
    for (int i = warp; i < kChunk; i += kWarps) {
      const int j = lane;
      float v = 0.f, mval = 0.f, rval = 0.f;
      if (j <= i) {
        const float l = __expf(cum[i] - cum[j]);
        const float m = cb[i * ldtf + j] * l;
        const float qv = q[i * ldtf + j];
        mval = m * delta[j];
        rval = qv * l * delta[j];
        v = m * qv;
      }
      md[i * ldt + j] = from_float<Tin>(mval);
      rm[i * ldt + j] = from_float<Tin>(rval);
      q[i * ldtf + j] = v;
      const float row = warp_sum(v * delta[j]);
      const float e = __expf(cum[i]);
      float dz = 0.f;
      for (int pp = lane; pp < pt; pp += 32) {
        const float g = to_float(dys[i * ldp + pp]);
        dz += g * zu[i * ldpf + pp];
        edy[i * ldp + pp] = from_float<Tin>(g * e);
      }
      dz = warp_sum(dz);
      if (lane == 0) {
        rowv[i] = row;
        off[i] = e * dz;
      }
    }
    {
      float part = 0.f;
      for (int idx = tid; idx < pt * np; idx += kThreads) {
        const int r = idx / np, n = idx % np;
        part += ds[r * ldnf + n] * to_float(sp[r * ldn + n]);
      }
      part = warp_sum(part);
      if (lane == 0) wsum[warp] = part;
    }
    if (p.dD_partial != nullptr && tid < pt) {
      for (int i = 0; i < kChunk; ++i) dd_acc += to_float(xs[i * ldp + tid]) * to_float(dys[i * ldp + tid]);
    }
    __syncthreads();

    // P4. U = B dSt^T; column sums of V; <dS, S_prev>.
    for_each_tile(kChunk, pt, 0, [&](int m0, int n0) {
      Acc acc;
      Ops::zero(acc);
      Ops::template mma<RowMajor, ColMajor>(acc, a_tile<RowMajor>(bs, ldn, m0), ldn,
                                            b_tile<ColMajor>(dst, ldn, n0), ldn, np);
      Ops::store(zu + m0 * ldpf + n0, acc, ldpf);
    });
    if (warp == kWarps - 1) {
      float col = 0.f;
      for (int i = 0; i < kChunk; ++i) col += q[i * ldtf + lane];
      colv[lane] = col;
      if (lane == 0) {
        float total = 0.f;
        for (int w = 0; w < kWarps; ++w) total += wsum[w];
        dssp[0] = total;
      }
    }
    __syncthreads();

    // P5. Per row j: x_j . u_j, then the state terms of dx and the scaled x, in place.
    for (int j = warp; j < kChunk; j += kWarps) {
      float dot = 0.f;
      for (int pp = lane; pp < pt; pp += 32) dot += to_float(xs[j * ldp + pp]) * zu[j * ldpf + pp];
      dot = warp_sum(dot);
      const float sc = delta[j] * __expf(cum_last - cum[j]);
      for (int pp = lane; pp < pt; pp += 32) {
        float dv = 0.f;
        if (p.D != nullptr && pp < prows) dv = p.d_per_channel ? p.D[h * hdim + p0 + pp] : p.D[h];
        zu[j * ldpf + pp] = sc * zu[j * ldpf + pp] + dv * to_float(dys[j * ldp + pp]);
        xs[j * ldp + pp] = from_float<Tin>(sc * to_float(xs[j * ldp + pp]));
      }
      if (lane == 0) xu[j] = dot;
    }
    __syncthreads();

    // P6. dX, dB, dC (to the partial slices) and dS carried to the previous chunk.
    for_each_tile(kChunk, pt, 0, [&](int m0, int n0) {
      Acc acc;
      Ops::load(acc, zu + m0 * ldpf + n0, ldpf);
      Ops::template mma<ColMajor, RowMajor>(acc, a_tile<ColMajor>(md, ldt, m0), ldt,
                                            b_tile<RowMajor>(dys, ldp, n0), ldp, kChunk);
      Ops::store(zu + m0 * ldpf + n0, acc, ldpf);
    });
    float* db_rows = p.dB_partial + (static_cast<int64_t>(b) * nchunks * kChunk + t0) * part_ld + part_col;
    float* dc_rows = p.dC_partial + (static_cast<int64_t>(b) * nchunks * kChunk + t0) * part_ld + part_col;
    // Without a cluster the tiles go straight to the partial slice; in one, to dbr / dcr.
    float* const db_out = kc > 1 ? dbr : db_rows;
    float* const dc_out = kc > 1 ? dcr : dc_rows;
    const int out_ld = kc > 1 ? ldnf : static_cast<int>(part_ld);
    for_each_tile(kChunk, np, 2, [&](int m0, int n0) {
      Acc acc;
      Ops::zero(acc);
      Ops::template mma<ColMajor, RowMajor>(acc, a_tile<ColMajor>(rm, ldt, m0), ldt,
                                            b_tile<RowMajor>(cs, ldn, n0), ldn, kChunk);
      Ops::template mma<RowMajor, RowMajor>(acc, a_tile<RowMajor>(xs, ldp, m0), ldp,
                                            b_tile<RowMajor>(dst, ldn, n0), ldn, pt);
      Ops::store(db_out + static_cast<int64_t>(m0) * out_ld + n0, acc, out_ld);
    });
    for_each_tile(kChunk, np, 4, [&](int m0, int n0) {
      Acc acc;
      Ops::zero(acc);
      Ops::template mma<RowMajor, RowMajor>(acc, a_tile<RowMajor>(rm, ldt, m0), ldt,
                                            b_tile<RowMajor>(bs, ldn, n0), ldn, kChunk);
      Ops::template mma<RowMajor, RowMajor>(acc, a_tile<RowMajor>(edy, ldp, m0), ldp,
                                            b_tile<RowMajor>(sp, ldn, n0), ldn, pt);
      Ops::store(dc_out + static_cast<int64_t>(m0) * out_ld + n0, acc, out_ld);
    });
    {
      const float decay = __expf(cum_last);
      for_each_tile(pt, np, 6, [&](int m0, int n0) {
        Acc acc;
        Ops::load(acc, ds + m0 * ldnf + n0, ldnf);
        Ops::scale(acc, decay);
        Ops::template mma<ColMajor, RowMajor>(acc, a_tile<ColMajor>(edy, ldp, m0), ldp,
                                              b_tile<RowMajor>(cs, ldn, n0), ldn, kChunk);
        Ops::store(ds + m0 * ldnf + n0, acc, ldnf);
      });
    }
    // In a cluster, the peers' dbr / dcr are read next: a cluster barrier (which is a block
    // barrier too).
    if (kc > 1) {
      cg::this_cluster().sync();
    } else {
      __syncthreads();
    }

    // P7. dx; the rounded dS; the decay gradients of the chunk; the cluster's dB / dC rows.
    for (int idx = tid; idx < kChunk * pt; idx += kThreads) {
      const int i = idx / pt, pp = idx % pt;
      if (i < clen && pp < prows) dx[(t0 + i) * p.dx_len_stride + pp] = from_float<Tin>(zu[i * ldpf + pp]);
    }
    for (int idx = tid; idx < pt * np; idx += kThreads) {
      const int r = idx / np, n = idx % np;
      dst[r * ldn + n] = from_float<Tin>(ds[r * ldnf + n]);
    }
    if (warp == 0) {
      const int i = lane;
      const float e = __expf(cum_last - cum[i]);
      const float sterm = delta[i] * e * xu[i];
      float dcum = rowv[i] - delta[i] * colv[i] + off[i] - sterm;
      const float sterm_sum = warp_sum(sterm);
      if (i == kChunk - 1) dcum += __expf(cum_last) * dssp[0] + sterm_sum;
      const float da = warp_inclusive_suffix_scan(dcum);
      const float ddelta = colv[i] + e * xu[i] + a_h * da;
      if (i < clen) {
        p.ddt_partial[((static_cast<int64_t>(tile) * p.batch + b) * p.len + t0 + i) * p.nheads + h] =
            ddelta * dsig[i];
      }
      da_acc += delta[i] * da;
    }
    if (kc > 1) {
      // Rows rank, rank + kc, ... of dB and dC: the cluster's heads added in rank (head) order,
      // four columns at a time (np and the rows' strides are multiples of 4 floats), every
      // peer's load issued before the sum.
      const cg::cluster_group cluster = cg::this_cluster();
      const int rank = static_cast<int>(cluster.block_rank());
      const int nq = np / 4, rows = (kChunk - rank + kc - 1) / kc, per = rows * nq;
      for (int idx = tid; idx < 2 * per; idx += kThreads) {
        const int which = idx / per, rest = idx % per;
        const int i = rank + rest / nq * kc, n = rest % nq * 4;
        float* const own = (which == 0 ? dbr : dcr) + i * ldnf + n;
        float4 part[kSsdMaxClusterHeads];
#pragma unroll
        for (int q = 0; q < kSsdMaxClusterHeads; ++q) {
          if (q < kc) part[q] = *reinterpret_cast<const float4*>(cluster.map_shared_rank(own, q));
        }
        float4 sum = part[0];
#pragma unroll
        for (int q = 1; q < kSsdMaxClusterHeads; ++q) {
          if (q < kc) {
            sum.x += part[q].x;
            sum.y += part[q].y;
            sum.z += part[q].z;
            sum.w += part[q].w;
          }
        }
        float* const out = (which == 0 ? db_rows : dc_rows) + static_cast<int64_t>(i) * part_ld + n;
        *reinterpret_cast<float4*>(out) = sum;
      }
      // Every peer has read this block's dbr / dcr before the next chunk (or the exit) ends them.
      cluster.sync();
    } else {
      __syncthreads();
    }
  }

  if (p.dD_partial != nullptr && tid < pt) p.dD_partial[(static_cast<int64_t>(b) * p.nheads + h) * ptot + p0 + tid] = dd_acc;
  if (warp == 0) {
    const float total = warp_sum(da_acc);
    if (lane == 0) p.dA_partial[(static_cast<int64_t>(tile) * p.batch + b) * p.nheads + h] = total;
  }
}

/// Launch configuration of the second pass: clusters of `cluster_heads` blocks along the heads
/// (grid y), with the shared memory of `lay`.
struct BwdClusterLaunch {
  cudaLaunchAttribute attr{};
  cudaLaunchConfig_t cfg{};
  BwdClusterLaunch(dim3 grid, int cluster_heads, size_t smem, cudaStream_t stream) {
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = 1;
    attr.val.clusterDim.y = static_cast<unsigned>(cluster_heads);
    attr.val.clusterDim.z = 1;
    cfg.gridDim = grid;
    cfg.blockDim = dim3(kThreads);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cfg.attrs = &attr;
    cfg.numAttrs = 1;
  }
  BwdClusterLaunch(const BwdClusterLaunch&) = delete;  // cfg points at attr
};

}  // namespace ssd

template <typename Tin>
cudaError_t ssd_bwd_launch(const SsdScanParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.len == 0 || p.nheads == 0 || p.headdim == 0) return cudaSuccess;
  const int kc = p.cluster_heads;
  // A cluster stays inside one group (its heads share B and C) and divides the heads.
  if (kc < 1 || kc > kSsdMaxClusterHeads || (kc & (kc - 1)) != 0 || p.ngroups < 1 ||
      p.nheads % p.ngroups != 0 || (p.nheads / p.ngroups) % kc != 0) {
    return cudaErrorInvalidValue;
  }
  bool regs = false;
  if constexpr (std::is_same<Tin, __nv_bfloat16>::value) regs = ssd::regs_bwd_ok(p);
  // Pairs of slices are the register kernel's, on a group's heads x P tiles.
  if (p.slice_pairs != 1 && (p.slice_pairs != 2 || !regs || !ssd::regs_bwd_pairs_fit(p, 1 << 30) ||
                              reinterpret_cast<uintptr_t>(p.dB_partial) % 16 != 0 ||
                              reinterpret_cast<uintptr_t>(p.dC_partial) % 16 != 0)) {
    return cudaErrorInvalidValue;
  }
  cudaError_t err = ssd_fwd_launch<Tin, false, true>(p, stream);
  if (err != cudaSuccess) return err;
  if constexpr (std::is_same<Tin, __nv_bfloat16>::value) {
    if (regs) return ssd_bwd_regs_launch(p, stream);
  }
  const ssd::BwdSmem lay(p.p_tile, p.dstate_pad, static_cast<int>(sizeof(Tin)), kc > 1);
  const dim3 grid(p.p_tiles, p.nheads, p.batch);
  const bool vec = !p.element_loads && ssd::ssd_vec16_ok(p, static_cast<int>(sizeof(Tin)), /*backward=*/true);
  BOOL_SWITCH(p.dt_softplus, kSoftplus, [&] {
    BOOL_SWITCH(kc > 1, kCluster, [&] {
      auto kernel = &ssd::ssd_bwd_kernel<Tin, kSoftplus, kCluster>;
      static DynamicSmemOptIn opt_in;
      err = opt_in.ensure(kernel, lay.bytes);
      if (err != cudaSuccess) return;
      if (!kCluster) {
        kernel<<<grid, ssd::kThreads, lay.bytes, stream>>>(p, vec);
        err = cudaGetLastError();
        return;
      }
      const ssd::BwdClusterLaunch launch(grid, kc, lay.bytes, stream);
      err = cudaLaunchKernelEx(&launch.cfg, kernel, p, vec);
    });
  });
  return err;
}

/// Clusters of `cluster_heads` second-pass blocks (with the cluster's shared memory for p_tile and
/// dstate_pad) the current device can run at once; 0 when it cannot run one.
template <typename Tin>
int ssd_bwd_active_clusters(int cluster_heads, int p_tile, int dstate_pad) {
  const ssd::BwdSmem lay(p_tile, dstate_pad, static_cast<int>(sizeof(Tin)), true);
  auto kernel = &ssd::ssd_bwd_kernel<Tin, true, true>;
  int count = 0;
  static DynamicSmemOptIn opt_in;
  if (opt_in.ensure(kernel, lay.bytes) != cudaSuccess) return 0;
  const ssd::BwdClusterLaunch launch(dim3(1, static_cast<unsigned>(cluster_heads), 1), cluster_heads,
                                     lay.bytes, nullptr);
  if (cudaOccupancyMaxActiveClusters(&count, kernel, &launch.cfg) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

}  // namespace aim::kernels
