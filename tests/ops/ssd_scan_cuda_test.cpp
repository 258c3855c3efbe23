// The Mamba2 SSD scan CUDA kernels, forward (y, final state) and backward (x, dt, A, B, C, D,
// dt_bias), against the reference on fp64 CPU copies of the same values, at the AiM-B/L/XL/1B
// mixer shapes (L = 257, x/B/C/dt sliced from one in_proj-like output, as the mixer passes them)
// and at edge shapes: batch 1, L = 1, L around the kernels' chunk of 32, ngroups 2 and 4,
// d_state 16 / 40 (padded to 48) / 64 / 256, headdim 32 / 96 / 128 (two P tiles), D per head,
// per channel or none, no dt_bias, no softplus, an initial state. Outputs are poisoned with NaN
// before every launch; the backward runs twice and must give the same bits (no atomics).
//
// Tolerances. The final state and dx: test::tolerance_for(input dtype), elementwise; y: the same
// in fp32, max|a - b| / max|b| <= 1e-2 in bf16 (test::expect_y_close says why). The
// gradients that are sums over positions, heads or P (dt, A, B, C, D, dt_bias): max|a - b| /
// max|b| <= 1e-3 for fp32 (fp32 math with fast-math exp over up to 257 steps; ~1e-6 seen in an
// emulation) and 3e-2 for bf16, where the kernels round the products' computed operands (decay
// matrices, scaled x / dy, S, dS) to bf16 like the inputs, 2^-9 relative each (~6e-3 seen).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "aim/ops/dispatch.h"
#include "aim/ops/ssd_scan.h"
#include "ops/ssd_cases.h"
#include "ops/ssd_step_cases.h"
#include "test_util.h"
#ifdef AIM_WITH_CUDA
#include "ops/ssd_scan_cuda.h"
#endif

namespace aim {
namespace {

using test::DMode;
using test::SsdCase;
using test::case_name;
using test::make_inputs;
using test::ssd_cases;

class SsdScanCuda : public test::CudaKernelTest<::testing::TestWithParam<SsdCase>> {};

TEST_P(SsdScanCuda, ForwardAndBackwardMatchTheReference) {
  test::check_ssd_scan(GetParam(), torch::kCUDA,
                       [](const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                          const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D,
                          const torch::Tensor& dt_bias, bool softplus, const torch::Tensor& init,
                          bool return_final) {
                         return ops::ssd_scan(x, dt, A, Bm, Cm, D, dt_bias, softplus,
                                              /*chunk_size=*/256, init, return_final);
                       });
}

INSTANTIATE_TEST_SUITE_P(Shapes, SsdScanCuda, ::testing::ValuesIn(ssd_cases()),
                         [](const auto& info) { return case_name(info.param); });

// The kernels run by default on CUDA and the switch turns them off; both agree through the
// public op on the same device, with and without the final state.
TEST(SsdScanCudaDispatch, SwitchSelectsTheReferenceOnCuda) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible";
  torch::manual_seed(5);
  const SsdCase c{2, 100, 4, 64, 1, 128, DMode::kHead, true, true, true, true, torch::kFloat};
  const auto in = make_inputs(c, torch::kCUDA);
  torch::NoGradGuard no_grad;
  ops::set_cuda_kernels(false);
  auto ref = ops::ssd_scan(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, in.dt_bias, true, 256, in.init, true);
  ops::set_cuda_kernels(true);
  auto ker = ops::ssd_scan(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, in.dt_bias, true, 256, in.init, true);
  auto ker_y = ops::ssd_scan(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, in.dt_bias, true, 256, in.init, false);
  test::expect_close("kernel vs reference y", ker.y, ref.y, 1e-4);
  test::expect_close("kernel vs reference final state", ker.final_state, ref.final_state, 1e-4);
  EXPECT_TRUE(torch::equal(ker_y.y, ker.y));
  EXPECT_FALSE(ker_y.final_state.defined());
}

// The kernels give no gradient for the initial state: asking for one is an error that says so.
TEST(SsdScanCudaDispatch, InitialStateRequiringGradIsRefused) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible";
  ops::set_cuda_kernels(true);
  const SsdCase c{1, 8, 2, 32, 1, 16, DMode::kHead, true, true, true, true, torch::kFloat};
  auto in = make_inputs(c, torch::kCUDA);
  auto init = in.init.clone().requires_grad_(true);
  try {
    ops::ssd_scan(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, in.dt_bias, true, 256, init, true);
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("initial_state"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------- fused one-token step

// ops::ssd_decode_step through dispatch on CUDA tensors (the fused kernel) against the three
// reference ops (test::check_ssd_decode_step; the full AiM-L mixer included).
class SsdDecodeStepCuda : public test::CudaKernelTest<::testing::TestWithParam<test::SsdStepCase>> {};

TEST_P(SsdDecodeStepCuda, FusedStepEqualsTheThreeReferenceOps) {
  test::check_ssd_decode_step(GetParam(), torch::kCUDA,
                              [](const torch::Tensor& zxbcdt, torch::Tensor& conv_state,
                                 torch::Tensor& ssm_state, const ops::SsdDecodeWeights& w,
                                 const torch::Tensor& arrivals) {
#ifdef AIM_WITH_CUDA
                                EXPECT_TRUE(ops::cuda::ssd_decode_step_supported(zxbcdt, conv_state,
                                                                                 ssm_state, w));
#endif
                                return ops::ssd_decode_step(zxbcdt, conv_state, ssm_state, w, arrivals);
                              });
}

INSTANTIATE_TEST_SUITE_P(Shapes, SsdDecodeStepCuda, ::testing::ValuesIn(test::ssd_step_cases()),
                         [](const auto& info) { return test::case_name(info.param); });

}  // namespace
}  // namespace aim
