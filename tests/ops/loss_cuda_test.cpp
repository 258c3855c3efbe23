// The fused lm_head + cross-entropy: the reference equals the model's former formula (CPU,
// always), and the chunked CUDA path matches the reference in fp64 for the loss and both
// gradients, with several chunks, a partial last chunk and ignored rows.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "aim/ops/dispatch.h"
#include "aim/ops/loss.h"
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

struct XentCase {
  int64_t rows, dim, vocab, chunk_rows;
  torch::ScalarType dtype;
};

class LinearCrossEntropyCuda : public ::testing::TestWithParam<XentCase> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible: CUDA kernel test skipped";
    ops::set_cuda_kernels(true);
  }
};

TEST_P(LinearCrossEntropyCuda, LossAndGradientsMatchTheReference) {
  const auto c = GetParam();
  torch::manual_seed(17 + c.chunk_rows);
  const auto dev = torch::Device(torch::kCUDA);
  auto h = test::randn({c.rows, c.dim}, c.dtype, dev).requires_grad_(true);
  auto w = test::randn({c.vocab, c.dim}, torch::kFloat, dev, 0.2).requires_grad_(true);
  auto t = torch::randint(0, c.vocab, {c.rows}, torch::dtype(torch::kLong).device(dev));
  t.index_put_({torch::indexing::Slice(3, c.rows, 7)}, -100);  // every 7th row ignored

  auto loss = ops::linear_cross_entropy(h, w, t, -100, c.chunk_rows);
  ASSERT_EQ(loss.dim(), 0);
  ASSERT_EQ(loss.scalar_type(), torch::kFloat);
  const double upstream = 1.7;  // a non-unit upstream gradient
  auto g = torch::autograd::grad({loss}, {h, w}, {torch::full({}, upstream, loss.options())});

  // Oracle in fp64 on the values the kernel path multiplies (weight rounded to hidden's dtype).
  auto hr = h.detach().to(torch::kCPU, torch::kFloat64).requires_grad_(true);
  auto wr = w.detach().to(c.dtype).to(torch::kCPU, torch::kFloat64).requires_grad_(true);
  auto loss_r = ops::ref::linear_cross_entropy(hr, wr, t.cpu(), -100) * upstream;
  auto gr = torch::autograd::grad({loss_r}, {hr, wr});

  // bf16: logits and their gradient are rounded to bf16 (2^-8) before the products.
  const double tol = c.dtype == torch::kBFloat16 ? 2e-2 : 1e-4;
  const auto tag = "N" + std::to_string(c.rows) + " V" + std::to_string(c.vocab) + " chunk " +
                   std::to_string(c.chunk_rows) + (c.dtype == torch::kBFloat16 ? " bf16" : " fp32");
  test::expect_close(tag + " loss", loss * upstream, loss_r, tol);
  test::expect_close(tag + " dhidden", g[0], gr[0], tol);
  test::expect_close(tag + " dweight", g[1], gr[1], tol);
  EXPECT_EQ(g[0].scalar_type(), c.dtype);
  EXPECT_EQ(g[1].scalar_type(), torch::kFloat);

  // Without gradients (evaluation) the loss is the same.
  torch::NoGradGuard no_grad;
  auto eval_loss = ops::linear_cross_entropy(h, w, t, -100, c.chunk_rows);
  test::expect_close(tag + " loss without grad", eval_loss, loss, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, LinearCrossEntropyCuda,
    ::testing::Values(XentCase{300, 128, 16384, 0, torch::kFloat},
                      XentCase{300, 128, 16384, 64, torch::kFloat},
                      XentCase{300, 128, 16384, 0, torch::kBFloat16},
                      XentCase{300, 128, 16384, 64, torch::kBFloat16},
                      XentCase{1, 64, 1000, 0, torch::kFloat},       // one row, odd vocab
                      XentCase{257, 96, 333, 100, torch::kBFloat16}),  // vocab < block
    [](const auto& info) {
      const auto& c = info.param;
      return "N" + std::to_string(c.rows) + "_V" + std::to_string(c.vocab) + "_chunk" +
             std::to_string(c.chunk_rows) + (c.dtype == torch::kBFloat16 ? "_bf16" : "_fp32");
    });

}  // namespace
}  // namespace aim
