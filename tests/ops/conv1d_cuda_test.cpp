// The causal conv1d CUDA kernels, forward and backward, against the reference in fp64 on the
// CPU, at the mixers' shapes (AiM-B/L conv widths, L = 257, channel-last input as the Mamba2
// mixer passes it) and at edge shapes; the one-token update against the reference's steps.
// Outputs are poisoned with NaN before every launch.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "aim/ops/conv1d.h"
#include "aim/ops/dispatch.h"
#include "conv1d_cases.h"
#include "test_util.h"
#ifdef AIM_WITH_CUDA
#include "ops/conv1d_cuda.h"
#endif

namespace aim {
namespace {

using test::case_name;
using test::ConvCase;

class CausalConv1dCuda : public test::CudaKernelTest<::testing::TestWithParam<ConvCase>> {};

TEST_P(CausalConv1dCuda, ForwardAndBackwardMatchTheReference) {
  test::check_causal_conv1d(GetParam(), torch::kCUDA,
                            [](const torch::Tensor& x, const torch::Tensor& w,
                               const torch::Tensor& b, bool silu) {
                              return ops::causal_conv1d(x, w, b, silu, /*return_state=*/true);
                            });
}


INSTANTIATE_TEST_SUITE_P(Shapes, CausalConv1dCuda, ::testing::ValuesIn(test::conv_kernel_cases()),
                         [](const auto& info) { return case_name(info.param); });

// The one-token update of sampling, through the public op (which must choose the kernel).
class CausalConv1dUpdateCuda
    : public test::CudaKernelTest<::testing::TestWithParam<test::ConvUpdateCase>> {};

TEST_P(CausalConv1dUpdateCuda, StepsMatchTheReferenceSteps) {
  test::check_causal_conv1d_update(
      GetParam(), torch::kCUDA,
      [](const torch::Tensor& x, torch::Tensor& state, const torch::Tensor& w,
         const torch::Tensor& b, bool silu) {
#ifdef AIM_WITH_CUDA
        EXPECT_TRUE(ops::cuda::causal_conv1d_update_supported(x, state, w, b));
#endif
        return ops::causal_conv1d_update(x, state, w, b, silu);
      });
}

INSTANTIATE_TEST_SUITE_P(Shapes, CausalConv1dUpdateCuda,
                         ::testing::ValuesIn(test::conv_update_cases()),
                         [](const auto& info) { return case_name(info.param); });

// The kernels are used by default on CUDA and the switch turns them off; the reference and the
// kernel agree through the public op on the same device.
TEST(CausalConv1dDispatch, SwitchSelectsTheReferenceOnCuda) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible";
  torch::manual_seed(3);
  auto x = test::randn({2, 64, 50}, torch::kFloat, torch::kCUDA);
  auto w = test::randn({64, 4}, torch::kFloat, torch::kCUDA, 0.5);
  auto b = test::randn({64}, torch::kFloat, torch::kCUDA, 0.1);
  ops::set_cuda_kernels(false);
  auto ref_out = ops::causal_conv1d(x, w, b, true).first;
  ops::set_cuda_kernels(true);
  auto ker_out = ops::causal_conv1d(x, w, b, true).first;
  test::expect_close("kernel vs reference on cuda", ker_out, ref_out, 2e-5);
}

}  // namespace
}  // namespace aim
