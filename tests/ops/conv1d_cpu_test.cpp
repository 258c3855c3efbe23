// The causal conv1d CPU kernel, forward and backward, against the reference in fp64, on random
// inputs, on each instruction-set path the CPU has: the mixer's channel-last layout and contiguous
// [B, C, L], widths 2-6, with and without bias and SiLU, length 1 and lengths below the width,
// fp32 and bf16; bitwise the same at any thread count; chosen by default and turned off by the
// switch.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "aim/ops/conv1d.h"
#include "aim/ops/dispatch.h"
#include "conv1d_cases.h"
#include "ops/cpu_isas.h"
#include "test_util.h"

namespace aim {
namespace {

using test::case_name;
using test::ConvCase;

// max|diff| / max|expected|: fp32 arithmetic against fp64 (measured about 1e-7); bf16 outputs
// carry their rounding (2^-8 relative) on top.
double tolerance(torch::ScalarType dtype) { return dtype == torch::kBFloat16 ? 1e-2 : 2e-6; }

torch::Tensor make_x(const ConvCase& c) { return test::conv_input(c, torch::kCPU); }

class CausalConv1dCpu : public ::testing::TestWithParam<ConvCase> {};

TEST_P(CausalConv1dCpu, ForwardAndBackwardMatchTheReference) {
  const auto c = GetParam();
  torch::manual_seed(11 + c.width * 13 + c.len);
  auto x = make_x(c).requires_grad_(true);
  auto w = test::randn({c.channels, 1, c.width}, torch::kFloat, torch::kCPU, 0.5).requires_grad_(true);
  torch::Tensor b;
  if (c.bias) b = test::randn({c.channels}, torch::kFloat, torch::kCPU, 0.2).requires_grad_(true);

  const auto g = test::randn(x.sizes(), c.dtype);
  std::vector<torch::Tensor> inputs{x, w};
  if (c.bias) inputs.push_back(b);

  auto f64 = [](const torch::Tensor& t) { return t.detach().to(torch::kFloat64).contiguous().requires_grad_(true); };
  auto xr = f64(x), wr = f64(w);
  torch::Tensor br;
  if (c.bias) br = f64(b);
  auto [out_r, state_r] = ops::ref::causal_conv1d(xr, wr, br, c.silu, true);
  std::vector<torch::Tensor> inputs_r{xr, wr};
  if (c.bias) inputs_r.push_back(br);
  const auto grads_r = torch::autograd::grad({out_r}, inputs_r, {g.to(torch::kFloat64)});

  const double tol = tolerance(c.dtype);
  ops::set_cpu_kernels(true);
  for (const auto isa : test::runnable_cpu_isas()) {
    const test::ScopedCpuIsa scope(isa);
    const auto tag = case_name(c) + test::isa_tag(isa);
    auto [out, state] = ops::causal_conv1d(x, w, b, c.silu, /*return_state=*/true);
    ASSERT_EQ(out.scalar_type(), c.dtype);
    ASSERT_EQ(out.sizes(), x.sizes());
    const auto grads = torch::autograd::grad({out}, inputs, {g});
    test::expect_close(tag + " out", out, out_r, tol);
    test::expect_close(tag + " state", state, state_r, 1e-12);
    test::expect_close(tag + " dx", grads[0], grads_r[0], tol);
    EXPECT_EQ(grads[0].scalar_type(), c.dtype);
    test::expect_close(tag + " dweight", grads[1], grads_r[1], tol);
    EXPECT_EQ(grads[1].sizes(), w.sizes());
    if (c.bias) test::expect_close(tag + " dbias", grads[2], grads_r[2], tol);
  }
}

std::vector<ConvCase> cases() {
  std::vector<ConvCase> out;
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    // The demo model's Mamba2 conv (d_inner 512 + 2 x 32), its training length.
    out.push_back({2, 576, 65, 4, true, true, true, dtype});
    // Mamba1 layout (contiguous [B, C, L]) and the other widths.
    out.push_back({2, 96, 57, 4, false, true, true, dtype});
    out.push_back({3, 70, 65, 2, true, false, true, dtype});
    out.push_back({3, 70, 65, 3, false, true, false, dtype});
    out.push_back({2, 33, 30, 6, true, true, true, dtype});
    // Edges: batch 1, length 1, length below the width, channels not a multiple of 16.
    out.push_back({1, 37, 1, 4, true, true, true, dtype});
    out.push_back({1, 37, 3, 4, false, true, true, dtype});
    out.push_back({1, 129, 40, 4, true, false, false, dtype});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, CausalConv1dCpu, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return case_name(info.param); });

// One task per sequence, partials summed in a fixed order: the same bits at 1 and 2 threads.
TEST(CausalConv1dCpuKernel, SameBitsAtAnyThreadCount) {
  torch::manual_seed(5);
  const ConvCase c{5, 80, 33, 4, true, true, true, torch::kFloat};
  const auto x0 = make_x(c);
  const auto w0 = test::randn({c.channels, 1, c.width}, torch::kFloat, torch::kCPU, 0.5);
  const auto b0 = test::randn({c.channels}, torch::kFloat, torch::kCPU, 0.2);
  const auto g = test::randn({c.batch, c.channels, c.len});
  ops::set_cpu_kernels(true);
  auto run = [&](int threads) {
    const int before = at::get_num_threads();
    at::set_num_threads(threads);
    auto x = x0.detach().requires_grad_(true), w = w0.clone().requires_grad_(true);
    auto b = b0.clone().requires_grad_(true);
    auto out = ops::causal_conv1d(x, w, b, true).first;
    auto grads = torch::autograd::grad({out}, {x, w, b}, {g});
    at::set_num_threads(before);
    return std::vector<torch::Tensor>{out.detach(), grads[0], grads[1], grads[2]};
  };
  auto one = run(1), two = run(2);
  for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(torch::equal(one[i], two[i])) << "output " << i;
}

// The kernel is the default on the CPU; the switch selects the reference, and both agree.
TEST(CausalConv1dCpuKernel, SwitchSelectsTheReference) {
  torch::manual_seed(3);
  auto x = test::randn({2, 64, 50});
  auto w = test::randn({64, 4}, torch::kFloat, torch::kCPU, 0.5);
  auto b = test::randn({64}, torch::kFloat, torch::kCPU, 0.1);
  ops::set_cpu_kernels(false);
  auto ref_out = ops::causal_conv1d(x, w, b, true).first;
  ops::set_cpu_kernels(true);
  auto ker_out = ops::causal_conv1d(x, w, b, true).first;
  EXPECT_TRUE(ref_out.is_contiguous()) << "the reference's own layout";
  EXPECT_EQ(ker_out.stride(1), 1) << "the kernel returns channel-last rows";
  test::expect_close("kernel vs reference on the cpu", ker_out, ref_out, 2e-6);
}

}  // namespace
}  // namespace aim
