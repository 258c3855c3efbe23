// Which instruction set the CPU kernels run on (see cpu_simd.h).
#include "ops/cpu_simd.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "aim/core/error.h"
#include "aim/ops/dispatch.h"

namespace aim::ops::cpu::simd {

namespace {

// -1: no override; otherwise the Isa's value.
std::atomic<int> g_override{-1};

Isa detect_best() {
#if AIM_X86_DISPATCH
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

/// AIM_CPU_ISA, if set: an instruction set at most as capable as the CPU's best.
Isa from_environment(Isa best) {
  const char* v = std::getenv("AIM_CPU_ISA");
  if (v == nullptr || *v == '\0') return best;
  const std::string s(v);
  Isa want;
  if (s == "avx512") want = Isa::kAvx512;
  else if (s == "avx2") want = Isa::kAvx2;
  else if (s == "baseline") want = Isa::kBaseline;
  else throw Error(str_cat("AIM_CPU_ISA: expected avx512, avx2 or baseline, found '", s, "'"));
  if (static_cast<int>(want) < static_cast<int>(best)) {
    throw Error(str_cat("AIM_CPU_ISA=", s, ": this CPU's best instruction set is ", isa_name(best)));
  }
  return want;
}

}  // namespace

Isa cpu_best_isa() {
  static const Isa best = detect_best();
  return best;
}

Isa cpu_isa() {
  const int o = g_override.load(std::memory_order_relaxed);
  if (o >= 0) return static_cast<Isa>(o);
  static const Isa chosen = from_environment(cpu_best_isa());
  return chosen;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kBaseline:
      break;
  }
  return "baseline";
}

void set_isa_override(Isa isa) {
  if (static_cast<int>(isa) < static_cast<int>(cpu_best_isa())) {
    throw Error(str_cat("CPU kernels: cannot run ", isa_name(isa), " code on this CPU (best: ",
                        isa_name(cpu_best_isa()), ")"));
  }
  g_override.store(static_cast<int>(isa), std::memory_order_relaxed);
}

void clear_isa_override() { g_override.store(-1, std::memory_order_relaxed); }

}  // namespace aim::ops::cpu::simd

namespace aim::ops {

const char* cpu_kernel_isa() { return cpu::simd::isa_name(cpu::simd::cpu_isa()); }

}  // namespace aim::ops
