// The causal conv1d kernels (kernels/causal_conv1d.cu) run by the CPU emulator through the CUDA
// adapter's own code (src/ops/conv1d_cuda.cpp), forward and backward, against the reference in
// fp64: the layouts the mixers pass (channel-last slices of a projection, contiguous [B, C, L]),
// widths 2-6 and the edges (length 1, length below the width, channels not a multiple of a warp
// or of a block). Outputs are poisoned before every launch.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "aim/ops/conv1d.h"
#include "emu_test_util.h"
#include "ops/conv1d_cases.h"
#include "ops/conv1d_cuda.h"

namespace aim {
namespace {

using test::ConvCase;
namespace emu_t = test::emu;

// max|diff| / max|expected|, as the GPU test: fp32 arithmetic vs fp64; bf16 outputs carry
// their rounding (2^-8 relative) on top.
double tolerance(torch::ScalarType dtype) { return dtype == torch::kBFloat16 ? 1e-2 : 2e-5; }

class CausalConv1dEmu : public emu_t::EmulatedKernelTest<::testing::TestWithParam<ConvCase>> {};

TEST_P(CausalConv1dEmu, ForwardAndBackwardMatchTheReference) {
  const auto c = GetParam();
  torch::manual_seed(11 + c.width * 7 + c.len);
  auto x = test::conv_input(c, torch::kCPU).requires_grad_(true);
  auto w = test::randn({c.channels, 1, c.width}, torch::kFloat, torch::kCPU, 0.5).requires_grad_(true);
  torch::Tensor b;
  if (c.bias) b = test::randn({c.channels}, torch::kFloat, torch::kCPU, 0.2).requires_grad_(true);

  ASSERT_TRUE(ops::cuda_emu::causal_conv1d_supported(x, w, b));
  const auto out = ops::cuda_emu::causal_conv1d(x, w, b, c.silu);
  ASSERT_EQ(out.scalar_type(), c.dtype);
  if (c.channel_last && c.len > 1) EXPECT_EQ(out.stride(1), 1) << "channel-last in, channel-last out";
  const auto g = test::randn(out.sizes(), c.dtype);
  std::vector<torch::Tensor> inputs{x, w};
  if (c.bias) inputs.push_back(b);
  const auto grads = torch::autograd::grad({out}, inputs, {g});

  std::vector<torch::Tensor> inputs_r;
  for (const auto& t : inputs) inputs_r.push_back(emu_t::f64(t));
  const auto out_r =
      ops::ref::causal_conv1d(inputs_r[0], inputs_r[1], c.bias ? inputs_r[2] : torch::Tensor(),
                              c.silu, false).first;
  const auto grads_r = torch::autograd::grad({out_r}, inputs_r, {emu_t::f64(g, false)});

  const double tol = tolerance(c.dtype);
  const auto tag = test::case_name(c);
  test::expect_close(tag + " out", out, out_r, tol);
  test::expect_close(tag + " dx", grads[0], grads_r[0], tol);
  test::expect_close(tag + " dweight", grads[1], grads_r[1], tol);
  EXPECT_EQ(grads[1].sizes(), w.sizes());
  if (c.bias) test::expect_close(tag + " dbias", grads[2], grads_r[2], tol);
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
