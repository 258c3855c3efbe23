#pragma once
// The CPU kernels' instruction-set paths this machine can run (src/ops/cpu_simd.h), for tests
// that check every one of them against the reference.
#include <string>
#include <vector>

#include "ops/cpu_simd.h"

namespace aim::test {

/// The paths this CPU can run, best first: avx512, avx2, baseline on an AVX-512 machine; avx2 and
/// baseline on an AVX2 one.
inline std::vector<ops::cpu::simd::Isa> runnable_cpu_isas() {
  using ops::cpu::simd::Isa;
  std::vector<Isa> out;
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2, Isa::kBaseline}) {
    if (static_cast<int>(isa) >= static_cast<int>(ops::cpu::simd::cpu_best_isa())) out.push_back(isa);
  }
  return out;
}

inline std::string isa_tag(ops::cpu::simd::Isa isa) {
  return std::string(" [") + ops::cpu::simd::isa_name(isa) + "]";
}

/// Runs the CPU kernels on `isa` while alive.
class ScopedCpuIsa {
 public:
  explicit ScopedCpuIsa(ops::cpu::simd::Isa isa) { ops::cpu::simd::set_isa_override(isa); }
  ~ScopedCpuIsa() { ops::cpu::simd::clear_isa_override(); }
  ScopedCpuIsa(const ScopedCpuIsa&) = delete;
  ScopedCpuIsa& operator=(const ScopedCpuIsa&) = delete;
};

}  // namespace aim::test
