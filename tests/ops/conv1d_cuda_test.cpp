// The causal conv1d CUDA kernels, forward and backward, against the reference in fp64 on the
// CPU, at the mixers' shapes (AiM-B/L conv widths, L = 257, channel-last input as the Mamba2
// mixer passes it) and at edge shapes. Outputs are poisoned with NaN before every launch.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "aim/ops/conv1d.h"
#include "aim/ops/dispatch.h"
#include "conv1d_cases.h"
#include "test_util.h"

namespace aim {
namespace {

using test::case_name;
using test::ConvCase;

// max|diff| / max|expected|: fp32 arithmetic (fast-math exp) vs fp64; bf16 outputs carry their
// rounding (2^-8 relative) on top.
double tolerance(torch::ScalarType dtype) { return dtype == torch::kBFloat16 ? 1e-2 : 2e-5; }

class CausalConv1dCuda : public test::CudaKernelTest<::testing::TestWithParam<ConvCase>> {};

TEST_P(CausalConv1dCuda, ForwardAndBackwardMatchTheReference) {
  const auto c = GetParam();
  torch::manual_seed(7 + c.width * 13 + c.len);
  const auto dev = torch::Device(torch::kCUDA);
  auto x = test::conv_input(c, dev).requires_grad_(true);
  auto w = test::randn({c.channels, 1, c.width}, torch::kFloat, dev, 0.5).requires_grad_(true);
  torch::Tensor b;
  if (c.bias) b = test::randn({c.channels}, torch::kFloat, dev, 0.2).requires_grad_(true);

  auto [out, state] = ops::causal_conv1d(x, w, b, c.silu, /*return_state=*/true);
  ASSERT_EQ(out.scalar_type(), c.dtype);
  auto g = test::randn(out.sizes(), c.dtype, dev);
  std::vector<torch::Tensor> inputs{x, w};
  if (c.bias) inputs.push_back(b);
  const auto grads = torch::autograd::grad({out}, inputs, {g});

  // Oracle: the reference on fp64 CPU copies of the same values.
  auto f64 = [](const torch::Tensor& t) {
    return t.detach().to(torch::kCPU, torch::kFloat64).contiguous().requires_grad_(true);
  };
  auto xr = f64(x), wr = f64(w);
  torch::Tensor br;
  if (c.bias) br = f64(b);
  auto [out_r, state_r] = ops::ref::causal_conv1d(xr, wr, br, c.silu, true);
  std::vector<torch::Tensor> inputs_r{xr, wr};
  if (c.bias) inputs_r.push_back(br);
  const auto grads_r =
      torch::autograd::grad({out_r}, inputs_r, {g.detach().to(torch::kCPU, torch::kFloat64)});

  const double tol = tolerance(c.dtype);
  const auto tag = case_name(c);
  test::expect_close(tag + " out", out, out_r, tol);
  test::expect_close(tag + " state", state, state_r, 1e-12);
  test::expect_close(tag + " dx", grads[0], grads_r[0], tol);
  test::expect_close(tag + " dweight", grads[1], grads_r[1], tol);
  EXPECT_EQ(grads[1].sizes(), w.sizes());
  if (c.bias) test::expect_close(tag + " dbias", grads[2], grads_r[2], tol);
  if (c.channel_last && c.len > 1) {
    EXPECT_EQ(out.stride(1), 1) << "channel-last input, channel-last output";
  }
}

std::vector<ConvCase> cases() {
  std::vector<ConvCase> out;
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    // AiM-B and AiM-L Mamba2 conv widths (d_inner + 2 * d_state), the training length.
    out.push_back({2, 1792, 257, 4, true, true, true, dtype});
    out.push_back({2, 2304, 257, 4, true, true, true, dtype});
    // Mamba1 layout (contiguous [B, C, L]) and the other widths.
    out.push_back({2, 96, 257, 4, false, true, true, dtype});
    out.push_back({3, 70, 65, 2, true, false, true, dtype});
    out.push_back({3, 70, 65, 3, false, true, false, dtype});
    out.push_back({2, 33, 130, 6, true, true, true, dtype});  // width > 4: the 8-tap path
    // Edges: batch 1, length 1, length below the width, channels not a multiple of a warp.
    out.push_back({1, 37, 1, 4, true, true, true, dtype});
    out.push_back({1, 37, 3, 4, false, true, true, dtype});
    out.push_back({1, 129, 200, 4, true, false, false, dtype});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, CausalConv1dCuda, ::testing::ValuesIn(cases()),
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
