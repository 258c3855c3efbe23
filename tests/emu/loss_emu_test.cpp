// The softmax cross-entropy kernel of the fused lm_head + loss (kernels/cross_entropy.cu) run by
// the CPU emulator through the CUDA adapter's own code (src/ops/loss_cuda.cpp: chunks of logits,
// the kernel's in-place gradients, the products), with the GPU test's check and cases
// (test::check_linear_cross_entropy, test::xent_cases).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "emu_test_util.h"
#include "ops/loss_cases.h"
#include "ops/loss_cuda.h"

namespace aim {
namespace {

class LinearCrossEntropyEmu
    : public test::emu::EmulatedKernelTest<::testing::TestWithParam<test::XentCase>> {};

TEST_P(LinearCrossEntropyEmu, LossAndGradientsMatchTheReference) {
  test::check_linear_cross_entropy(
      GetParam(), torch::kCPU,
      [](const torch::Tensor& h, const torch::Tensor& w, const torch::Tensor& t, int64_t ignore,
         int64_t chunk_rows) {
        EXPECT_TRUE(ops::cuda_emu::linear_cross_entropy_supported(h, w, t));
        return ops::cuda_emu::linear_cross_entropy(h, w, t, ignore, chunk_rows);
      });
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinearCrossEntropyEmu, ::testing::ValuesIn(test::xent_cases()),
                         [](const auto& info) { return test::case_name(info.param); });

}  // namespace
}  // namespace aim
