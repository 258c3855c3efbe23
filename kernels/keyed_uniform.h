#pragma once
// The uniform of one draw, keyed by (seed, global sample index, generation step): the same bits
// on the host (aim::sample_uniform, the CPU sampling path) and in the sampling kernel, so a
// sample's tokens depend neither on the batch it was made in, nor on the rank count, nor on the
// device. Integer arithmetic only; no CUDA headers, so host code includes it too.
#include <cstdint>

#if defined(__CUDACC__)
#define AIM_KEYED_UNIFORM_FN __host__ __device__ __forceinline__
#else
#define AIM_KEYED_UNIFORM_FN inline
#endif

namespace aim::kernels {

/// splitmix64 (aim::splitmix64 calls this one).
AIM_KEYED_UNIFORM_FN uint64_t splitmix64_step(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/// 53 uniform bits n: the draw's uniform is n * 2^-53, in [0, 1).
AIM_KEYED_UNIFORM_FN uint64_t keyed_uniform_bits(uint64_t seed, int64_t sample, int64_t step) {
  const uint64_t h = splitmix64_step(
      splitmix64_step(seed ^ 0xa17c0de5ull) ^
      splitmix64_step(static_cast<uint64_t>(sample) * 0x10001ull +
                      (static_cast<uint64_t>(step) << 40)));
  return h >> 11;
}

/// The uniform of 53 bits: bits * 2^-53 (exact in double).
AIM_KEYED_UNIFORM_FN double keyed_uniform_from_bits(uint64_t bits) {
  return static_cast<double>(bits) * 0x1.0p-53;
}

/// The draw's uniform in [0, 1).
AIM_KEYED_UNIFORM_FN double keyed_uniform(uint64_t seed, int64_t sample, int64_t step) {
  return keyed_uniform_from_bits(keyed_uniform_bits(seed, sample, step));
}

}  // namespace aim::kernels

#undef AIM_KEYED_UNIFORM_FN
