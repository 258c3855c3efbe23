// The fused lm_head + cross-entropy: the reference equals the model's former formula (CPU,
// always), and the chunked CUDA path matches the reference in fp64 for the loss and both
// gradients, with several chunks, a partial last chunk and ignored rows.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "aim/core/autocast.h"
#include "aim/ops/dispatch.h"
#include "aim/ops/loss.h"
#include "ops/loss_cases.h"
#include "test_util.h"

namespace aim {
namespace {

TEST(LinearCrossEntropy, ReferenceIsLinearThenCrossEntropy) {
  torch::manual_seed(5);
  auto h = torch::randn({40, 16}, torch::requires_grad());
  auto w = torch::randn({50, 16}, torch::requires_grad());
  auto t = torch::randint(0, 50, {40}, torch::kLong);
  t.index_put_({torch::indexing::Slice(0, 5)}, -100);
  auto loss = ops::linear_cross_entropy(h, w, t);
  auto expect = torch::nn::functional::cross_entropy(torch::linear(h, w), t);
  EXPECT_EQ(loss.item<float>(), expect.item<float>());
  auto g = torch::autograd::grad({loss}, {h, w});
  auto ge = torch::autograd::grad({expect}, {h, w});
  EXPECT_TRUE(torch::equal(g[0], ge[0]));
  EXPECT_TRUE(torch::equal(g[1], ge[1]));
  // Ignored rows get no gradient.
  EXPECT_EQ(g[0].narrow(0, 0, 5).abs().max().item<float>(), 0.0f);
  EXPECT_THROW(ops::linear_cross_entropy(h, w, t.to(torch::kInt)), c10::Error);
  EXPECT_THROW(ops::linear_cross_entropy(h, w.narrow(1, 0, 8), t), c10::Error);
}

// Under autocast (the trainer's bf16 mode) the product is autocast's: fp32 hidden and weight
// are multiplied in bf16, exactly the op on the bf16 operands outside autocast, and gradients
// flow back to the fp32 tensors. Every path of the op sees the cast operands with autocast off,
// so the CUDA path's chunked products keep the dtype its kernel reads.
TEST(LinearCrossEntropy, UnderAutocastMultipliesInAutocastsDtype) {
  torch::manual_seed(6);
  auto h = torch::randn({40, 16}, torch::requires_grad());
  auto w = torch::randn({50, 16}, torch::requires_grad());
  auto t = torch::randint(0, 50, {40}, torch::kLong);
  torch::Tensor loss;
  {
    AutocastScope autocast(true, c10::DeviceType::CPU);
    loss = ops::linear_cross_entropy(h, w, t);
  }
  const auto expect = ops::linear_cross_entropy(h.to(torch::kBFloat16), w.to(torch::kBFloat16), t);
  EXPECT_EQ(loss.scalar_type(), torch::kFloat);
  EXPECT_EQ(loss.item<float>(), expect.item<float>());
  auto g = torch::autograd::grad({loss}, {h, w});
  auto ge = torch::autograd::grad({expect}, {h, w});
  EXPECT_EQ(g[0].scalar_type(), torch::kFloat);
  EXPECT_EQ(g[1].scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(g[0], ge[0]));
  EXPECT_TRUE(torch::equal(g[1], ge[1]));
}

// (CudaKernelTest: outputs poisoned with NaN before the kernels write them.)
class LinearCrossEntropyCuda : public test::CudaKernelTest<::testing::TestWithParam<test::XentCase>> {};

TEST_P(LinearCrossEntropyCuda, LossAndGradientsMatchTheReference) {
  test::check_linear_cross_entropy(
      GetParam(), torch::kCUDA,
      [](const torch::Tensor& h, const torch::Tensor& w, const torch::Tensor& t, int64_t ignore,
         int64_t chunk_rows) { return ops::linear_cross_entropy(h, w, t, ignore, chunk_rows); });
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinearCrossEntropyCuda, ::testing::ValuesIn(test::xent_cases()),
                         [](const auto& info) { return test::case_name(info.param); });

}  // namespace
}  // namespace aim
