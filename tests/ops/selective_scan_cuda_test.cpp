// The Mamba1 selective-scan CUDA kernels (scan forward and backward, one-token state update)
// against the reference on fp64 CPU copies of the same values, at the AiM Mamba1 mixer shapes
// (d_inner 1536 / 2048, d_state 16, L = 257, the mixer's channel-last slices) and at edges:
// batch 1, L = 1, L around the kept-chunk length (64) and not a multiple of the tiles, d_state
// 1 / 16 / 37 / 64 / 128 / 129 / 256, E up to 4096, each optional input on and off. Outputs and
// workspaces are poisoned with NaN before every launch; the backward runs twice and must give
// the same bits (no atomics); teacher-forced state-update steps must give the scan's outputs.
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

// The bf16 state of decoding (aim sample --ssm-state bf16) steps as the reference does.
TEST_P(SelectiveScanCudaStep, Bf16StateStepsEqualTheReferenceSteps) {
  test::check_selective_steps_bf16_state(GetParam(), torch::kCUDA, ops::selective_state_update);
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

}  // namespace
}  // namespace aim
