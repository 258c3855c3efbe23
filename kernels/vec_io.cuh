#pragma once
// Element conversions, and kVec consecutive elements of fp32 or bf16 moved as one 8- or 16-byte
// access: for kernels that walk rows whose elements are fp32 or bf16 and compute in fp32.
#include <cuda_bf16.h>

namespace aim::kernels::vec {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Packed {
  T v[kVec];
};

/// out[e] = p[e] for e < kVec, as floats; p aligned to the vector (sizeof(T) * kVec bytes).
template <int kVec, typename T>
__device__ __forceinline__ void load_vec(const T* p, float* out) {
  const Packed<T, kVec> packed = *reinterpret_cast<const Packed<T, kVec>*>(p);
#pragma unroll
  for (int e = 0; e < kVec; ++e) out[e] = to_float(packed.v[e]);
}

/// p[e] = in[e] rounded to T, for e < kVec; p aligned to the vector.
template <int kVec, typename T>
__device__ __forceinline__ void store_vec(T* p, const float* in) {
  Packed<T, kVec> packed;
#pragma unroll
  for (int e = 0; e < kVec; ++e) packed.v[e] = from_float<T>(in[e]);
  *reinterpret_cast<Packed<T, kVec>*>(p) = packed;
}

}  // namespace aim::kernels::vec
