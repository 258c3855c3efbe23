#pragma once
// Mamba1 selective scan, forward.
//
// Math, per sequence b, channel e, state n, time t (delta' = softplus(delta + delta_bias), or
// delta + delta_bias, or delta):
//   h_t[n] = exp(delta'_t A[e, n]) h_{t-1}[n] + delta'_t u_t B_t[n]        h_{-1} = initial_state
//   y_t    = sum_n h_t[n] C_t[n] + D[e] u_t,   then y_t *= silu(z_t) with a gate
// B and C are [B, N, L]: input-dependent, shared by all channels of a sequence.
//
// Grid (ceil(E / channels_per_block), B), kThreads threads; the (channel, state) mapping is
// selective_scan_common.cuh's. The block walks the sequence in tiles of kTile steps: u, delta'
// and z of its channels and B, C of the tile go to shared memory as fp32 (threads walking the
// unit-stride axis of each tensor, so channel-last inputs load coalesced too), then each lane
// advances its states through the tile, one step at a time; a step's y is a butterfly sum over
// the channel's G lanes, staged in shared memory and stored per tile. Steps past L read
// delta' = u = B = C = 0, which leaves the state as it is.
// Kept for the backward: the state at the start of every kChunk steps (chunk_states), and the
// final state (last_state).
// Precision: fp32 or bf16 tensors; states, sums and products in fp32; exp(x) as
// exp2(x log2 e) (ex2.approx under --use_fast_math, about 2 ulp); y rounded once.
#include "selective_scan_common.cuh"
#include "static_switch.h"

namespace aim::kernels {

namespace sscan {

template <int kStates>
struct FwdTraits {
  static constexpr int kTile = kStates == 4 ? 32 : 16;  // divides kChunk
  static_assert(kChunk % kTile == 0, "tiles must not straddle a kept chunk state");
};

template <int kStates>
inline size_t fwd_smem_bytes(int dstate) {
  constexpr int kTile = FwdTraits<kStates>::kTile;
  const int cpb = kThreads / lanes_per_channel(dstate, kStates);
  return sizeof(float) * (4 * cpb * (kTile + 1) + 2 * kTile * (dstate + 1));
}

}  // namespace sscan

template <typename T, int kStates, bool kSoftplus>
__global__ void __launch_bounds__(sscan::kThreads) selective_scan_fwd_kernel(SelectiveScanParams p) {
  using namespace sscan;
  constexpr int kTile = FwdTraits<kStates>::kTile;
  constexpr int kRow = kTile + 1;  // odd: rows and columns of a tile hit distinct banks
  extern __shared__ float smem[];
  const int N = p.dstate, E = p.channels, L = p.len;
  const int lanes = lanes_per_channel(N, kStates);
  const int cpb = kThreads / lanes;
  const int b = blockIdx.y;
  const int c0 = blockIdx.x * cpb;
  const int local = threadIdx.x / lanes, j = threadIdx.x % lanes;
  const int e = c0 + local;
  const bool e_valid = e < E;
  const int rows_valid = min(cpb, E - c0);
  const int bc_row = N + 1;
  const int nchunks = (L + kChunk - 1) / kChunk;
  const bool has_z = p.z != nullptr;

  float* s_u = smem;                   // [cpb][kRow]
  float* s_delta = s_u + cpb * kRow;   // [cpb][kRow], delta'
  float* s_z = s_delta + cpb * kRow;   // [cpb][kRow]
  float* s_y = s_z + cpb * kRow;       // [cpb][kRow]
  float* s_B = s_y + cpb * kRow;       // [kTile][N + 1]
  float* s_C = s_B + kTile * bc_row;   // [kTile][N + 1]

  const T* u = static_cast<const T*>(p.u) + b * p.u_batch_stride + c0 * p.u_c_stride;
  const T* delta =
      static_cast<const T*>(p.delta) + b * p.delta_batch_stride + c0 * p.delta_c_stride;
  const T* z = has_z ? static_cast<const T*>(p.z) + b * p.z_batch_stride + c0 * p.z_c_stride
                     : nullptr;
  const T* Bm = static_cast<const T*>(p.Bm) + b * p.b_batch_stride;
  const T* Cm = static_cast<const T*>(p.Cm) + b * p.c_batch_stride;
  T* y = static_cast<T*>(p.y) + b * p.y_batch_stride + c0 * p.y_c_stride;
  const int64_t state_row = (static_cast<int64_t>(b) * E + e) * N;

  float a2[kStates], h[kStates];
  bool nv[kStates];
#pragma unroll
  for (int s = 0; s < kStates; ++s) {
    const int n = s * lanes + j;
    nv[s] = e_valid && n < N;
    a2[s] = nv[s] ? p.A[static_cast<int64_t>(e) * N + n] * kLog2e : 0.f;
    h[s] = nv[s] && p.initial_state != nullptr ? p.initial_state[state_row + n] : 0.f;
  }
  const float d_skip = p.D != nullptr && e_valid ? p.D[e] : 0.f;

  for (int t0 = 0; t0 < L; t0 += kTile) {
    const int cols_valid = min(kTile, L - t0);
    if (p.chunk_states != nullptr && t0 % kChunk == 0) {
      float* kept = p.chunk_states +
                    ((static_cast<int64_t>(b) * E + e) * nchunks + t0 / kChunk) * N;
#pragma unroll
      for (int s = 0; s < kStates; ++s) {
        if (nv[s]) kept[s * lanes + j] = h[s];
      }
    }
    load_tile(u + t0 * p.u_l_stride, p.u_c_stride, p.u_l_stride, cpb, kTile, rows_valid,
              cols_valid, [&](int r, int t, float v, bool) { s_u[r * kRow + t] = v; });
    load_tile(delta + t0 * p.delta_l_stride, p.delta_c_stride, p.delta_l_stride, cpb, kTile,
              rows_valid, cols_valid, [&](int r, int t, float v, bool valid) {
                float d = 0.f, slope;
                if (valid) {
                  const float bias = p.delta_bias != nullptr ? p.delta_bias[c0 + r] : 0.f;
                  transform_delta<kSoftplus>(v + bias, &d, &slope);
                }
                s_delta[r * kRow + t] = d;
              });
    if (has_z) {
      load_tile(z + t0 * p.z_l_stride, p.z_c_stride, p.z_l_stride, cpb, kTile, rows_valid,
                cols_valid, [&](int r, int t, float v, bool) { s_z[r * kRow + t] = v; });
    }
    load_tile(Bm + t0 * p.b_l_stride, p.b_n_stride, p.b_l_stride, N, kTile, N, cols_valid,
              [&](int n, int t, float v, bool) { s_B[t * bc_row + n] = v; });
    load_tile(Cm + t0 * p.c_l_stride, p.c_n_stride, p.c_l_stride, N, kTile, N, cols_valid,
              [&](int n, int t, float v, bool) { s_C[t * bc_row + n] = v; });
    __syncthreads();

#pragma unroll 2
    for (int t = 0; t < kTile; ++t) {
      const float dt = s_delta[local * kRow + t];
      const float uu = s_u[local * kRow + t];
      const float dtu = dt * uu;
      float acc = 0.f;
#pragma unroll
      for (int s = 0; s < kStates; ++s) {
        const int n = s * lanes + j;
        const float bn = nv[s] ? s_B[t * bc_row + n] : 0.f;
        const float cn = nv[s] ? s_C[t * bc_row + n] : 0.f;
        h[s] = exp2f(dt * a2[s]) * h[s] + dtu * bn;
        acc += h[s] * cn;
      }
      acc = lane_group_sum(acc, lanes);
      if (j == 0) {
        float out = acc + d_skip * uu;
        if (has_z) {
          const float zz = s_z[local * kRow + t];
          out *= zz * sigmoid(zz);
        }
        s_y[local * kRow + t] = out;
      }
    }
    __syncthreads();
    // The next tile's loads touch only the input tiles, which every thread is done reading;
    // its steps write s_y only after the next barrier, when these stores are done.
    store_tile(y + t0 * p.y_l_stride, p.y_c_stride, p.y_l_stride, s_y, kRow, cpb, kTile,
               rows_valid, cols_valid);
  }

  if (p.last_state != nullptr) {
#pragma unroll
    for (int s = 0; s < kStates; ++s) {
      if (nv[s]) p.last_state[state_row + s * lanes + j] = h[s];
    }
  }
}

namespace sscan {

template <typename T, int kStates>
cudaError_t fwd_launch(const SelectiveScanParams& p, cudaStream_t stream) {
  const int cpb = kThreads / lanes_per_channel(p.dstate, kStates);
  const dim3 grid((p.channels + cpb - 1) / cpb, p.batch);
  const size_t smem = fwd_smem_bytes<kStates>(p.dstate);
  return BOOL_SWITCH(p.delta_softplus, kSoftplus, [&] {
    auto kernel = &selective_scan_fwd_kernel<T, kStates, kSoftplus>;
    static DynamicSmemOptIn opt_in;
    const cudaError_t err = opt_in.ensure(kernel, smem);
    if (err != cudaSuccess) return err;
    kernel<<<grid, kThreads, smem, stream>>>(p);
    return cudaGetLastError();
  });
}

}  // namespace sscan

template <typename T>
cudaError_t selective_scan_fwd_launch(const SelectiveScanParams& p, cudaStream_t stream) {
  return sscan::states_per_lane(p.dstate) == 4 ? sscan::fwd_launch<T, 4>(p, stream)
                                               : sscan::fwd_launch<T, 8>(p, stream);
}

}  // namespace aim::kernels
