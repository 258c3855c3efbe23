#pragma once
// Mamba2 SSD scan forward (math, grid and precision: ssd_scan_common.cuh).
//
// A block (P tile, head h, sequence b) walks the chunks in order with S [p_tile, N] in shared
// memory (fp32). Per chunk, separated by block barriers:
//   1. load x [T, p_tile], B and C [T, N] (zeros past L and past P / N); warp 0: delta and the
//      inclusive scan cum of a = delta * A
//   2. G = C B^T [T, T];  Y = C St^T [T, p_tile] (St: S rounded to the input type);
//      bw_j = B_j exp(cum_last - cum_j) delta_j
//   3. Mm = G o L o delta (masked, in the input type);  Y_i *= exp(cum_i);
//      S = exp(cum_last) S + x^T bw
//   4. Y += Mm x;  St = S
//   5. y = Y + D x (rows < L, columns < P)
// Template flags: kOutputs computes y (and the final state); kChunkStates stores St at the start
// of every chunk into chunk_states instead (the backward's first pass; then the last chunk's
// state update is skipped).
#include <type_traits>

#include "ssd_scan_common.cuh"
#include "ssd_scan_fwd_regs_kernel.cuh"
#include "static_switch.h"

namespace aim::kernels {

namespace ssd {

// vec: the tiles move in 16-byte vectors (ssd_vec16_ok), else element by element.
template <typename Tin, bool kOutputs, bool kChunkStates, bool kSoftplus>
__global__ void __launch_bounds__(kThreads) ssd_fwd_kernel(const SsdScanParams p, bool vec) {
  using Ops = TileOps<Tin>;
  using Acc = typename Ops::Acc;
  constexpr int tin = static_cast<int>(sizeof(Tin));
  extern __shared__ __align__(128) unsigned char smem[];

  const int pt = p.p_tile, np = p.dstate_pad, nstate = p.dstate, hdim = p.headdim;
  const FwdSmem lay(pt, np, tin);
  Tin* xs = smem_at<Tin>(smem, lay.xs);
  Tin* bs = smem_at<Tin>(smem, lay.bs);
  Tin* cs = smem_at<Tin>(smem, lay.cs);
  Tin* bw = smem_at<Tin>(smem, lay.bw);
  Tin* st = smem_at<Tin>(smem, lay.st);
  Tin* mm = smem_at<Tin>(smem, lay.mm);
  float* s = smem_at<float>(smem, lay.s);
  float* g = smem_at<float>(smem, lay.g);
  float* ya = smem_at<float>(smem, lay.y);
  float* delta = smem_at<float>(smem, lay.delta);
  float* cum = smem_at<float>(smem, lay.cum);
  const int ldp = padded_ld(pt, tin), ldn = padded_ld(np, tin), ldt = padded_ld(kChunk, tin);
  const int ldnf = padded_ld(np, 4), ldtf = padded_ld(kChunk, 4), ldpf = padded_ld(pt, 4);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int p0 = tile * pt;
  const int prows = min(pt, hdim - p0);
  const int grp = h / (p.nheads / p.ngroups);
  const float a_h = p.A[h];
  const float bias = p.dt_bias != nullptr ? p.dt_bias[h] : 0.f;

  const Tin* x = static_cast<const Tin*>(p.x) + b * p.x_batch_stride + h * p.x_head_stride + p0;
  const Tin* dt = static_cast<const Tin*>(p.dt) + b * p.dt_batch_stride + h * p.dt_head_stride;
  const Tin* bm = static_cast<const Tin*>(p.Bm) + b * p.b_batch_stride + grp * p.b_group_stride;
  const Tin* cm = static_cast<const Tin*>(p.Cm) + b * p.c_batch_stride + grp * p.c_group_stride;
  const int64_t head_state = (static_cast<int64_t>(b) * p.nheads + h) * hdim;  // row of [B*H*P, N]

  // S (and its rounded copy) from the initial state, zeros in the padding.
  for (int idx = tid; idx < pt * np; idx += kThreads) {
    const int r = idx / np, n = idx % np;
    float v = 0.f;
    if (p.initial_state != nullptr && r < prows && n < nstate) {
      v = p.initial_state[(head_state + p0 + r) * nstate + n];
    }
    s[r * ldnf + n] = v;
    st[r * ldn + n] = from_float<Tin>(v);
  }

  const Tin zero = from_float<Tin>(0.f);
  const int nchunks = p.nchunks;
  for (int c = 0; c < nchunks; ++c) {
    const int t0 = c * kChunk, clen = min(kChunk, p.len - t0);
    const bool update = kOutputs ? (p.final_state != nullptr || c + 1 < nchunks) : c + 1 < nchunks;

    // 1. Loads.
    // Warp 0's dt of the chunk first, so that its load is in flight with the tiles'.
    const float dt_raw =
        warp == 0 && lane < clen ? to_float(dt[(t0 + lane) * p.dt_len_stride]) : 0.f;
    if (vec) {
      TileCopy16<Tin, 1> xl;
      TileCopy16<Tin, 2> bl, cl;
      xl.load(x + t0 * p.x_len_stride, p.x_len_stride, kChunk, pt, clen, prows);
      bl.load(bm + t0 * p.b_len_stride, p.b_len_stride, kChunk, np, clen, nstate);
      if (kOutputs) cl.load(cm + t0 * p.c_len_stride, p.c_len_stride, kChunk, np, clen, nstate);
      xl.store(xs, ldp);
      bl.store(bs, ldn);
      if (kOutputs) cl.store(cs, ldn);
    } else {
      for (int idx = tid; idx < kChunk * pt; idx += kThreads) {
        const int i = idx / pt, pp = idx % pt;
        xs[i * ldp + pp] = i < clen && pp < prows ? x[(t0 + i) * p.x_len_stride + pp] : zero;
      }
      for (int idx = tid; idx < kChunk * np; idx += kThreads) {
        const int i = idx / np, n = idx % np;
        const bool in = i < clen && n < nstate;
        bs[i * ldn + n] = in ? bm[(t0 + i) * p.b_len_stride + n] : zero;
        if (kOutputs) cs[i * ldn + n] = in ? cm[(t0 + i) * p.c_len_stride + n] : zero;
      }
    }
    if (warp == 0) {
      float d = 0.f;
      if (lane < clen) {
        const float z = dt_raw + bias;
        d = kSoftplus ? softplus(z) : z;
      }
      delta[lane] = d;
      cum[lane] = warp_inclusive_scan(d * a_h);
    }
    __syncthreads();
    const float cum_last = cum[kChunk - 1];

    // 2. Scores and the incoming state's read-out; B weighted for the state update.
    if (kChunkStates) {
      Tin* out = static_cast<Tin*>(p.chunk_states) +
                 ((static_cast<int64_t>(b) * p.nheads + h) * nchunks + c) * (p.p_tiles * pt) * np +
                 static_cast<int64_t>(p0) * np;
      for (int idx = tid; idx < pt * np; idx += kThreads) {
        const int r = idx / np, n = idx % np;
        out[idx] = st[r * ldn + n];
      }
    }
    if (kOutputs) {
      for_each_tile(kChunk, kChunk, 0, [&](int m0, int n0) {
        Acc acc;
        Ops::zero(acc);
        Ops::template mma<RowMajor, ColMajor>(acc, a_tile<RowMajor>(cs, ldn, m0), ldn,
                                              b_tile<ColMajor>(bs, ldn, n0), ldn, np);
        Ops::store(g + m0 * ldtf + n0, acc, ldtf);
      });
      for_each_tile(kChunk, pt, 4, [&](int m0, int n0) {
        Acc acc;
        Ops::zero(acc);
        Ops::template mma<RowMajor, ColMajor>(acc, a_tile<RowMajor>(cs, ldn, m0), ldn,
                                              b_tile<ColMajor>(st, ldn, n0), ldn, np);
        Ops::store(ya + m0 * ldpf + n0, acc, ldpf);
      });
    }
    if (update) {
      for (int idx = tid; idx < kChunk * np; idx += kThreads) {
        const int j = idx / np, n = idx % np;
        const float w = __expf(cum_last - cum[j]) * delta[j];
        bw[j * ldn + n] = from_float<Tin>(to_float(bs[j * ldn + n]) * w);
      }
    }
    __syncthreads();

    // 3. Masked decayed scores; the read-out decayed; the state carried over the chunk.
    if (kOutputs) {
      for (int idx = tid; idx < kChunk * kChunk; idx += kThreads) {
        const int i = idx / kChunk, j = idx % kChunk;
        const float v = j <= i ? g[i * ldtf + j] * __expf(cum[i] - cum[j]) * delta[j] : 0.f;
        mm[i * ldt + j] = from_float<Tin>(v);
      }
      for (int idx = tid; idx < kChunk * pt; idx += kThreads) {
        const int i = idx / pt, pp = idx % pt;
        ya[i * ldpf + pp] *= __expf(cum[i]);
      }
    }
    if (update) {
      const float decay = __expf(cum_last);
      for_each_tile(pt, np, 0, [&](int m0, int n0) {
        Acc acc;
        Ops::load(acc, s + m0 * ldnf + n0, ldnf);
        Ops::scale(acc, decay);
        Ops::template mma<ColMajor, RowMajor>(acc, a_tile<ColMajor>(xs, ldp, m0), ldp,
                                              b_tile<RowMajor>(bw, ldn, n0), ldn, kChunk);
        Ops::store(s + m0 * ldnf + n0, acc, ldnf);
      });
    }
    __syncthreads();

    // 4. Intra-chunk outputs; the rounded state for the next chunk.
    if (kOutputs) {
      for_each_tile(kChunk, pt, 0, [&](int m0, int n0) {
        Acc acc;
        Ops::load(acc, ya + m0 * ldpf + n0, ldpf);
        Ops::template mma<RowMajor, RowMajor>(acc, a_tile<RowMajor>(mm, ldt, m0), ldt,
                                              b_tile<RowMajor>(xs, ldp, n0), ldp, kChunk);
        Ops::store(ya + m0 * ldpf + n0, acc, ldpf);
      });
    }
    if (update) {
      for (int idx = tid; idx < pt * np; idx += kThreads) {
        const int r = idx / np, n = idx % np;
        st[r * ldn + n] = from_float<Tin>(s[r * ldnf + n]);
      }
    }
    __syncthreads();

    // 5. Outputs with the skip term.
    if (kOutputs) {
      Tin* y = static_cast<Tin*>(p.y) + b * p.y_batch_stride + h * p.y_head_stride + p0;
      for (int idx = tid; idx < kChunk * pt; idx += kThreads) {
        const int i = idx / pt, pp = idx % pt;
        if (i >= clen || pp >= prows) continue;
        float v = ya[i * ldpf + pp];
        if (p.D != nullptr) {
          const float dv = p.d_per_channel ? p.D[h * hdim + p0 + pp] : p.D[h];
          v += dv * to_float(xs[i * ldp + pp]);
        }
        y[(t0 + i) * p.y_len_stride + pp] = from_float<Tin>(v);
      }
      __syncthreads();
    }
  }

  if (kOutputs && p.final_state != nullptr) {
    for (int idx = tid; idx < pt * np; idx += kThreads) {
      const int r = idx / np, n = idx % np;
      if (r < prows && n < nstate) p.final_state[(head_state + p0 + r) * nstate + n] = s[r * ldnf + n];
    }
  }
}

}  // namespace ssd

template <typename Tin, bool kOutputs, bool kChunkStates>
cudaError_t ssd_fwd_launch(const SsdScanParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.len == 0 || p.nheads == 0 || p.headdim == 0) return cudaSuccess;
  if ((p.p_tile != 32 && p.p_tile != 64) || p.dstate_pad % 16 != 0 || p.dstate_pad < p.dstate ||
      p.p_tiles * p.p_tile < p.headdim || p.nchunks * ssd::kChunk < p.len ||
      p.ngroups <= 0 || p.nheads % p.ngroups != 0) {
    return cudaErrorInvalidValue;
  }
  if constexpr (std::is_same<Tin, __nv_bfloat16>::value) {
    if (ssd::regs_fwd_ok(p, kOutputs, kChunkStates)) return ssd_fwd_regs_launch<kOutputs, kChunkStates>(p, stream);
  }
  const ssd::FwdSmem lay(p.p_tile, p.dstate_pad, static_cast<int>(sizeof(Tin)));
  const dim3 grid(p.p_tiles, p.nheads, p.batch);
  const bool vec = !p.element_loads && ssd::ssd_vec16_ok(p, static_cast<int>(sizeof(Tin)), /*backward=*/false);
  cudaError_t err = cudaSuccess;
  BOOL_SWITCH(p.dt_softplus, kSoftplus, [&] {
    auto kernel = &ssd::ssd_fwd_kernel<Tin, kOutputs, kChunkStates, kSoftplus>;
    static DynamicSmemOptIn opt_in;
    err = opt_in.ensure(kernel, lay.bytes);
    if (err != cudaSuccess) return;
    kernel<<<grid, ssd::kThreads, lay.bytes, stream>>>(p, vec);
    err = cudaGetLastError();
  });
  return err;
}

}  // namespace aim::kernels
