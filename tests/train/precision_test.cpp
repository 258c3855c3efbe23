// train.precision on the device a run trains on: bf16 and fp32 as written, auto from the device's
// bf16 hardware, and a warning where bf16 would run in software.
#include "aim/train/precision.h"

#include "test_util.h"

namespace aim::train {
namespace {

TEST(Precision, CpuFeaturesAgreeWithTheKernelsFlags) {
  const auto flags = test::proc_cpuinfo_flags();
  if (flags.empty()) GTEST_SKIP() << "no flags line in /proc/cpuinfo";
  std::printf("    this CPU: avx2 %d, avx512_bf16 %d, amx_bf16 %d\n", int(flags.count("avx2")),
              int(cpu_has_avx512_bf16()), int(cpu_has_amx_bf16()));
  EXPECT_EQ(cpu_has_avx512_bf16(), flags.count("avx512_bf16") == 1);
  EXPECT_EQ(cpu_has_amx_bf16(), flags.count("amx_bf16") == 1);
}

TEST(Precision, WrittenSettingsAreKept) {
  const torch::Device cpu(torch::kCPU);
  const Precision fp32 = resolve_precision("fp32", cpu);
  EXPECT_FALSE(fp32.bf16);
  EXPECT_EQ(fp32.summary, "fp32");
  EXPECT_TRUE(fp32.warning.empty());

  const Precision bf16 = resolve_precision("bf16", cpu);
  EXPECT_TRUE(bf16.bf16);
  EXPECT_EQ(bf16.summary, "bf16 autocast, fp32 master weights");
  // Warned exactly where ATen has no bf16 hardware path at all.
  const bool software = !cpu_has_avx512_bf16() && !cpu_has_amx_bf16();
  EXPECT_EQ(!bf16.warning.empty(), software) << bf16.warning;
  if (software) {
    EXPECT_NE(bf16.warning.find("train.precision"), std::string::npos) << bf16.warning;
    EXPECT_NE(bf16.warning.find("auto or fp32"), std::string::npos) << bf16.warning;
  }
}

TEST(Precision, AutoIsBf16OnlyWithAmxOnTheCpu) {
  const Precision p = resolve_precision("auto", torch::Device(torch::kCPU));
  std::printf("    auto on this CPU: %s\n", p.summary.c_str());
  EXPECT_EQ(p.bf16, cpu_has_amx_bf16());
  EXPECT_TRUE(p.warning.empty());
  EXPECT_EQ(p.summary.rfind(cpu_has_amx_bf16() ? "auto: bf16 autocast" : "auto: fp32 (CPU ", 0), 0u) << p.summary;
}

TEST(Precision, AutoOnCudaFollowsTheComputeCapability) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const Precision p = resolve_precision("auto", torch::Device(torch::kCUDA, 0));
  std::printf("    auto on cuda:0: %s\n", p.summary.c_str());
  EXPECT_NE(p.summary.find("CUDA compute capability"), std::string::npos) << p.summary;
  EXPECT_EQ(p.bf16, p.summary.find("below 8.0") == std::string::npos) << p.summary;
}

}  // namespace
}  // namespace aim::train
