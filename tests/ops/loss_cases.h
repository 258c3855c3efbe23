#pragma once
// The fused lm_head + cross-entropy kernel test cases and check, shared by the CUDA kernel test
// and the emulated-kernel test.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "aim/ops/loss.h"
#include "test_util.h"

namespace aim::test {

struct XentCase {
  int64_t rows, dim, vocab, chunk_rows;
  torch::ScalarType dtype;
};

inline std::string case_name(const XentCase& c) {
  return "N" + std::to_string(c.rows) + "_V" + std::to_string(c.vocab) + "_chunk" +
         std::to_string(c.chunk_rows) + (c.dtype == torch::kBFloat16 ? "_bf16" : "_fp32");
}

/// The op under test: ops::linear_cross_entropy's signature.
using XentFn = std::function<torch::Tensor(const torch::Tensor& hidden, const torch::Tensor& weight,
                                           const torch::Tensor& targets, int64_t ignore_index,
                                           int64_t chunk_rows)>;

/// The kernel tests' check of one case: `loss_fn` (ops::linear_cross_entropy through dispatch,
/// or the emulated adapter) on inputs on `dev`, loss and gradients with a non-unit upstream
/// gradient and every 7th row ignored, against the reference in fp64 on the CPU; without
/// gradients (evaluation) the loss is the same.
inline void check_linear_cross_entropy(const XentCase& c, torch::Device dev,
                                       const XentFn& loss_fn) {
  torch::manual_seed(17 + c.chunk_rows);
  auto h = randn({c.rows, c.dim}, c.dtype, dev).requires_grad_(true);
  auto w = randn({c.vocab, c.dim}, torch::kFloat, dev, 0.2).requires_grad_(true);
  auto t = torch::randint(0, c.vocab, {c.rows}, torch::dtype(torch::kLong).device(dev));
  t.index_put_({torch::indexing::Slice(3, c.rows, 7)}, -100);  // every 7th row ignored

  auto loss = loss_fn(h, w, t, -100, c.chunk_rows);
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
  expect_close(tag + " loss", loss * upstream, loss_r, tol);
  expect_close(tag + " dhidden", g[0], gr[0], tol);
  expect_close(tag + " dweight", g[1], gr[1], tol);
  EXPECT_EQ(g[0].scalar_type(), c.dtype);
  EXPECT_EQ(g[1].scalar_type(), torch::kFloat);

  // Without gradients (evaluation) the loss is the same.
  torch::NoGradGuard no_grad;
  auto eval_loss = loss_fn(h, w, t, -100, c.chunk_rows);
  expect_close(tag + " loss without grad", eval_loss, loss, 1e-6);
}

/// AiM's vocabulary (16384) with one chunk and several, one row with an odd vocabulary, a
/// vocabulary below the block size.
inline std::vector<XentCase> xent_cases() {
  return {XentCase{300, 128, 16384, 0, torch::kFloat},
          XentCase{300, 128, 16384, 64, torch::kFloat},
          XentCase{300, 128, 16384, 0, torch::kBFloat16},
          XentCase{300, 128, 16384, 64, torch::kBFloat16},
          XentCase{1, 64, 1000, 0, torch::kFloat},
          XentCase{257, 96, 333, 100, torch::kBFloat16}};
}

}  // namespace aim::test
