// The causal conv1d kernels (kernels/causal_conv1d.cu) run by the CPU emulator through the CUDA
// adapter's own code (src/ops/conv1d_cuda.cpp), with the GPU test's check
// (test::check_causal_conv1d), forward and backward against the reference in fp64: the layouts
// the mixers pass (channel-last slices of a projection, contiguous [B, C, L]), widths 2-6 and the
// edges (length 1, length below the width, channels not a multiple of a warp or of a block).
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
  std::vector<ConvCase> out;
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    // The mixers' layouts at the training length, fewer channels than AiM's (the emulator runs
    // every thread): more than one weight-gradient block, a partial one.
    out.push_back({2, 200, 257, 4, true, true, true, dtype});
    out.push_back({2, 96, 257, 4, false, true, true, dtype});
    out.push_back({3, 70, 65, 2, true, false, true, dtype});
    out.push_back({3, 70, 65, 3, false, true, false, dtype});
    out.push_back({2, 33, 130, 6, true, true, true, dtype});  // width > 4: the 8-tap path
    out.push_back({1, 37, 1, 4, true, true, true, dtype});
    out.push_back({1, 37, 3, 4, false, true, true, dtype});
    out.push_back({1, 129, 200, 4, true, false, false, dtype});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, CausalConv1dEmu, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return test::case_name(info.param); });

}  // namespace
}  // namespace aim
