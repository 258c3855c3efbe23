#pragma once
// Mamba2 SSD scan backward, bf16, with dS in registers (math: ssd_scan_common.cuh; the first
// pass, the states entering each chunk, is the forward kernel's chunk_states).
//
// A block (P tile of 32 or 64 rows, head h, sequence b) has kNW = P tile / 16 warps and walks
// the chunks in reverse. Warp w keeps rows [16 w, 16 w + 16) of dS (the gradient of the state
// leaving the chunk) as fp32 mma accumulators for the whole sequence, as the register forward
// keeps S; the products that contract over the state's columns (U = B dS^T) take dS from those
// registers, and dS = exp(cum_last) dS + (e o dY)^T C accumulates into them (e_i = exp(cum_i)).
// Products that contract over P (dB's X' dS, dC's (e o dY) S_prev, Q = dY X^T) read shared
// memory: dS rounded to bf16 (dst), and the chunk's entering state S_prev. x, dy, B and C come in
// by 16-byte asynchronous copies into one of two buffers a chunk ahead; S_prev into one buffer,
// once its last reader (phase A) is done.
// Per chunk, with two block barriers:
//   wait for the tiles; barrier; start the previous chunk's x, dy, B, C copies (and its dt)
//   A. every warp: delta, cum, softplus'.  Units (16 x 16 blocks (0,0), (1,0), (1,1) of the
//      chunk's [T, T] matrices, over the warps): CB = C B^T, Q = dY X^T -> Md = CB o L o delta,
//      Rm = Q o L o delta (bf16), V = CB o L o Q (fp32), to shared memory.
//      Per warp, its 16 columns p: U = B dS^T (registers) -> x_j . U_j partials and
//      dx_j = delta_j exp(cum_last - cum_j) U_j + D dy_j; Z = C S_prev^T -> dy_i . Z_i partials;
//      <dS, S_prev> partial; dS rounded to dst.  Per warp, its 16-column blocks of N: the
//      state term of dC, (e o dY) S_prev, into registers kept to phase B.
//   barrier; start the previous chunk's S_prev copy
//   B. dx += Md^T dY (written); dB = Rm^T C + X' dst with X'_j = delta_j exp(cum_last - cum_j)
//      x_j, and dC += Rm B, for the warp's column blocks (to the fp32 partial slices); dS
//      updated; warp 0: dcum from V and the partials, its suffix scan da, ddt, dA.
// The partial sums over the warps are added in warp order (deterministic). dD: x . dy summed
// per column in registers over the chunks. No thread block clusters (the default backward).
#include "ssd_scan_common.cuh"
#include "ssd_scan_fwd_regs_kernel.cuh"  // kRegs* and regs_copy_tile
#include "static_switch.h"
#include "warp_mma.cuh"

namespace aim::kernels {

namespace ssd {

/// Buffers of the register backward, bf16 unless noted: two of {xs, dys [T][pt + 8], bs, cs
/// [T][np + 8]}; sp, dst [pt][np + 8]; md, rm [T][T + 8]; fp32: per-unit row and column sums
/// of V, row_sum / col_sum [3][16]; per-warp partial rows xu, off [kMaxNW][T] and dssp [kMaxNW].
struct RegsBwdSmem {
  static constexpr int kMaxNW = 4;
  int ldx, ldn;
  size_t xs, dys, bs, cs;  ///< buffer 0; buffer k at + k * buf_bytes
  size_t buf_bytes, sp, dst, md, rm, row_sum, col_sum, xu, off, dssp, bytes;
  __host__ __device__ RegsBwdSmem(int pt, int np) : ldx(pt + 8), ldn(np + 8) {
    SmemCarve c;
    xs = c.take(size_t{kChunk} * ldx, 2);
    dys = c.take(size_t{kChunk} * ldx, 2);
    bs = c.take(size_t{kChunk} * ldn, 2);
    cs = c.take(size_t{kChunk} * ldn, 2);
    buf_bytes = c.take(0, 1);
    c.take(buf_bytes, 1);
    sp = c.take(size_t(pt) * ldn, 2);
    dst = c.take(size_t(pt) * ldn, 2);
    md = c.take(size_t{kChunk} * kRegsLdm, 2);
    rm = c.take(size_t{kChunk} * kRegsLdm, 2);
    row_sum = c.take(3 * 16, 4);
    col_sum = c.take(3 * 16, 4);
    xu = c.take(size_t{kMaxNW} * kChunk, 4);
    off = c.take(size_t{kMaxNW} * kChunk, 4);
    dssp = c.take(kMaxNW, 4);
    bytes = c.bytes;
  }
};

/// An A fragment's rows g (registers 0, 2) scaled by s0 and rows g + 8 (registers 1, 3) by s8,
/// rounded back to bf16.
__device__ __forceinline__ void scale_rows(uint32_t (&a)[4], float s0, float s8) {
  namespace wm = warp_mma;
  a[0] = wm::pack_bf16(wm::bf16_lo(a[0]) * s0, wm::bf16_hi(a[0]) * s0);
  a[1] = wm::pack_bf16(wm::bf16_lo(a[1]) * s8, wm::bf16_hi(a[1]) * s8);
  a[2] = wm::pack_bf16(wm::bf16_lo(a[2]) * s0, wm::bf16_hi(a[2]) * s0);
  a[3] = wm::pack_bf16(wm::bf16_lo(a[3]) * s8, wm::bf16_hi(a[3]) * s8);
}

/// Sum over the 4 lanes of a quad (the lanes that share a row g of an mma fragment).
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(kFullMask, v, 1);
  v += __shfl_xor_sync(kFullMask, v, 2);
  return v;
}

/// acc[mb][k] += (A rows scaled) B over K = kNW * 16: A [T, pt] bf16 rows in shared memory with
/// rows 16 mb + g and + 8 scaled by rs[mb][0] and rs[mb][1] (rounded to bf16), B [pt, np] bf16
/// rows, the warp's 16-column blocks n16 = warp + kNW k of N. Each B fragment is loaded once for
/// both row blocks. dC's state term (A = dY, rs = exp(cum), B = S_prev) and dB's (A = x,
/// rs = delta exp(cum_last - cum), B = dS).
template <int kNW, int kNB>
__device__ __forceinline__ void regs_scaled_rows_times(float (&acc)[2][kNB][2][4], const __nv_bfloat16* a, int lda,
                                                       const float (&rs)[2][2], const __nv_bfloat16* b, int ldb,
                                                       int warp, int nk) {
  namespace wm = warp_mma;
#pragma unroll
  for (int ks = 0; ks < kNW; ++ks) {
    uint32_t fa[2][4];
#pragma unroll
    for (int mb = 0; mb < 2; ++mb) {
      wm::ldmatrix_x4(fa[mb], wm::a_rows(a, lda, 16 * mb, 16 * ks));
      scale_rows(fa[mb], rs[mb][0], rs[mb][1]);
    }
#pragma unroll
    for (int k = 0; k < kNB; ++k) {
      const int n16 = warp + kNW * k;
      if (n16 < nk) {
        uint32_t bb[4];
        wm::ldmatrix_x4_trans(bb, wm::b_trans(b, ldb, 16 * ks, 16 * n16));
#pragma unroll
        for (int mb = 0; mb < 2; ++mb) {
          wm::mma_bf16(acc[mb][k][0], fa[mb], bb[0], bb[1]);
          wm::mma_bf16(acc[mb][k][1], fa[mb], bb[2], bb[3]);
        }
      }
    }
  }
}

template <int kNW, bool kSoftplus>
__global__ void __launch_bounds__(kNW * 32, 2) ssd_bwd_regs_kernel(const SsdScanParams p) {
  using T = __nv_bfloat16;
  namespace wm = warp_mma;
  constexpr int kNB = 8 / kNW;  // 16-column blocks of N per warp (N <= 128)
  extern __shared__ __align__(128) unsigned char smem[];

  const int pt = kNW * 16, np = p.dstate_pad, nstate = p.dstate, hdim = p.headdim;
  const RegsBwdSmem lay(pt, np);
  const int ldx = lay.ldx, ldn = lay.ldn;
  constexpr int nthreads = kNW * 32;
  const int tid = threadIdx.x, lane = tid & 31;
  const int warp = __shfl_sync(kFullMask, tid >> 5, 0);  // warp-uniform, as the compiler can see
  const int g = lane >> 2, q = lane & 3;
  const int wrow = warp * 16;
  const int nk = np / 16;
  const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int p0 = tile * pt;
  const int prows = min(pt, hdim - p0);
  const int grp = h / (p.nheads / p.ngroups);
  const float a_h = p.A[h];
  const float bias = p.dt_bias != nullptr ? p.dt_bias[h] : 0.f;
  const int nchunks = p.nchunks, ptot = p.p_tiles * pt;

  const T* x = static_cast<const T*>(p.x) + b * p.x_batch_stride + h * p.x_head_stride + p0;
  const T* dy = static_cast<const T*>(p.dy) + b * p.dy_batch_stride + h * p.dy_head_stride + p0;
  const T* dt = static_cast<const T*>(p.dt) + b * p.dt_batch_stride + h * p.dt_head_stride;
  const T* bm = static_cast<const T*>(p.Bm) + b * p.b_batch_stride + grp * p.b_group_stride;
  const T* cm = static_cast<const T*>(p.Cm) + b * p.c_batch_stride + grp * p.c_group_stride;
  T* dx = static_cast<T*>(p.dx) + b * p.dx_batch_stride + h * p.dx_head_stride + p0;
  const T* states = static_cast<const T*>(p.chunk_states) +
                    (static_cast<int64_t>(b) * p.nheads + h) * nchunks * ptot * np +
                    static_cast<int64_t>(p0) * np;
  // dB / dC partial slices: rows (b, t) of [B, nchunks * T], column block h * p_tiles + tile.
  const int64_t part_ld = static_cast<int64_t>(p.nheads) * p.p_tiles * np;
  const int64_t part_col = (static_cast<int64_t>(h) * p.p_tiles + tile) * np;
  const int64_t head_state = (static_cast<int64_t>(b) * p.nheads + h) * hdim;

  T* sp = smem_at<T>(smem, lay.sp);
  T* dst = smem_at<T>(smem, lay.dst);
  T* md = smem_at<T>(smem, lay.md);
  T* rm = smem_at<T>(smem, lay.rm);
  float* row_sum = smem_at<float>(smem, lay.row_sum);
  float* col_sum = smem_at<float>(smem, lay.col_sum);
  float* xu_part = smem_at<float>(smem, lay.xu);
  float* off_part = smem_at<float>(smem, lay.off);
  float* dssp_part = smem_at<float>(smem, lay.dssp);

  // ds[t][e]: dS row wrow + g + 8 (e / 2), column 8 t + 2 q + e % 2.
  float ds[kRegsNTiles][4];
  regs_load_state(ds, p.dfinal_state != nullptr ? p.dfinal_state + (head_state + p0) * nstate : nullptr, nstate,
                  np, prows, wrow);
  // D of this lane's columns wrow + 8 pb + 2 q (+1); x . dy of the same columns, summed.
  float dskip[2][2], dd[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
#pragma unroll
  for (int pb = 0; pb < 2; ++pb) {
    const int pc = p0 + wrow + 8 * pb + 2 * q;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      dskip[pb][e] = p.D == nullptr ? 0.f
                     : p.d_per_channel ? (pc + e < hdim ? p.D[h * hdim + pc + e] : 0.f)
                                       : p.D[h];
    }
  }
  float da_acc = 0.f;  // warp 0

  auto issue_tiles = [&](int c, int buf) {
    const int t0 = c * kChunk, clen = min(kChunk, p.len - t0);
    const size_t o = buf * lay.buf_bytes;
    regs_copy_tile(smem_at<T>(smem, lay.xs + o), ldx, x + t0 * p.x_len_stride, p.x_len_stride, pt, clen,
                   prows, nthreads);
    regs_copy_tile(smem_at<T>(smem, lay.dys + o), ldx, dy + t0 * p.dy_len_stride, p.dy_len_stride, pt,
                   clen, prows, nthreads);
    regs_copy_tile(smem_at<T>(smem, lay.bs + o), ldn, bm + t0 * p.b_len_stride, p.b_len_stride, np, clen,
                   nstate, nthreads);
    regs_copy_tile(smem_at<T>(smem, lay.cs + o), ldn, cm + t0 * p.c_len_stride, p.c_len_stride, np, clen,
                   nstate, nthreads);
    wm::cp_async_commit();
  };
  // S_prev of chunk c: [pt][np] rows of chunk_states (all real: the first pass wrote them).
  auto issue_state = [&](int c) {
    const T* src = states + static_cast<int64_t>(c) * ptot * np;
    const int per_row = np / 8;
    for (int v = tid; v < pt * per_row; v += nthreads) {
      const int r = v / per_row, cv = v % per_row;
      wm::cp_async16(sp + r * ldn + cv * 8, src + r * np + cv * 8, true);
    }
    wm::cp_async_commit();
  };

  {
    const int c = nchunks - 1;
    issue_tiles(c, 0);
    issue_state(c);
  }
  float dt_next = 0.f;
  {
    const int t0 = (nchunks - 1) * kChunk;
    if (lane < p.len - t0) dt_next = to_float(dt[(t0 + lane) * p.dt_len_stride]);
  }
  for (int c = nchunks - 1; c >= 0; --c) {
    const int t0 = c * kChunk, clen = min(kChunk, p.len - t0);
    const int buf = (nchunks - 1 - c) & 1;
    const float dt_raw = dt_next;
    wm::cp_async_wait<0>();
    __syncthreads();  // B1: this chunk's tiles and S_prev are in; the previous chunk is done
    if (c > 0) {
      issue_tiles(c - 1, buf ^ 1);
      const int tp = t0 - kChunk;
      dt_next = to_float(dt[(tp + lane) * p.dt_len_stride]);  // a full chunk
    }
    const size_t o = buf * lay.buf_bytes;
    const T* xs = smem_at<T>(smem, lay.xs + o);
    const T* dys = smem_at<T>(smem, lay.dys + o);
    const T* bs = smem_at<T>(smem, lay.bs + o);
    const T* cs = smem_at<T>(smem, lay.cs + o);

    // ---- A.
    float delta = 0.f, dsig = 0.f;
    if (lane < clen) {
      const float z = dt_raw + bias;
      delta = kSoftplus ? softplus(z) : z;
      dsig = kSoftplus ? softplus_grad(z) : 1.f;
    }
    const float cum = warp_inclusive_scan(delta * a_h);
    const float cum_last = __shfl_sync(kFullMask, cum, kChunk - 1);
    const float sc = delta * __expf(cum_last - cum);  // lane j: delta_j exp(cum_last - cum_j)
    const float ecum = __expf(cum);                   // lane i: exp(cum_i)

    // Units: CB and Q over a 16 x 16 block, then Md, Rm (bf16), and V's row sums weighted by
    // delta_j and its column sums over the block (fp32). From the last warp down, so that warp 0
    // (which finishes the chunk's decay gradients) has the least to do.
    for (int u = kNW - 1 - warp; u < 3; u += kNW) {
      const int mi = u == 0 ? 0 : 1, nj = u == 2 ? 1 : 0;
      float cb[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
      float qq[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
      for (int kk = 0; kk < nk; ++kk) {
        uint32_t a[4], bb[4];
        wm::ldmatrix_x4(a, wm::a_rows(cs, ldn, 16 * mi, 16 * kk));
        wm::ldmatrix_x4(bb, wm::b_rows(bs, ldn, 16 * kk, 16 * nj));
        wm::mma_bf16(cb[0], a, bb[0], bb[1]);
        wm::mma_bf16(cb[1], a, bb[2], bb[3]);
      }
#pragma unroll
      for (int kk = 0; kk < kNW; ++kk) {  // K = pt
        uint32_t a[4], bb[4];
        wm::ldmatrix_x4(a, wm::a_rows(dys, ldx, 16 * mi, 16 * kk));
        wm::ldmatrix_x4(bb, wm::b_rows(xs, ldx, 16 * kk, 16 * nj));
        wm::mma_bf16(qq[0], a, bb[0], bb[1]);
        wm::mma_bf16(qq[1], a, bb[2], bb[3]);
      }
      const int i0 = 16 * mi + g;
      const float cum_i[2] = {__shfl_sync(kFullMask, cum, i0), __shfl_sync(kFullMask, cum, i0 + 8)};
      float row_part[2] = {0.f, 0.f};           // rows i0, i0 + 8: sum_j V_ij delta_j (this lane's j)
      float col_part[2][2] = {{0.f, 0.f}, {0.f, 0.f}};  // columns j0 + e: sum_i V_ij (rows g, g + 8)
#pragma unroll
      for (int sub = 0; sub < 2; ++sub) {
        const int j0 = 16 * nj + 8 * sub + 2 * q;
        const float cum_j[2] = {__shfl_sync(kFullMask, cum, j0), __shfl_sync(kFullMask, cum, j0 + 1)};
        const float del_j[2] = {__shfl_sync(kFullMask, delta, j0), __shfl_sync(kFullMask, delta, j0 + 1)};
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int i = i0 + 8 * hf;
          float mv[2], rv[2];
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            mv[e] = rv[e] = 0.f;
            if (j0 + e <= i) {
              const float l = __expf(cum_i[hf] - cum_j[e]);
              const float m = cb[sub][2 * hf + e] * l, qv = qq[sub][2 * hf + e];
              mv[e] = m * del_j[e];
              rv[e] = qv * l * del_j[e];
              const float v = m * qv;
              row_part[hf] += v * del_j[e];
              col_part[sub][e] += v;
            }
          }
          *reinterpret_cast<uint32_t*>(md + i * kRegsLdm + j0) = wm::pack_bf16(mv[0], mv[1]);
          *reinterpret_cast<uint32_t*>(rm + i * kRegsLdm + j0) = wm::pack_bf16(rv[0], rv[1]);
        }
      }
      // Rows: the quad's lanes hold the block's 16 columns. Columns: the 8 row groups g.
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const float r = quad_sum(row_part[hf]);
        if (q == 0) row_sum[u * 16 + g + 8 * hf] = r;
      }
#pragma unroll
      for (int sub = 0; sub < 2; ++sub)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float v = col_part[sub][e];
          v += __shfl_xor_sync(kFullMask, v, 4);
          v += __shfl_xor_sync(kFullMask, v, 8);
          v += __shfl_xor_sync(kFullMask, v, 16);
          if (g == 0) col_sum[u * 16 + 8 * sub + 2 * q + e] = v;
        }
    }

    // U = B dS^T for the warp's columns, from dS in registers (rounded to bf16).
    float dxa[2][2][4];  // [j block][column block pb][C layout]
    regs_state_readout(dxa, ds, bs, ldn, nk);
    // x_j . U_j (partial over the warp's columns); dx_j = sc_j U_j + D dy_j; x . dy for dD.
#pragma unroll
    for (int mb = 0; mb < 2; ++mb)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int j = 16 * mb + g + 8 * hf;
        const float scj = __shfl_sync(kFullMask, sc, j);
        float xu = 0.f;
#pragma unroll
        for (int pb = 0; pb < 2; ++pb) {
          const int pc = wrow + 8 * pb + 2 * q;
          const uint32_t xv = *reinterpret_cast<const uint32_t*>(xs + j * ldx + pc);
          const uint32_t gv = *reinterpret_cast<const uint32_t*>(dys + j * ldx + pc);
          const float x0 = wm::bf16_lo(xv), x1 = wm::bf16_hi(xv);
          const float g0 = wm::bf16_lo(gv), g1 = wm::bf16_hi(gv);
          float& u0 = dxa[mb][pb][2 * hf];
          float& u1 = dxa[mb][pb][2 * hf + 1];
          xu += x0 * u0 + x1 * u1;
          dd[pb][0] += x0 * g0;
          dd[pb][1] += x1 * g1;
          u0 = scj * u0 + dskip[pb][0] * g0;
          u1 = scj * u1 + dskip[pb][1] * g1;
        }
        xu = quad_sum(xu);
        if (q == 0) xu_part[warp * kChunk + j] = xu;
      }

    // Z = C S_prev^T for the warp's columns -> dy_i . Z_i partials.
    {
      float z[2][2][4];
#pragma unroll
      for (int mb = 0; mb < 2; ++mb)
#pragma unroll
        for (int pb = 0; pb < 2; ++pb)
#pragma unroll
          for (int e = 0; e < 4; ++e) z[mb][pb][e] = 0.f;
      for (int kk = 0; kk < nk; ++kk) {
        uint32_t bb[4];
        wm::ldmatrix_x4(bb, wm::b_rows<T>(sp, ldn, 16 * kk, wrow));
#pragma unroll
        for (int mb = 0; mb < 2; ++mb) {
          uint32_t a[4];
          wm::ldmatrix_x4(a, wm::a_rows(cs, ldn, 16 * mb, 16 * kk));
          wm::mma_bf16(z[mb][0], a, bb[0], bb[1]);
          wm::mma_bf16(z[mb][1], a, bb[2], bb[3]);
        }
      }
#pragma unroll
      for (int mb = 0; mb < 2; ++mb)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int i = 16 * mb + g + 8 * hf;
          float dz = 0.f;
#pragma unroll
          for (int pb = 0; pb < 2; ++pb) {
            const uint32_t gv = *reinterpret_cast<const uint32_t*>(dys + i * ldx + wrow + 8 * pb + 2 * q);
            dz += wm::bf16_lo(gv) * z[mb][pb][2 * hf] + wm::bf16_hi(gv) * z[mb][pb][2 * hf + 1];
          }
          dz = quad_sum(dz);
          if (q == 0) off_part[warp * kChunk + i] = dz;
        }
    }

    // <dS, S_prev> (partial); dS rounded for dB's state term.
    {
      float part = 0.f;
#pragma unroll
      for (int t = 0; t < kRegsNTiles; ++t) {
        if (t < np / 8) {
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            const int off = (wrow + g + 8 * hf) * ldn + 8 * t + 2 * q;
            const uint32_t sv = *reinterpret_cast<const uint32_t*>(sp + off);
            part += ds[t][2 * hf] * wm::bf16_lo(sv) + ds[t][2 * hf + 1] * wm::bf16_hi(sv);
            *reinterpret_cast<uint32_t*>(dst + off) = wm::pack_bf16(ds[t][2 * hf], ds[t][2 * hf + 1]);
          }
        }
      }
      part = warp_sum(part);
      if (lane == 0) dssp_part[warp] = part;
    }

    // dC's state term (e o dY) S_prev for the warp's column blocks n16 = warp + kNW k.
    float dc[2][kNB][2][4];
#pragma unroll
    for (int mb = 0; mb < 2; ++mb)
#pragma unroll
      for (int k = 0; k < kNB; ++k)
#pragma unroll
        for (int sub = 0; sub < 2; ++sub)
#pragma unroll
          for (int e = 0; e < 4; ++e) dc[mb][k][sub][e] = 0.f;
    // Row scales of the A fragments: e_i for rows 16 mb + g and + 8.
    float erow[2][2];
#pragma unroll
    for (int mb = 0; mb < 2; ++mb) {
      erow[mb][0] = __shfl_sync(kFullMask, ecum, 16 * mb + g);
      erow[mb][1] = __shfl_sync(kFullMask, ecum, 16 * mb + g + 8);
    }
    regs_scaled_rows_times<kNW, kNB>(dc, dys, ldx, erow, sp, ldn, warp, nk);

    __syncthreads();  // B2: Md, Rm, V, dst and the partials are written; S_prev is read
    if (c > 0) issue_state(c - 1);

    // ---- B.
    // dx += Md^T dY (Md is zero above the diagonal: output block j needs i blocks >= j's).
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {
      uint32_t bg[4];
      wm::ldmatrix_x4_trans(bg, wm::b_trans(dys, ldx, 16 * ks, wrow));
#pragma unroll
      for (int mb = 0; mb <= ks; ++mb) {
        uint32_t a[4];
        wm::ldmatrix_x4_trans(a, wm::a_trans<T>(md, kRegsLdm, 16 * mb, 16 * ks));
        wm::mma_bf16(dxa[mb][0], a, bg[0], bg[1]);
        wm::mma_bf16(dxa[mb][1], a, bg[2], bg[3]);
      }
    }
#pragma unroll
    for (int mb = 0; mb < 2; ++mb)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int j = 16 * mb + g + 8 * hf;
#pragma unroll
        for (int pb = 0; pb < 2; ++pb) {
          const int pc = wrow + 8 * pb + 2 * q;
          if (j < clen && pc < prows) {
            *reinterpret_cast<uint32_t*>(dx + (t0 + j) * p.dx_len_stride + pc) =
                wm::pack_bf16(dxa[mb][pb][2 * hf], dxa[mb][pb][2 * hf + 1]);
          }
        }
      }

    float* db_rows = p.dB_partial + (static_cast<int64_t>(b) * nchunks * kChunk + t0) * part_ld + part_col;
    float* dc_rows = p.dC_partial + (static_cast<int64_t>(b) * nchunks * kChunk + t0) * part_ld + part_col;
    // dC += Rm B (Rm is zero above the diagonal: output block i needs j blocks <= i's); written.
#pragma unroll
    for (int mb = 0; mb < 2; ++mb) {
#pragma unroll
      for (int ks = 0; ks <= mb; ++ks) {
        uint32_t a[4];
        wm::ldmatrix_x4(a, wm::a_rows<T>(rm, kRegsLdm, 16 * mb, 16 * ks));
#pragma unroll
        for (int k = 0; k < kNB; ++k) {
          const int n16 = warp + kNW * k;
          if (n16 < nk) {
            uint32_t bb[4];
            wm::ldmatrix_x4_trans(bb, wm::b_trans(bs, ldn, 16 * ks, 16 * n16));
            wm::mma_bf16(dc[mb][k][0], a, bb[0], bb[1]);
            wm::mma_bf16(dc[mb][k][1], a, bb[2], bb[3]);
          }
        }
      }
    }
    auto store_rows = [&](float* rows, float (&acc)[2][kNB][2][4]) {
#pragma unroll
      for (int mb = 0; mb < 2; ++mb)
#pragma unroll
        for (int k = 0; k < kNB; ++k) {
          const int n16 = warp + kNW * k;
          if (n16 < nk) {
#pragma unroll
            for (int sub = 0; sub < 2; ++sub)
#pragma unroll
              for (int hf = 0; hf < 2; ++hf) {
                const int i = 16 * mb + g + 8 * hf, n = 16 * n16 + 8 * sub + 2 * q;
                *reinterpret_cast<float2*>(rows + i * part_ld + n) =
                    make_float2(acc[mb][k][sub][2 * hf], acc[mb][k][sub][2 * hf + 1]);
              }
          }
        }
    };
    store_rows(dc_rows, dc);

    // dB = Rm^T C + X' dst, X'_j = sc_j x_j; written. (Reuses dc's registers.) Each B fragment
    // is loaded once for the row blocks that use it.
    {
      float (&db)[2][kNB][2][4] = dc;
#pragma unroll
      for (int mb = 0; mb < 2; ++mb)
#pragma unroll
        for (int k = 0; k < kNB; ++k)
#pragma unroll
          for (int sub = 0; sub < 2; ++sub)
#pragma unroll
            for (int e = 0; e < 4; ++e) db[mb][k][sub][e] = 0.f;
      // Rm^T C: Rm is zero above the diagonal, so output block j (mb) needs i blocks ks >= mb.
#pragma unroll
      for (int ks = 0; ks < 2; ++ks) {
        uint32_t a[2][4];
#pragma unroll
        for (int mb = 0; mb <= ks; ++mb) wm::ldmatrix_x4_trans(a[mb], wm::a_trans<T>(rm, kRegsLdm, 16 * mb, 16 * ks));
#pragma unroll
        for (int k = 0; k < kNB; ++k) {
          const int n16 = warp + kNW * k;
          if (n16 < nk) {
            uint32_t bb[4];
            wm::ldmatrix_x4_trans(bb, wm::b_trans(cs, ldn, 16 * ks, 16 * n16));
#pragma unroll
            for (int mb = 0; mb <= ks; ++mb) {
              wm::mma_bf16(db[mb][k][0], a[mb], bb[0], bb[1]);
              wm::mma_bf16(db[mb][k][1], a[mb], bb[2], bb[3]);
            }
          }
        }
      }
      float srow[2][2];
#pragma unroll
      for (int mb = 0; mb < 2; ++mb) {
        srow[mb][0] = __shfl_sync(kFullMask, sc, 16 * mb + g);
        srow[mb][1] = __shfl_sync(kFullMask, sc, 16 * mb + g + 8);
      }
      regs_scaled_rows_times<kNW, kNB>(db, xs, ldx, srow, dst, ldn, warp, nk);
      store_rows(db_rows, db);
    }

    // dS = exp(cum_last) dS + sum_i (e_i dy_i)^T C_i.
    regs_state_update(ds, __expf(cum_last), ecum, dys, ldx, wrow, cs, ldn, nk);

    // Warp 0: the decay gradients of the chunk.
    if (warp == 0) {
      const int i = lane;
      // Unit u covers rows 16 mi .. and columns 16 nj ..: (0,0), (1,0), (1,1). Rows 0-15 are in
      // unit 0, rows 16-31 in units 1 then 2; columns 0-15 in units 0 then 1, 16-31 in unit 2.
      const float rowv = i < 16 ? row_sum[i] : row_sum[16 + (i - 16)] + row_sum[32 + (i - 16)];
      const float colv = i < 16 ? col_sum[i] + col_sum[16 + i] : col_sum[32 + (i - 16)];
      float xu = 0.f, offv = 0.f, dssp = 0.f;
#pragma unroll
      for (int w = 0; w < kNW; ++w) {
        xu += xu_part[w * kChunk + i];
        offv += off_part[w * kChunk + i];
        dssp += dssp_part[w];
      }
      const float e = __expf(cum_last - cum);
      const float sterm = delta * e * xu;
      float dcum = rowv - delta * colv + ecum * offv - sterm;
      const float sterm_sum = warp_sum(sterm);
      if (i == kChunk - 1) dcum += __expf(cum_last) * dssp + sterm_sum;
      const float da = warp_inclusive_suffix_scan(dcum);
      const float ddelta = colv + e * xu + a_h * da;
      if (i < clen) {
        p.ddt_partial[((static_cast<int64_t>(tile) * p.batch + b) * p.len + t0 + i) * p.nheads + h] = ddelta * dsig;
      }
      da_acc += delta * da;
    }
  }

  if (p.dD_partial != nullptr) {
    // x . dy per column: the 8 row groups g of the warp hold partial sums of the same columns.
#pragma unroll
    for (int pb = 0; pb < 2; ++pb)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float v = dd[pb][e];
        v += __shfl_xor_sync(kFullMask, v, 4);
        v += __shfl_xor_sync(kFullMask, v, 8);
        v += __shfl_xor_sync(kFullMask, v, 16);
        dd[pb][e] = v;
      }
    if (g == 0) {
#pragma unroll
      for (int pb = 0; pb < 2; ++pb) {
        const int pc = wrow + 8 * pb + 2 * q;
        float* out = p.dD_partial + (static_cast<int64_t>(b) * p.nheads + h) * ptot + p0 + pc;
        out[0] = dd[pb][0];
        out[1] = dd[pb][1];
      }
    }
  }
  if (warp == 0) {
    const float total = warp_sum(da_acc);
    if (lane == 0) p.dA_partial[(static_cast<int64_t>(tile) * p.batch + b) * p.nheads + h] = total;
  }
}

/// Whether the register backward takes a launch (bf16 is the caller's): no cluster, N padded to
/// at most kRegsMaxN, P tile 32 or 64, tiles that move in 16-byte vectors, dx on 4-byte
/// boundaries with even strides.
inline bool regs_bwd_ok(const SsdScanParams& p) {
  if (p.element_loads || p.tiles_kernels || p.cluster_heads != 1 || p.dstate_pad > kRegsMaxN ||
      (p.p_tile != 32 && p.p_tile != 64)) {
    return false;
  }
  if (!ssd_vec16_ok(p, 2, /*backward=*/true)) return false;
  if (reinterpret_cast<uintptr_t>(p.dx) % 4 != 0 || p.dx_batch_stride % 2 != 0 || p.dx_len_stride % 2 != 0 ||
      p.dx_head_stride % 2 != 0) {
    return false;
  }
  return true;
}

}  // namespace ssd

/// The second pass of the backward on the register kernel (the caller ran the first).
inline cudaError_t ssd_bwd_regs_launch(const SsdScanParams& p, cudaStream_t stream) {
  const ssd::RegsBwdSmem lay(p.p_tile, p.dstate_pad);
  const dim3 grid(p.p_tiles, p.nheads, p.batch);
  cudaError_t err = cudaSuccess;
  BOOL_SWITCH(p.dt_softplus, kSoftplus, [&] {
    BOOL_SWITCH(p.p_tile == 64, kWide, [&] {
      constexpr int kNW = kWide ? 4 : 2;
      auto kernel = &ssd::ssd_bwd_regs_kernel<kNW, kSoftplus>;
      err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(lay.bytes));
      if (err != cudaSuccess) return;
      kernel<<<grid, kNW * 32, lay.bytes, stream>>>(p);
      err = cudaGetLastError();
    });
  });
  return err;
}

}  // namespace aim::kernels
