#pragma once
// Mamba1 one-token state update (the decoding step of the selective scan).
//
// Math, per sequence b, channel e (delta' = softplus(delta + delta_bias), or without softplus):
//   h[n] = exp(delta' A[e, n]) h[n] + delta' u B[n]          (state in place)
//   y    = sum_n h[n] C[n] + D[e] u,   then y *= silu(z) with a gate
// Grid (ceil(E / (kThreads / G)), B), kThreads threads; a channel gets G = min(32, N rounded up
// to a power of two) consecutive lanes, lane j owning states j, j + G, ...: the state row is
// read and written once, coalesced, and y is a butterfly sum over the G lanes.
// Precision: arithmetic in fp32, exp as in the forward scan (exp2 of x log2 e), so a token fed
// through here gives the scan's y up to the order of the sum over n; y rounded once. The state
// is stored in fp32, or in bf16 as a decoding option: rounded once per step when stored, y uses
// the unrounded values.
#include "selective_scan_common.cuh"
#include "static_switch.h"

namespace aim::kernels {

namespace sscan {
__host__ __device__ inline int update_lanes(int dstate) {
  int g = 1;
  while (g < dstate && g < 32) g *= 2;
  return g;
}
}  // namespace sscan

template <typename T, typename S, bool kSoftplus>
__global__ void __launch_bounds__(sscan::kThreads)
    selective_state_update_kernel(SelectiveStateUpdateParams p) {
  using namespace sscan;
  const int N = p.dstate;
  const int lanes = update_lanes(N);
  const int cpb = kThreads / lanes;
  const int b = blockIdx.y;
  const int j = threadIdx.x % lanes;
  const int e = blockIdx.x * cpb + threadIdx.x / lanes;
  const bool valid = e < p.channels;

  float acc = 0.f, uu = 0.f;
  if (valid) {
    uu = to_float(static_cast<const T*>(p.u)[b * p.u_batch_stride + e * p.u_c_stride]);
    float raw = to_float(
        static_cast<const T*>(p.delta)[b * p.delta_batch_stride + e * p.delta_c_stride]);
    if (p.delta_bias != nullptr) raw += p.delta_bias[e];
    float dt, slope;
    transform_delta<kSoftplus>(raw, &dt, &slope);
    const float dtu = dt * uu;
    S* state = static_cast<S*>(p.state) + b * p.state_batch_stride + e * p.state_c_stride;
    const float* a = p.A + static_cast<int64_t>(e) * N;
    const T* Bm = static_cast<const T*>(p.Bm) + b * p.b_batch_stride;
    const T* Cm = static_cast<const T*>(p.Cm) + b * p.c_batch_stride;
    for (int n = j; n < N; n += lanes) {
      const float next =
          exp2f(dt * (a[n] * kLog2e)) * to_float(state[n]) + dtu * to_float(Bm[n * p.b_n_stride]);
      state[n] = from_float<S>(next);
      acc += next * to_float(Cm[n * p.c_n_stride]);
    }
  }
  acc = lane_group_sum(acc, lanes);
  if (valid && j == 0) {
    float out = acc + (p.D != nullptr ? p.D[e] * uu : 0.f);
    if (p.z != nullptr) {
      const float zz =
          to_float(static_cast<const T*>(p.z)[b * p.z_batch_stride + e * p.z_c_stride]);
      out *= zz * sigmoid(zz);
    }
    static_cast<T*>(p.y)[b * p.y_batch_stride + e * p.y_c_stride] = from_float<T>(out);
  }
}

template <typename T>
cudaError_t selective_state_update_launch(const SelectiveStateUpdateParams& p,
                                          cudaStream_t stream) {
  const int cpb = sscan::kThreads / sscan::update_lanes(p.dstate);
  const dim3 grid((p.channels + cpb - 1) / cpb, p.batch);
  BOOL_SWITCH(p.delta_softplus, kSoftplus, [&] {
    if (p.state_type == ElemType::kBFloat16) {
      selective_state_update_kernel<T, __nv_bfloat16, kSoftplus>
          <<<grid, sscan::kThreads, 0, stream>>>(p);
    } else {
      selective_state_update_kernel<T, float, kSoftplus><<<grid, sscan::kThreads, 0, stream>>>(p);
    }
  });
  return cudaGetLastError();
}

}  // namespace aim::kernels
