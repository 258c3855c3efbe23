// The causal conv1d kernels (kernels/causal_conv1d.cu) run by the CPU emulator through the CUDA
// adapter's own code (src/ops/conv1d_cuda.cpp), with the GPU test's check
// (test::check_causal_conv1d), forward and backward against the reference in fp64: the layouts
// the mixers pass (channel-last slices of a projection, contiguous [B, C, L]), widths 2-6 and the
// edges (length 1, length below the width, channels not a multiple of a warp or of a block); and
// the one-token update of sampling against the reference's steps (test::conv_update_cases).
// Outputs are poisoned before every launch.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "emu_test_util.h"
#include "ops/conv1d_cases.h"
#include "ops/conv1d_cuda.h"

namespace aim {
namespace {

using test::ConvCase;

class CausalConv1dEmu : public test::emu::EmulatedKernelTest<::testing::TestWithParam<ConvCase>> {};

TEST_P(CausalConv1dEmu, ForwardAndBackwardMatchTheReference) {
  test::check_causal_conv1d(GetParam(), torch::kCPU,
                            [](const torch::Tensor& x, const torch::Tensor& w,
                               const torch::Tensor& b, bool silu) {
                              EXPECT_TRUE(ops::cuda_emu::causal_conv1d_supported(x, w, b));
                              return std::make_pair(ops::cuda_emu::causal_conv1d(x, w, b, silu),
                                                    torch::Tensor());
                            });
}

std::vector<ConvCase> cases() {
  // The GPU test's cases, with an eighth of AiM's 1792 and 2304 channels (the emulator runs
  // every thread): still more than one weight-gradient block, the last one partial.
  std::vector<ConvCase> out = test::conv_kernel_cases();
  for (auto& c : out) {
    if (c.channels > 1000) c.channels /= 8;
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, CausalConv1dEmu, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return test::case_name(info.param); });

// Channel-last inputs whose channels come in aligned groups of 4 run the vector kernels (blocks
// of 128 threads, 4 channels each); a slice off that alignment runs the one-channel kernels
// (256 threads), with the reference's result either way.
TEST(CausalConv1dEmuLaunch, AlignedChannelGroupsTakeTheVectorKernels) {
  for (const int64_t offset : {int64_t{20}, int64_t{21}}) {
    const auto wide = torch::randn({2, 40, 72 + 44}).to(torch::kBFloat16);
    const auto x = wide.narrow(2, offset, 72).transpose(1, 2);  // [B, C, L], channel stride 1
    const auto w = torch::randn({72, 1, 4}) * 0.5, b = torch::randn({72}) * 0.2;
    const auto out = ops::cuda_emu::causal_conv1d(x, w, b, true);
    EXPECT_EQ(::emu::last_launch_block().x, offset == 20 ? 128u : 256u) << "offset " << offset;
    const auto [want, unused] = ops::ref::causal_conv1d(x.to(torch::kDouble), w.to(torch::kDouble),
                                                        b.to(torch::kDouble), true, false);
    test::expect_close("offset " + std::to_string(offset), out, want, test::conv_tolerance(torch::kBFloat16));
  }
}

class CausalConv1dUpdateEmu
    : public test::emu::EmulatedKernelTest<::testing::TestWithParam<test::ConvUpdateCase>> {};

TEST_P(CausalConv1dUpdateEmu, StepsMatchTheReferenceSteps) {
  test::check_causal_conv1d_update(
      GetParam(), torch::kCPU,
      [](const torch::Tensor& x, torch::Tensor& state, const torch::Tensor& w,
         const torch::Tensor& b, bool silu) {
        EXPECT_TRUE(ops::cuda_emu::causal_conv1d_update_supported(x, state, w, b));
        return ops::cuda_emu::causal_conv1d_update(x, state, w, b, silu);
      });
}

INSTANTIATE_TEST_SUITE_P(Shapes, CausalConv1dUpdateEmu,
                         ::testing::ValuesIn(test::conv_update_cases()),
                         [](const auto& info) { return test::case_name(info.param); });

}  // namespace
}  // namespace aim
