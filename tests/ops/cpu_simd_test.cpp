// The CPU kernels' instruction-set paths (src/ops/cpu_simd.h): the best one is what the CPU's
// flags say, a path the CPU lacks is refused with a message, and both 16-lane vector types add in
// the same order. Each kernel's own tests run it on every path this CPU has (ops/cpu_isas.h).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <vector>

#include "ops/cpu_isas.h"
#include "ops/cpu_simd.h"
#include "test_util.h"

namespace aim {
namespace {

using ops::cpu::simd::Isa;
namespace simd = ops::cpu::simd;

TEST(CpuIsa, BestIsWhatTheCpuFlagsSay) {
  const auto flags = test::proc_cpuinfo_flags();
  if (flags.empty()) GTEST_SKIP() << "no flags line in /proc/cpuinfo";
#if AIM_X86_DISPATCH
  const Isa expected = flags.count("avx512f")                            ? Isa::kAvx512
                       : flags.count("avx2") && flags.count("fma") ? Isa::kAvx2
                                                                         : Isa::kBaseline;
#else
  const Isa expected = Isa::kBaseline;
#endif
  std::printf("    this CPU's kernels: %s\n", simd::isa_name(simd::cpu_best_isa()));
  EXPECT_EQ(simd::isa_name(simd::cpu_best_isa()), std::string(simd::isa_name(expected)));
  EXPECT_EQ(test::runnable_cpu_isas().front(), simd::cpu_best_isa());
  EXPECT_EQ(test::runnable_cpu_isas().back(), Isa::kBaseline);
}

TEST(CpuIsa, OverrideSwitchesThePathAndRefusesWhatTheCpuLacks) {
  for (const auto isa : test::runnable_cpu_isas()) {
    const test::ScopedCpuIsa scope(isa);
    EXPECT_EQ(std::string(ops::cpu_kernel_isa()), simd::isa_name(isa));
  }
  EXPECT_EQ(simd::cpu_isa(), simd::cpu_best_isa());
  if (simd::cpu_best_isa() == Isa::kAvx512) GTEST_SKIP() << "this CPU runs every path";
  const auto msg = test::error_of([] { simd::set_isa_override(Isa::kAvx512); });
  EXPECT_NE(msg.find("cannot run avx512"), std::string::npos) << msg;
  EXPECT_NE(msg.find(std::string("best: ") + simd::isa_name(simd::cpu_best_isa())), std::string::npos) << msg;
  EXPECT_EQ(simd::cpu_isa(), simd::cpu_best_isa());
}

TEST(CpuIsa, BadEnvironmentValueIsAnErrorThatNamesIt) {
  const auto r = test::run_shell("AIM_CPU_ISA=avx3 " + test::aim_binary() + " --version");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("AIM_CPU_ISA: expected avx512, avx2 or baseline, found 'avx3'"), std::string::npos)
      << r.output;
  const auto ok = test::run_shell("AIM_CPU_ISA=baseline " + test::aim_binary() + " --version");
  EXPECT_EQ(ok.code, 0) << ok.output;
  EXPECT_NE(ok.output.find("CPU kernels baseline"), std::string::npos) << ok.output;
}

// The 16-lane types reduce in one fixed order, so a kernel's sums do not depend on which
// register width runs it: the same bits for hsum and dot (this file is compiled for the baseline,
// so neither path contracts a multiply and an add here).
TEST(CpuIsa, BothVectorTypesAddInTheSameOrder) {
  torch::manual_seed(3);
  // Magnitudes spread over 2^-20 .. 2^20, so that a different order would round differently.
  auto values = (torch::randn({4096}) * torch::pow(2.0, torch::randint(-20, 21, {4096}).to(torch::kFloat)));
  const auto u = values.contiguous(), v = torch::randn({4096}).contiguous();
  const float* up = u.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  int differ_from_serial = 0;
  for (int64_t off = 0; off + 16 <= 4096; off += 16) {
    const float a = simd::hsum(simd::loadu<simd::V16>(up + off));
    const float b = simd::hsum(simd::loadu<simd::V8x2>(up + off));
    const float c = simd::hsum(simd::loadu<simd::V4x4>(up + off));
    EXPECT_EQ(std::memcmp(&a, &b, sizeof a), 0) << "lanes at " << off << ": " << a << " vs " << b;
    EXPECT_EQ(std::memcmp(&a, &c, sizeof a), 0) << "lanes at " << off << ": " << a << " vs " << c;
    // The documented tree: lane i + 8 into lane i, then i + 4, i + 2, i + 1.
    float t[16];
    std::memcpy(t, up + off, sizeof t);
    for (int w = 8; w >= 1; w /= 2)
      for (int i = 0; i < w; ++i) t[i] += t[i + w];
    EXPECT_EQ(std::memcmp(&a, &t[0], sizeof a), 0) << "lanes at " << off;
    float serial = 0.f;
    for (int i = 0; i < 16; ++i) serial += up[off + i];
    differ_from_serial += serial != a;
  }
  // The check has teeth: a left-to-right sum of these lanes rounds differently from the tree.
  EXPECT_GT(differ_from_serial, 0);
  for (int64_t n : {1, 15, 16, 37, 100, 4096}) {
    const float a = simd::dot<simd::V16>(up, vp, n);
    const float b = simd::dot<simd::V8x2>(up, vp, n);
    const float c = simd::dot<simd::V4x4>(up, vp, n);
    EXPECT_EQ(std::memcmp(&a, &b, sizeof a), 0) << "dot over " << n << ": " << a << " vs " << b;
    EXPECT_EQ(std::memcmp(&a, &c, sizeof a), 0) << "dot over " << n << ": " << a << " vs " << c;
  }
}

}  // namespace
}  // namespace aim
