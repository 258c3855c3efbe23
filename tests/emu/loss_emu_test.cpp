// The softmax cross-entropy kernel of the fused lm_head + loss (kernels/cross_entropy.cu) run by
// the CPU emulator through the CUDA adapter's own code (src/ops/loss_cuda.cpp: chunks of logits,
// the kernel's in-place gradients, the products), with the GPU test's check and cases
// (test::check_linear_cross_entropy, test::xent_cases).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

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

// A target outside [0, vocab) that is not ignore_index: the reference raises; the kernel, which
// cannot without a synchronisation, makes the loss NaN (it once counted the row with loss 0).
class LinearCrossEntropyEmuTargets : public test::emu::EmulatedKernelTest<> {};

TEST_F(LinearCrossEntropyEmuTargets, AnOutOfRangeTargetMakesTheLossNaN) {
  torch::manual_seed(3);
  const auto h = torch::randn({6, 16});
  const auto w = torch::randn({40, 16});
  const auto ok = torch::tensor({1, 2, 3, -100, 5, 39}, torch::kLong);
  EXPECT_TRUE(std::isfinite(ops::cuda_emu::linear_cross_entropy(h, w, ok, -100, 0).item<float>()));
  for (const int64_t bad : {int64_t{40}, int64_t{-1}}) {
    auto t = ok.clone();
    t[2] = bad;
    EXPECT_TRUE(std::isnan(ops::cuda_emu::linear_cross_entropy(h, w, t, -100, 0).item<float>())) << bad;
    EXPECT_THROW(ops::ref::linear_cross_entropy(h, w, t, -100), c10::Error) << bad;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinearCrossEntropyEmu, ::testing::ValuesIn(test::xent_cases()),
                         [](const auto& info) { return test::case_name(info.param); });

}  // namespace
}  // namespace aim
