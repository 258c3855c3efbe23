#pragma once
// What the CPU kernels (src/ops/*_cpu.cpp) share: 16-float vector types that live in registers
// on every instruction set, and the dispatch that runs a kernel compiled for the best one the CPU
// has.
//
// A kernel is a struct with `template <class V> static AIM_INLINE void run(...)` (AIM_CPU_KERNEL
// declares one for an always-inlined function template fn<V>). run_kernel<K> calls K::run<V> from
// a function compiled for AVX-512 (V = V16: one zmm register), for AVX2 + FMA (V = V8x2: two ymm
// registers) or for the baseline (V = V4x4: four SSE or NEON registers), chosen once per process
// (cpu_isa(); AIM_CPU_ISA picks a lesser one). Every type holds 16 lanes and hsum adds them in one
// fixed tree, so a kernel's sums run in the same order on every path; only the contraction of a
// multiply and an add into an FMA (AVX2 and AVX-512 paths) changes the last bits.
//
// Why not one 16-float GCC vector with target_clones, as before: GCC has no machine mode for a
// 64-byte vector without AVX-512, so on an AVX2 CPU it kept every such variable in memory and
// built each scalar broadcast lane by lane on the stack; the AVX2 clone also had no FMA. The SSD
// scan's backward took 35% of a demo training step there, and the CPU kernels were slower than
// the ATen references they replace (docs/perf.md, 2026-12-05).
//
// Helpers taking or returning vectors are always inlined (lambdas inside kernels are marked
// AIM_LAMBDA_INLINE), so no vector crosses a call boundary and everything a kernel calls is
// compiled for its instruction set (hence -Wpsabi is silenced on the files that include this one).
#include <cstdint>

#define AIM_INLINE inline __attribute__((always_inline))
#define AIM_LAMBDA_INLINE __attribute__((always_inline))

#if defined(__x86_64__) && defined(__GNUC__)
#define AIM_X86_DISPATCH 1
#define AIM_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))
#define AIM_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define AIM_X86_DISPATCH 0
#endif

#pragma GCC diagnostic ignored "-Wpsabi"

namespace aim::ops::cpu::simd {

typedef float f4 __attribute__((vector_size(16)));
typedef float f8 __attribute__((vector_size(32)));
typedef float f16 __attribute__((vector_size(64)));

constexpr int64_t kW = 16;  // lanes of V16, V8x2 and V4x4

/// 16 floats in one AVX-512 register.
struct V16 {
  f16 v;
};
/// 16 floats in two AVX2 registers: lanes 0-7 and 8-15.
struct V8x2 {
  f8 lo, hi;
};
/// 16 floats in four SSE (or NEON) registers: lanes 0-3, 4-7, 8-11, 12-15.
struct V4x4 {
  f4 a, b, c, d;
};

AIM_INLINE V16 operator+(V16 a, V16 b) { return {a.v + b.v}; }
AIM_INLINE V16 operator*(V16 a, V16 b) { return {a.v * b.v}; }
AIM_INLINE V16 operator*(V16 a, float s) { return {a.v * s}; }
AIM_INLINE V16& operator+=(V16& a, V16 b) { return a = a + b; }

AIM_INLINE V8x2 operator+(V8x2 a, V8x2 b) { return {a.lo + b.lo, a.hi + b.hi}; }
AIM_INLINE V8x2 operator*(V8x2 a, V8x2 b) { return {a.lo * b.lo, a.hi * b.hi}; }
AIM_INLINE V8x2 operator*(V8x2 a, float s) { return {a.lo * s, a.hi * s}; }
AIM_INLINE V8x2& operator+=(V8x2& a, V8x2 b) { return a = a + b; }

AIM_INLINE V4x4 operator+(V4x4 x, V4x4 y) { return {x.a + y.a, x.b + y.b, x.c + y.c, x.d + y.d}; }
AIM_INLINE V4x4 operator*(V4x4 x, V4x4 y) { return {x.a * y.a, x.b * y.b, x.c * y.c, x.d * y.d}; }
AIM_INLINE V4x4 operator*(V4x4 x, float s) { return {x.a * s, x.b * s, x.c * s, x.d * s}; }
AIM_INLINE V4x4& operator+=(V4x4& x, V4x4 y) { return x = x + y; }

template <class V>
AIM_INLINE V loadu(const float* p);
template <>
AIM_INLINE V16 loadu<V16>(const float* p) {
  V16 r;
  __builtin_memcpy(&r.v, p, sizeof r.v);
  return r;
}
template <>
AIM_INLINE V8x2 loadu<V8x2>(const float* p) {
  V8x2 r;
  __builtin_memcpy(&r.lo, p, sizeof r.lo);
  __builtin_memcpy(&r.hi, p + 8, sizeof r.hi);
  return r;
}
template <>
AIM_INLINE V4x4 loadu<V4x4>(const float* p) {
  V4x4 r;
  __builtin_memcpy(&r.a, p, sizeof r.a);
  __builtin_memcpy(&r.b, p + 4, sizeof r.b);
  __builtin_memcpy(&r.c, p + 8, sizeof r.c);
  __builtin_memcpy(&r.d, p + 12, sizeof r.d);
  return r;
}

AIM_INLINE void storeu(float* p, V16 a) { __builtin_memcpy(p, &a.v, sizeof a.v); }
AIM_INLINE void storeu(float* p, V8x2 a) {
  __builtin_memcpy(p, &a.lo, sizeof a.lo);
  __builtin_memcpy(p + 8, &a.hi, sizeof a.hi);
}
AIM_INLINE void storeu(float* p, V4x4 x) {
  __builtin_memcpy(p, &x.a, sizeof x.a);
  __builtin_memcpy(p + 4, &x.b, sizeof x.b);
  __builtin_memcpy(p + 8, &x.c, sizeof x.c);
  __builtin_memcpy(p + 12, &x.d, sizeof x.d);
}

/// The sum of 4 lanes: (0+2, 1+3), then 0+1.
AIM_INLINE float hsum4(f4 v) {
  float t[4];
  __builtin_memcpy(t, &v, sizeof v);
  t[0] += t[2];
  t[1] += t[3];
  return t[0] + t[1];
}

/// The sum of the 16 lanes as a fixed tree: lane i + 8 into lane i, then i + 4, i + 2, i + 1. The
/// same order for every vector type.
AIM_INLINE float hsum(V4x4 x) { return hsum4((x.a + x.c) + (x.b + x.d)); }
AIM_INLINE float hsum(V8x2 x) {
  const f8 s = x.lo + x.hi;
  f4 lo, hi;
  __builtin_memcpy(&lo, &s, sizeof lo);
  __builtin_memcpy(&hi, reinterpret_cast<const char*>(&s) + sizeof lo, sizeof hi);
  return hsum4(lo + hi);
}
AIM_INLINE float hsum(V16 x) {
  f8 lo, hi;
  __builtin_memcpy(&lo, &x.v, sizeof lo);
  __builtin_memcpy(&hi, reinterpret_cast<const char*>(&x.v) + sizeof lo, sizeof hi);
  return hsum(V8x2{lo, hi});
}

/// sum_i u[i] * v[i] over n elements: 16 lanes, then the tail, in a fixed order.
template <class V>
AIM_INLINE float dot(const float* __restrict u, const float* __restrict v, int64_t n) {
  const int64_t nv = n - n % kW;
  V acc = {};
  for (int64_t i = 0; i < nv; i += kW) acc += loadu<V>(u + i) * loadu<V>(v + i);
  float s = hsum(acc);
  for (int64_t i = nv; i < n; ++i) s += u[i] * v[i];
  return s;
}

/// The instruction sets the kernels are compiled for, best first.
enum class Isa { kAvx512, kAvx2, kBaseline };

/// The instruction set run_kernel uses: the best one this CPU has, or the one AIM_CPU_ISA names
/// (avx512, avx2 or baseline; at most what the CPU has), or the one set_isa_override set.
Isa cpu_isa();
/// The best instruction set this CPU has, whatever the override.
Isa cpu_best_isa();
const char* isa_name(Isa isa);
/// Makes run_kernel use `isa` (which the CPU must have) from now on; tests use it to run every
/// path this machine can. Not for use while kernels run on other threads.
void set_isa_override(Isa isa);
void clear_isa_override();

#if AIM_X86_DISPATCH
template <class K, class... A>
AIM_TARGET_AVX512 void run_avx512(const A&... a) {
  K::template run<V16>(a...);
}
template <class K, class... A>
AIM_TARGET_AVX2 void run_avx2(const A&... a) {
  K::template run<V8x2>(a...);
}
#endif
template <class K, class... A>
void run_baseline(const A&... a) {
  K::template run<V4x4>(a...);
}

/// Declares kernel `Name` whose run<V>(args...) calls the function template fn<V>(args...).
#define AIM_CPU_KERNEL(Name, fn)                     \
  struct Name {                                      \
    template <class V, class... A>                   \
    static AIM_INLINE void run(const A&... a) {      \
      fn<V>(a...);                                   \
    }                                                \
  }

/// Runs kernel K with arguments `a` on the instruction set cpu_isa() names.
template <class K, class... A>
void run_kernel(const A&... a) {
#if AIM_X86_DISPATCH
  switch (cpu_isa()) {
    case Isa::kAvx512:
      return run_avx512<K>(a...);
    case Isa::kAvx2:
      return run_avx2<K>(a...);
    case Isa::kBaseline:
      break;
  }
#endif
  run_baseline<K>(a...);
}

}  // namespace aim::ops::cpu::simd
