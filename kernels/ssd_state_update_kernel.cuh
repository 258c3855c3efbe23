#pragma once
// Mamba2 one-token state update (the decoding step of the SSD scan).
//
// Math, per batch b, head h (group g = h / (H / G)), row p of the state [P, N]:
//   dt'  = softplus(dt[b, h] + dt_bias[h])          (or without softplus)
//   s    = exp(dt' * A[h]) * s + dt' * x[b, h, p] * B[b, g, :]
//   y    = <s, C[b, g, :]> + D * x[b, h, p]
// Grid: (B * H, ceil(P / kRowsPerBlock)); one warp per state row, lanes stride over N so the
// state is read and written once, coalesced. Precision: inputs of any supported type, math in
// fp32, the state stored in fp32 or bf16 (rounded once per step; y uses the unrounded values),
// y written in the input type.
#include <cuda_bf16.h>

#include "ssd_state_update.h"
#include "static_switch.h"

namespace aim::kernels {

template <typename T>
__device__ __forceinline__ float load_as_float(const T* p) {
  return static_cast<float>(*p);
}
template <>
__device__ __forceinline__ float load_as_float<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}
template <typename T>
__device__ __forceinline__ void store_from_float(T* p, float v) {
  *p = static_cast<T>(v);
}
template <>
__device__ __forceinline__ void store_from_float<__nv_bfloat16>(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16(v);
}

constexpr int kRowsPerBlock = 4;

template <typename T, typename S, bool kSoftplus>
__global__ void ssd_state_update_kernel(SsdStateUpdateParams params) {
  const int bh = blockIdx.x;
  const int b = bh / params.nheads, h = bh % params.nheads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int p = blockIdx.y * kRowsPerBlock + warp;
  if (p >= params.headdim) return;
  const int g = h / (params.nheads / params.ngroups);

  float dt = load_as_float(static_cast<const T*>(params.dt) + b * params.dt_batch_stride + h);
  if (params.dt_bias != nullptr) dt += params.dt_bias[h];
  if (kSoftplus) dt = dt <= 20.f ? log1pf(expf(dt)) : dt;
  const float decay = expf(dt * params.A[h]);
  const float x = load_as_float(static_cast<const T*>(params.x) + b * params.x_batch_stride +
                                h * params.x_head_stride + p);
  const T* bvec = static_cast<const T*>(params.Bm) + b * params.b_batch_stride + g * params.b_group_stride;
  const T* cvec = static_cast<const T*>(params.Cm) + b * params.c_batch_stride + g * params.c_group_stride;
  S* s = static_cast<S*>(params.state) +
         ((static_cast<int64_t>(b) * params.nheads + h) * params.headdim + p) * params.dstate;
  float acc = 0.f;
  const float dtx = dt * x;
  for (int n = lane; n < params.dstate; n += 32) {
    const float next = load_as_float(s + n) * decay + dtx * load_as_float(bvec + n);
    store_from_float(s + n, next);
    acc += next * load_as_float(cvec + n);
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
  if (lane == 0) {
    if (params.D != nullptr) acc += x * (params.d_per_channel ? params.D[h * params.headdim + p] : params.D[h]);
    store_from_float(static_cast<T*>(params.y) + b * params.y_batch_stride + h * params.y_head_stride + p, acc);
  }
}

template <typename T>
cudaError_t ssd_state_update_launch(const SsdStateUpdateParams& params, cudaStream_t stream) {
  if (params.batch == 0 || params.nheads == 0 || params.headdim == 0) return cudaSuccess;
  dim3 grid(params.batch * params.nheads, (params.headdim + kRowsPerBlock - 1) / kRowsPerBlock);
  dim3 block(32 * kRowsPerBlock);
  BOOL_SWITCH(params.dt_softplus, kSoftplus, [&] {
    if (params.state_type == ElemType::kBFloat16) {
      ssd_state_update_kernel<T, __nv_bfloat16, kSoftplus><<<grid, block, 0, stream>>>(params);
    } else {
      ssd_state_update_kernel<T, float, kSoftplus><<<grid, block, 0, stream>>>(params);
    }
  });
  return cudaGetLastError();
}

}  // namespace aim::kernels
