#pragma once
// What the CPU kernels (src/ops/*_cpu.cpp) share: the target clones of their hot loops and a
// 16-float vector type for loops whose accumulators must stay in registers.
//
// AIM_CPU_CLONES compiles a function for AVX-512, AVX2 and the baseline and picks one at load
// time (GCC target_clones). vf is a GCC vector extension of 16 floats: one AVX-512 register,
// two AVX2 or four SSE registers in the other clones. Helpers taking or returning vf are always
// inlined, so no vector crosses a call boundary (hence -Wpsabi is silenced here, and GCC's note
// about the ABI of 64-byte parameters by -Wno-psabi on the files that include this one).
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define AIM_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define AIM_CPU_CLONES
#endif
#define AIM_INLINE inline __attribute__((always_inline))

#pragma GCC diagnostic ignored "-Wpsabi"

namespace aim::ops::cpu::simd {

typedef float vf __attribute__((vector_size(64)));
constexpr int64_t kW = 16;  // lanes of vf

AIM_INLINE vf loadu(const float* p) {
  vf v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
AIM_INLINE void storeu(float* p, vf v) { __builtin_memcpy(p, &v, sizeof v); }

/// The sum of the lanes, as a fixed tree.
AIM_INLINE float hsum(vf v) {
  float t[kW];
  __builtin_memcpy(t, &v, sizeof v);
  for (int64_t w = kW / 2; w >= 1; w /= 2)
    for (int64_t i = 0; i < w; ++i) t[i] += t[i + w];
  return t[0];
}

/// sum_i u[i] * v[i] over n elements: 16 lanes, then the tail, in a fixed order.
AIM_INLINE float dot(const float* __restrict u, const float* __restrict v, int64_t n) {
  const int64_t nv = n - n % kW;
  vf acc = {};
  for (int64_t i = 0; i < nv; i += kW) acc += loadu(u + i) * loadu(v + i);
  float s = hsum(acc);
  for (int64_t i = nv; i < n; ++i) s += u[i] * v[i];
  return s;
}

}  // namespace aim::ops::cpu::simd
