// The Mamba1 selective-scan CUDA kernels (scan forward and backward, one-token state update)
// against the reference on fp64 CPU copies of the same values, at the AiM Mamba1 mixer shapes
// (d_inner 1536 / 2048, d_state 16, L = 257, the mixer's channel-last slices) and at edges:
// batch 1, L = 1, L around the kept-chunk length (64) and not a multiple of the tiles, d_state
// 1 / 16 / 37 / 64 / 128 / 129 / 256, E up to 4096, each optional input on and off. Outputs and
// workspaces are poisoned with NaN before every launch; the backward runs twice and must give
// the same bits (no atomics); teacher-forced state-update steps must give the scan's outputs.
//
// A Mamba1 mixer gives the same outputs, gradients and sampling steps with the kernels on and off.
//
// Tolerances. Both sides compute in fp32 (the reference casts to fp32 inside), so they differ
// by summation order and the fast exp2/sigmoid (about 2 ulp):
//   y: test::tolerance_for(dtype), elementwise (fp32 6e-4 / 2e-3; bf16 3e-2 / 5e-2, y being
//      rounded to bf16, 2^-9 relative);
//   fp32 results (last_state, dA, dD, ddelta_bias, dinitial_state, and every gradient with
//      fp32 inputs): max|diff| / max|ref| <= 2e-4, room for fp32 sums over 257 steps and up
//      to 4096 channels;
//   gradients rounded to bf16 (du, ddelta, dz, dB, dC with bf16 inputs): 1e-2, the rounding
//      being 2^-9 of each element.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "aim/core/config.h"
#include "aim/model/mamba1.h"
#include "aim/ops/dispatch.h"
#include "aim/ops/selective_scan.h"
#include "ops/selective_scan_cases.h"
#include "test_util.h"

namespace aim {
namespace {

using test::case_name;
using test::dtype_name;
using test::Inputs;
using test::make_inputs;
using test::scan_cases;
using test::ScanCase;
using test::step_cases;

class SelectiveScanCudaTest : public test::CudaKernelTest<::testing::TestWithParam<ScanCase>> {};

// ---------------------------------------------------------------- scan, forward and backward

using SelectiveScanCuda = SelectiveScanCudaTest;

TEST_P(SelectiveScanCuda, ForwardAndBackwardMatchTheReference) {
  test::check_selective_scan(GetParam(), torch::kCUDA, ops::selective_scan);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SelectiveScanCuda, ::testing::ValuesIn(scan_cases()),
                         [](const auto& info) { return case_name(info.param); });

// ---------------------------------------------------------------- state update

using SelectiveScanCudaStep = SelectiveScanCudaTest;

// Feeding the sequence one token at a time through the state update gives the scan's y and
// last state; one step also matches the reference's step.
TEST_P(SelectiveScanCudaStep, TeacherForcedStepsEqualTheScan) {
  test::check_selective_steps(GetParam(), torch::kCUDA, ops::selective_scan,
                              ops::selective_state_update);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SelectiveScanCudaStep, ::testing::ValuesIn(step_cases()),
                         [](const auto& info) { return case_name(info.param); });

// ---------------------------------------------------------------- dispatch

class SelectiveScanCudaDispatch : public test::CudaKernelTest<::testing::Test> {};

// Without gradients to track the forward keeps no chunk states, and gives the same bits; the
// switch selects the reference on CUDA, which agrees; unsupported dtypes fall back to it.
TEST_F(SelectiveScanCudaDispatch, NoGradSwitchAndFallback) {
  torch::manual_seed(5);
  const auto dev = torch::Device(torch::kCUDA);
  const ScanCase c{2, 96, 257, 16, true, true, true, true, true, false, true, torch::kBFloat16};
  Inputs in = make_inputs(c, dev);
  const auto tracked = ops::selective_scan(in.u, in.delta, in.A.clone().requires_grad_(true),
                                           in.Bm, in.Cm, in.D, in.z, in.bias, true, in.init,
                                           true);
  test::sscan_expect_kernel_ran(tracked.y, "tracked");
  ops::SelectiveScanResult untracked;
  {
    torch::NoGradGuard no_grad;
    untracked = ops::selective_scan(in.u, in.delta, in.A, in.Bm, in.Cm, in.D, in.z, in.bias,
                                    true, in.init, true);
  }
  EXPECT_TRUE(torch::equal(tracked.y.detach(), untracked.y));
  EXPECT_TRUE(torch::equal(tracked.last_state.detach(), untracked.last_state));
  const auto no_last = ops::selective_scan(in.u, in.delta, in.A, in.Bm, in.Cm, in.D, in.z,
                                           in.bias, true, in.init, false);
  EXPECT_FALSE(no_last.last_state.defined());

  ops::set_cuda_kernels(false);
  const auto reference = ops::selective_scan(in.u, in.delta, in.A, in.Bm, in.Cm, in.D, in.z,
                                             in.bias, true, in.init, true);
  ops::set_cuda_kernels(true);
  test::sscan_close_elementwise("AIM_CUDA_KERNELS=0 y", untracked.y, reference.y);
  test::sscan_close_relative("AIM_CUDA_KERNELS=0 last_state", untracked.last_state,
                             reference.last_state);

  const auto u16 = in.u.to(torch::kHalf).requires_grad_(true);
  const auto half = ops::selective_scan(u16, in.delta.to(torch::kHalf), in.A,
                                        in.Bm.to(torch::kHalf), in.Cm.to(torch::kHalf), in.D,
                                        in.z.to(torch::kHalf), in.bias, true, in.init, false);
  ASSERT_TRUE(half.y.grad_fn() != nullptr);
  EXPECT_EQ(half.y.grad_fn()->name().find("SelectiveScan"), std::string::npos)
      << "fp16 is not a kernel dtype: the reference should have run";
}

// ---------------------------------------------------------------- the Mamba1 mixer

struct MixerCase {
  int64_t d_model;
  torch::ScalarType dtype;
};

class SelectiveScanCudaMixer : public ::testing::TestWithParam<MixerCase> {
 protected:
  void SetUp() override {
#ifndef AIM_WITH_CUDA
    GTEST_SKIP() << "built without CUDA";
#endif
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible: CUDA mixer test skipped";
  }
  void TearDown() override { ops::set_cuda_kernels(true); }
};

struct MixerRun {
  torch::Tensor out, steps;
  std::vector<std::pair<std::string, torch::Tensor>> grads;  ///< "u" then parameters
};

// Training forward + backward, then a prefill of the first half and steps through the rest.
MixerRun run_mixer(Mamba1Mixer& mixer, const torch::Tensor& u0, const torch::Tensor& g,
                   bool kernels) {
  ops::set_cuda_kernels(kernels);
  mixer->zero_grad();
  MixerRun r;
  auto u = u0.detach().clone().requires_grad_(true);
  auto out = mixer->forward(u);
  out.backward(g);
  r.out = out.detach();
  r.grads.emplace_back("u", u.grad());
  for (const auto& p : mixer->named_parameters()) {
    r.grads.emplace_back(p.key(), p.value().grad().clone());
  }
  torch::NoGradGuard no_grad;
  const int64_t len = u0.size(1), half = len / 2;
  auto state = mixer->allocate_state(u0.size(0), u0.device(), u0.scalar_type());
  std::vector<torch::Tensor> outs{mixer->forward(u0.narrow(1, 0, half), &state)};
  for (int64_t t = half; t < len; ++t) outs.push_back(mixer->step(u0.select(1, t), state).unsqueeze(1));
  r.steps = torch::cat(outs, 1);
  return r;
}

TEST_P(SelectiveScanCudaMixer, KernelsOnEqualKernelsOff) {
  const auto c = GetParam();
  const auto tag = "D" + std::to_string(c.d_model) + "_" + dtype_name(c.dtype);
  torch::manual_seed(31);
  SsmConfig ssm;
  ssm.layer = "Mamba1";
  ssm.d_state = 16;
  Mamba1Mixer mixer(Mamba1MixerOptions(c.d_model, ssm, (c.d_model + 15) / 16));
  mixer->to(torch::kCUDA, c.dtype);
  const auto opts = torch::dtype(c.dtype).device(torch::kCUDA);
  const auto u = torch::randn({2, 257, c.d_model}, opts);
  const auto g = torch::randn({2, 257, c.d_model}, opts);

  const auto off = run_mixer(mixer, u, g, false);
  const auto on = run_mixer(mixer, u, g, true);
  // max|diff| / max|off|: whole mixers (projections, conv, scan) in the dtype.
  const double tol = c.dtype == torch::kBFloat16 ? 5e-2 : 2e-3;
  test::expect_close(tag + " out", on.out, off.out, tol);
  test::expect_close(tag + " prefill + steps", on.steps, off.steps, tol);
  test::expect_close(tag + " steps vs training forward", on.steps, on.out, tol);
  ASSERT_EQ(on.grads.size(), off.grads.size());
  for (size_t i = 0; i < on.grads.size(); ++i) {
    ASSERT_TRUE(on.grads[i].second.defined()) << tag << " " << on.grads[i].first;
    test::expect_close(tag + " d" + on.grads[i].first, on.grads[i].second, off.grads[i].second,
                       tol);
  }
}

INSTANTIATE_TEST_SUITE_P(Mixers, SelectiveScanCudaMixer,
                         ::testing::Values(MixerCase{768, torch::kFloat},
                                           MixerCase{768, torch::kBFloat16},
                                           MixerCase{1024, torch::kBFloat16}),
                         [](const auto& info) {
                           return "D" + std::to_string(info.param.d_model) + "_" +
                                  dtype_name(info.param.dtype);
                         });

}  // namespace
}  // namespace aim
