#pragma once
// Mamba1 selective scan, backward (the forward's math is in selective_scan_fwd_kernel.cuh).
//
// Math, per sequence b and channel e, walking time backwards with the adjoint g_t = dL/dh_t,
// a_t[n] = exp(delta'_t A[n]), dy_t = dout_t * silu(z_t) (dout_t without a gate):
//   g_t      = dy_t C_t + a_{t+1} g_{t+1}                      g_L = dlast_state (or 0)
//   dz_t     = dout_t (sum_n h_t C_t + D u_t) silu'(z_t)       silu'(z) = s (1 + z (1 - s)), s = sigmoid(z)
//   du_t     = dy_t D + delta'_t sum_n g_t B_t
//   ddelta'_t = sum_n g_t a_t h_{t-1} A[n] + u_t sum_n g_t B_t
//   ddelta_t = ddelta'_t * softplus'(delta_t + delta_bias)     (1 without softplus)
//   dA[n]   += g_t a_t h_{t-1} delta'_t,   dD += dy_t u_t,   ddelta_bias += ddelta_t
//   dB_t[n] += g_t delta'_t u_t,   dC_t[n] += dy_t h_t          (summed over the channels)
//   dinitial_state = a_0 g_0
//
// Grid (nblk, B), kThreads threads, the (channel, state) mapping of selective_scan_common.cuh.
// Block (blk, b) walks bwd_groups_per_block consecutive groups of channels_per_block channels,
// one after the other. For each group it visits the kept chunks (kChunk steps) last to first:
//   1. from the chunk's kept state, it steps forward through the chunk and keeps the state at
//      the start of every kSub steps (kSub * kStates = 64);
//   2. for each sub-chunk, last to first, it recomputes the kSub states from that start state,
//      then runs the adjoint over them backwards.
// Both sets of states sit in shared memory, each thread in its own column ([.][kStates]
// [kThreads]: no bank conflicts, no barriers). So the states are computed three times in all
// (forward, 1, 2) and nothing per step is kept in global memory.
// Tiles of kSub steps (u, delta', its slope, z, dout, B, C) sit in shared memory as in the
// forward; du, ddelta, dz are staged per tile and stored coalesced.
// Reductions, all deterministic (fixed order, no atomics):
//   - over a channel's states: a butterfly over its G lanes;
//   - dB, dC over channels: a butterfly over the channels of a warp, then the kWarps warp sums
//     added in warp order into the block's own partial row [L, N] of the workspace (written by
//     its first group, added to by the next ones: only this block touches it);
//   - dA, dD, ddelta_bias over time in registers, one partial per (b, e);
//   - a second launch sums the partials in a fixed order: dB, dC over the nblk blocks of a
//     sequence, dA, dD, ddelta_bias over the batch.
// Precision: fp32 or bf16 tensors; all arithmetic and every sum in fp32; du, ddelta, dz rounded
// once to the element type; dA, dD, ddelta_bias, dB, dC, dinitial_state fp32.
#include "selective_scan_common.cuh"
#include "static_switch.h"

namespace aim::kernels {

namespace sscan {

template <int kStates>
struct BwdTraits {
  static constexpr int kSub = 64 / kStates;  // window of recomputed states: kSub * kStates
  static constexpr int kSubs = kChunk / kSub;
  static_assert(kChunk % kSub == 0, "sub-chunks must tile a kept chunk");
};

/// Block layout of the backward: channels per group and per-sequence blocks.
struct BwdLayout {
  int lanes = 0, cpb = 0, groups = 0, gpb = 0, nblk = 0;
};
__host__ __device__ inline BwdLayout bwd_layout(const SelectiveScanParams& p) {
  BwdLayout l;
  l.lanes = lanes_per_channel(p.dstate, states_per_lane(p.dstate));
  l.cpb = kThreads / l.lanes;
  l.groups = (p.channels + l.cpb - 1) / l.cpb;
  l.gpb = p.bwd_groups_per_block > 0 ? p.bwd_groups_per_block : 1;
  l.nblk = (l.groups + l.gpb - 1) / l.gpb;
  return l;
}

/// Workspace offsets (floats): dB partials [B, nblk, L, N], dC partials (same), dA partials
/// [B, E, N], dD partials [B, E], ddelta_bias partials [B, E].
struct BwdWorkspace {
  int64_t part_bc = 0, a_offset = 0, d_offset = 0, bias_offset = 0, total = 0;
};
__host__ __device__ inline BwdWorkspace bwd_workspace(const SelectiveScanParams& p) {
  const BwdLayout l = bwd_layout(p);
  BwdWorkspace w;
  w.part_bc = static_cast<int64_t>(p.batch) * l.nblk * p.len * p.dstate;
  w.a_offset = 2 * w.part_bc;
  w.d_offset = w.a_offset + static_cast<int64_t>(p.batch) * p.channels * p.dstate;
  w.bias_offset = w.d_offset + static_cast<int64_t>(p.batch) * p.channels;
  w.total = w.bias_offset + static_cast<int64_t>(p.batch) * p.channels;
  return w;
}

template <int kStates>
inline size_t bwd_smem_bytes(int dstate) {
  using Tr = BwdTraits<kStates>;
  const int cpb = kThreads / lanes_per_channel(dstate, kStates);
  return sizeof(float) * (8 * cpb * (Tr::kSub + 1) + 2 * Tr::kSub * (dstate + 1) +
                          2 * kWarps * Tr::kSub * dstate +
                          (Tr::kSubs + Tr::kSub) * kStates * kThreads);
}

}  // namespace sscan

template <typename T, int kStates, bool kSoftplus>
__global__ void __launch_bounds__(sscan::kThreads) selective_scan_bwd_kernel(SelectiveScanParams p) {
  using namespace sscan;
  constexpr int kSub = BwdTraits<kStates>::kSub;
  constexpr int kSubs = BwdTraits<kStates>::kSubs;
  constexpr int kRow = kSub + 1;  // odd: rows and columns of a tile hit distinct banks
  extern __shared__ float smem[];
  const int N = p.dstate, E = p.channels, L = p.len;
  const int lanes = lanes_per_channel(N, kStates);
  const int cpb = kThreads / lanes;
  const int b = blockIdx.y, blk = blockIdx.x, nblk = gridDim.x;
  const int local = threadIdx.x / lanes, j = threadIdx.x % lanes;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int bc_row = N + 1;
  const int nchunks = (L + kChunk - 1) / kChunk;
  const bool has_z = p.z != nullptr;

  float* s_u = smem;                      // [cpb][kRow]
  float* s_delta = s_u + cpb * kRow;      // delta'
  float* s_slope = s_delta + cpb * kRow;  // d delta' / d delta; 0 past L
  float* s_z = s_slope + cpb * kRow;
  float* s_dout = s_z + cpb * kRow;
  float* s_du = s_dout + cpb * kRow;
  float* s_ddelta = s_du + cpb * kRow;
  float* s_dz = s_ddelta + cpb * kRow;
  float* s_B = s_dz + cpb * kRow;         // [kSub][N + 1]
  float* s_C = s_B + kSub * bc_row;       // [kSub][N + 1]
  float* s_red = s_C + kSub * bc_row;     // [2 (B, C)][kWarps][kSub][N]
  float* s_snap = s_red + 2 * kWarps * kSub * N;  // [kSubs][kStates][kThreads]
  float* s_hist = s_snap + kSubs * kStates * kThreads;  // [kSub][kStates][kThreads]

  const BwdWorkspace ws = bwd_workspace(p);
  float* part_B = p.workspace + (static_cast<int64_t>(b) * nblk + blk) * L * N;
  float* part_C = part_B + ws.part_bc;
  float* part_A = p.workspace + ws.a_offset;
  float* part_D = p.workspace + ws.d_offset;
  float* part_bias = p.workspace + ws.bias_offset;

  for (int grp = 0; grp < p.bwd_groups_per_block; ++grp) {
    const int c0 = (blk * p.bwd_groups_per_block + grp) * cpb;
    if (c0 >= E) break;  // the same for the whole block
    const int rows_valid = min(cpb, E - c0);
    const int e = c0 + local;
    const bool e_valid = e < E;
    const int64_t state_row = (static_cast<int64_t>(b) * E + e) * N;

    const T* u = static_cast<const T*>(p.u) + b * p.u_batch_stride + c0 * p.u_c_stride;
    const T* delta =
        static_cast<const T*>(p.delta) + b * p.delta_batch_stride + c0 * p.delta_c_stride;
    const T* z = has_z ? static_cast<const T*>(p.z) + b * p.z_batch_stride + c0 * p.z_c_stride
                       : nullptr;
    const T* dout =
        static_cast<const T*>(p.dout) + b * p.dout_batch_stride + c0 * p.dout_c_stride;
    const T* Bm = static_cast<const T*>(p.Bm) + b * p.b_batch_stride;
    const T* Cm = static_cast<const T*>(p.Cm) + b * p.c_batch_stride;
    T* du = static_cast<T*>(p.du) + b * p.du_batch_stride + c0 * p.du_c_stride;
    T* ddelta = static_cast<T*>(p.ddelta) + b * p.ddelta_batch_stride + c0 * p.ddelta_c_stride;
    T* dz = has_z ? static_cast<T*>(p.dz) + b * p.dz_batch_stride + c0 * p.dz_c_stride : nullptr;

    float a_nat[kStates], a2[kStates], g[kStates], dA_acc[kStates];
    bool nv[kStates];
#pragma unroll
    for (int s = 0; s < kStates; ++s) {
      const int n = s * lanes + j;
      nv[s] = e_valid && n < N;
      a_nat[s] = nv[s] ? p.A[static_cast<int64_t>(e) * N + n] : 0.f;
      a2[s] = a_nat[s] * kLog2e;
      g[s] = nv[s] && p.dlast_state != nullptr ? p.dlast_state[state_row + n] : 0.f;
      dA_acc[s] = 0.f;
    }
    const float d_skip = p.D != nullptr && e_valid ? p.D[e] : 0.f;
    float dD_acc = 0.f, dbias_acc = 0.f;

    // u, delta' and its slope, and B (and with `all`, z, dout and C) of steps t0.. into the tiles.
    auto load_tiles = [&](int t0, bool all) {
      const int cols_valid = min(kSub, L - t0);
      load_tile(u + t0 * p.u_l_stride, p.u_c_stride, p.u_l_stride, cpb, kSub, rows_valid,
                cols_valid, [&](int r, int t, float v, bool) { s_u[r * kRow + t] = v; });
      load_tile(delta + t0 * p.delta_l_stride, p.delta_c_stride, p.delta_l_stride, cpb, kSub,
                rows_valid, cols_valid, [&](int r, int t, float v, bool valid) {
                  float d = 0.f, slope = 0.f;
                  if (valid) {
                    const float bias = p.delta_bias != nullptr ? p.delta_bias[c0 + r] : 0.f;
                    transform_delta<kSoftplus>(v + bias, &d, &slope);
                  }
                  s_delta[r * kRow + t] = d;
                  s_slope[r * kRow + t] = slope;
                });
      load_tile(Bm + t0 * p.b_l_stride, p.b_n_stride, p.b_l_stride, N, kSub, N, cols_valid,
                [&](int n, int t, float v, bool) { s_B[t * bc_row + n] = v; });
      if (!all) return;
      if (has_z) {
        load_tile(z + t0 * p.z_l_stride, p.z_c_stride, p.z_l_stride, cpb, kSub, rows_valid,
                  cols_valid, [&](int r, int t, float v, bool) { s_z[r * kRow + t] = v; });
      }
      load_tile(dout + t0 * p.dout_l_stride, p.dout_c_stride, p.dout_l_stride, cpb, kSub,
                rows_valid, cols_valid,
                [&](int r, int t, float v, bool) { s_dout[r * kRow + t] = v; });
      load_tile(Cm + t0 * p.c_l_stride, p.c_n_stride, p.c_l_stride, N, kSub, N, cols_valid,
                [&](int n, int t, float v, bool) { s_C[t * bc_row + n] = v; });
    };

    for (int k = nchunks - 1; k >= 0; --k) {
      const int chunk_t0 = k * kChunk;
      const int nsub = min(kSubs, (L - chunk_t0 + kSub - 1) / kSub);

      // 1. The state at the start of each sub-chunk, from the kept chunk state.
      float h[kStates];
      const float* kept =
          p.chunk_states + ((static_cast<int64_t>(b) * E + e) * nchunks + k) * N;
#pragma unroll
      for (int s = 0; s < kStates; ++s) h[s] = nv[s] ? kept[s * lanes + j] : 0.f;
      for (int sub = 0; sub < nsub; ++sub) {
#pragma unroll
        for (int s = 0; s < kStates; ++s) {
          s_snap[(sub * kStates + s) * kThreads + threadIdx.x] = h[s];  // this thread's own
        }
        if (sub + 1 == nsub) break;
        __syncthreads();  // every thread is done with the tiles
        load_tiles(chunk_t0 + sub * kSub, false);
        __syncthreads();
#pragma unroll
        for (int i = 0; i < kSub; ++i) {
          const float dt = s_delta[local * kRow + i];
          const float dtu = dt * s_u[local * kRow + i];
#pragma unroll
          for (int s = 0; s < kStates; ++s) {
            const float bn = nv[s] ? s_B[i * bc_row + s * lanes + j] : 0.f;
            h[s] = exp2f(dt * a2[s]) * h[s] + dtu * bn;
          }
        }
      }

      // 2. Sub-chunks last to first: states into registers, then the adjoint backwards.
      for (int sub = nsub - 1; sub >= 0; --sub) {
        const int t0 = chunk_t0 + sub * kSub;
        const int cols_valid = min(kSub, L - t0);
        __syncthreads();  // every thread is done with the tiles and the staged sums
        load_tiles(t0, true);
        __syncthreads();

        // This thread's states of the sub-chunk into its own column of s_hist.
        float* hist = s_hist + threadIdx.x;
        const float* h0 = s_snap + sub * kStates * kThreads + threadIdx.x;
#pragma unroll
        for (int s = 0; s < kStates; ++s) h[s] = h0[s * kThreads];
#pragma unroll 4
        for (int i = 0; i < kSub; ++i) {
          const float dt = s_delta[local * kRow + i];
          const float dtu = dt * s_u[local * kRow + i];
#pragma unroll
          for (int s = 0; s < kStates; ++s) {
            const float bn = nv[s] ? s_B[i * bc_row + s * lanes + j] : 0.f;
            h[s] = exp2f(dt * a2[s]) * h[s] + dtu * bn;
            hist[(i * kStates + s) * kThreads] = h[s];
          }
        }

#pragma unroll 2
        for (int i = kSub - 1; i >= 0; --i) {
          const int col = local * kRow + i;
          const float dt = s_delta[col], uu = s_u[col], dy_out = s_dout[col];
          // h_t and h_{t-1}
          const float* cur = hist + i * kStates * kThreads;
          const float* prev = i > 0 ? cur - kStates * kThreads : h0;
          float bn[kStates], cn[kStates];
#pragma unroll
          for (int s = 0; s < kStates; ++s) {
            bn[s] = nv[s] ? s_B[i * bc_row + s * lanes + j] : 0.f;
            cn[s] = nv[s] ? s_C[i * bc_row + s * lanes + j] : 0.f;
          }
          float dy = dy_out;
          if (has_z) {
            float acc = 0.f;
#pragma unroll
            for (int s = 0; s < kStates; ++s) acc += cur[s * kThreads] * cn[s];
            acc = lane_group_sum(acc, lanes);
            const float zz = s_z[col], sg = sigmoid(zz);
            if (j == 0) s_dz[col] = dy_out * (acc + d_skip * uu) * sg * (1.f + zz * (1.f - sg));
            dy = dy_out * zz * sg;
          }
          dD_acc += dy * uu;
          float s1 = 0.f, s2 = 0.f, vb[kStates], vc[kStates];
#pragma unroll
          for (int s = 0; s < kStates; ++s) {
            const float decay = exp2f(dt * a2[s]);
            vc[s] = dy * cur[s * kThreads];
            g[s] += dy * cn[s];  // g is now dL/dh_t
            const float gah = g[s] * decay * prev[s * kThreads];
            s2 += gah * a_nat[s];
            dA_acc[s] += gah * dt;
            s1 += g[s] * bn[s];
            vb[s] = g[s] * dt * uu;
            g[s] *= decay;  // the part of dL/dh_{t-1} that flows through h_t
          }
          s1 = lane_group_sum(s1, lanes);
          s2 = lane_group_sum(s2, lanes);
          if (j == 0) {
            s_du[col] = dy * d_skip + dt * s1;
            const float dd = (s2 + uu * s1) * s_slope[col];
            s_ddelta[col] = dd;
            dbias_acc += dd;
          }
#pragma unroll
          for (int s = 0; s < kStates; ++s) {
            vb[s] = warp_channel_sum(vb[s], lanes);
            vc[s] = warp_channel_sum(vc[s], lanes);
            const int n = s * lanes + lane;  // lanes < G: the warp's first channel
            if (lane < lanes && n < N) {
              s_red[((0 * kWarps + warp) * kSub + i) * N + n] = vb[s];
              s_red[((1 * kWarps + warp) * kSub + i) * N + n] = vc[s];
            }
          }
        }
        __syncthreads();

        store_tile(du + t0 * p.du_l_stride, p.du_c_stride, p.du_l_stride, s_du, kRow, cpb, kSub,
                   rows_valid, cols_valid);
        store_tile(ddelta + t0 * p.ddelta_l_stride, p.ddelta_c_stride, p.ddelta_l_stride,
                   s_ddelta, kRow, cpb, kSub, rows_valid, cols_valid);
        if (has_z) {
          store_tile(dz + t0 * p.dz_l_stride, p.dz_c_stride, p.dz_l_stride, s_dz, kRow, cpb,
                     kSub, rows_valid, cols_valid);
        }
        for (int idx = threadIdx.x; idx < cols_valid * N; idx += kThreads) {
          const int i = idx / N, n = idx % N;
          float sum_b = 0.f, sum_c = 0.f;
#pragma unroll
          for (int w = 0; w < kWarps; ++w) {
            sum_b += s_red[((0 * kWarps + w) * kSub + i) * N + n];
            sum_c += s_red[((1 * kWarps + w) * kSub + i) * N + n];
          }
          const int64_t o = static_cast<int64_t>(t0 + i) * N + n;
          if (grp == 0) {
            part_B[o] = sum_b;
            part_C[o] = sum_c;
          } else {
            part_B[o] += sum_b;
            part_C[o] += sum_c;
          }
        }
      }
    }

#pragma unroll
    for (int s = 0; s < kStates; ++s) {
      if (!nv[s]) continue;
      part_A[state_row + s * lanes + j] = dA_acc[s];
      if (p.dinitial_state != nullptr) p.dinitial_state[state_row + s * lanes + j] = g[s];
    }
    if (j == 0 && e_valid) {
      const int64_t be = static_cast<int64_t>(b) * E + e;
      if (p.dD != nullptr) part_D[be] = dD_acc;
      if (p.ddelta_bias != nullptr) part_bias[be] = dbias_acc;
    }
  }
}

namespace sscan {

template <typename T, int kStates>
cudaError_t bwd_launch(const SelectiveScanParams& p, cudaStream_t stream) {
  const BwdLayout l = bwd_layout(p);
  const dim3 grid(l.nblk, p.batch);
  const size_t smem = bwd_smem_bytes<kStates>(p.dstate);
  return BOOL_SWITCH(p.delta_softplus, kSoftplus, [&] {
    auto kernel = &selective_scan_bwd_kernel<T, kStates, kSoftplus>;
    static DynamicSmemOptIn opt_in;
    const cudaError_t err = opt_in.ensure(kernel, smem);
    if (err != cudaSuccess) return err;
    kernel<<<grid, kThreads, smem, stream>>>(p);
    return cudaGetLastError();
  });
}

}  // namespace sscan

/// The scan kernel of the backward only; selective_scan_bwd_cuda adds the partial sums.
template <typename T>
cudaError_t selective_scan_bwd_launch(const SelectiveScanParams& p, cudaStream_t stream) {
  return sscan::states_per_lane(p.dstate) == 4 ? sscan::bwd_launch<T, 4>(p, stream)
                                               : sscan::bwd_launch<T, 8>(p, stream);
}

}  // namespace aim::kernels
