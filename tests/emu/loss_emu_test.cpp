// The softmax cross-entropy kernel of the fused lm_head + loss (kernels/cross_entropy.cu) run by
// the CPU emulator through the CUDA adapter's own code (src/ops/loss_cuda.cpp: chunks of logits,
// the kernel's in-place gradients, the products), against ops::ref::linear_cross_entropy in
// fp64, with a non-unit upstream gradient and ignored rows, as the GPU test.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "aim/ops/loss.h"
#include "emu_test_util.h"
#include "ops/loss_cuda.h"

namespace aim {
namespace {

namespace emu_t = test::emu;

struct XentCase {
  int64_t rows, dim, vocab, chunk_rows;
  torch::ScalarType dtype;
};

std::string name(const XentCase& c) {
  return "N" + std::to_string(c.rows) + "_V" + std::to_string(c.vocab) + "_chunk" +
         std::to_string(c.chunk_rows) + "_" + emu_t::dtype_tag(c.dtype);
}

class LinearCrossEntropyEmu : public emu_t::EmulatedKernelTest<::testing::TestWithParam<XentCase>> {};

TEST_P(LinearCrossEntropyEmu, LossAndGradientsMatchTheReference) {
  const auto c = GetParam();
  torch::manual_seed(17 + c.chunk_rows);
  auto h = test::randn({c.rows, c.dim}, c.dtype).requires_grad_(true);
  auto w = test::randn({c.vocab, c.dim}, torch::kFloat, torch::kCPU, 0.2).requires_grad_(true);
  auto t = torch::randint(0, c.vocab, {c.rows}, torch::kLong);
  t.index_put_({torch::indexing::Slice(3, c.rows, 7)}, -100);  // every 7th row ignored

  ASSERT_TRUE(ops::cuda_emu::linear_cross_entropy_supported(h, w, t));
  const auto loss = ops::cuda_emu::linear_cross_entropy(h, w, t, -100, c.chunk_rows);
  ASSERT_EQ(loss.dim(), 0);
  ASSERT_EQ(loss.scalar_type(), torch::kFloat);
  const double upstream = 1.7;
  const auto g = torch::autograd::grad({loss}, {h, w}, {torch::full({}, upstream)});

  // Oracle in fp64 on the values the kernel path multiplies (weight rounded to hidden's dtype).
  auto hr = emu_t::f64(h), wr = emu_t::f64(w.detach().to(c.dtype));
  const auto loss_r = ops::ref::linear_cross_entropy(hr, wr, t, -100) * upstream;
  const auto gr = torch::autograd::grad({loss_r}, {hr, wr});
  // bf16: logits and their gradient are rounded to bf16 (2^-8) before the products.
  const double tol = c.dtype == torch::kBFloat16 ? 2e-2 : 1e-4;
  test::expect_close(name(c) + " loss", loss * upstream, loss_r, tol);
  test::expect_close(name(c) + " dhidden", g[0], gr[0], tol);
  test::expect_close(name(c) + " dweight", g[1], gr[1], tol);
  EXPECT_EQ(g[0].scalar_type(), c.dtype);
  EXPECT_EQ(g[1].scalar_type(), torch::kFloat);
  if (c.rows > 3) EXPECT_EQ(g[0][3].abs().max().item<float>(), 0.f) << "ignored row 3";

  torch::NoGradGuard no_grad;  // evaluation: the same loss
  test::expect_close(name(c) + " loss without grad",
                     ops::cuda_emu::linear_cross_entropy(h, w, t, -100, c.chunk_rows), loss, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, LinearCrossEntropyEmu,
    ::testing::Values(XentCase{40, 32, 16384, 0, torch::kFloat},   // AiM's vocabulary, one chunk
                      XentCase{40, 32, 16384, 16, torch::kBFloat16},
                      XentCase{1, 64, 1000, 0, torch::kFloat},        // one row, odd vocab
                      XentCase{57, 24, 333, 25, torch::kBFloat16}),   // vocab < block
    [](const auto& info) { return name(info.param); });

}  // namespace
}  // namespace aim
