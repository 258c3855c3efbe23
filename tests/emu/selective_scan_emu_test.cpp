// The Mamba1 selective-scan kernels (kernels/selective_scan_*.cuh) run by the CPU emulator
// through the CUDA adapter's own code (src/ops/selective_scan_cuda.cpp), with the GPU test's
// checks (test::check_selective_scan, test::check_selective_steps): the scan forward and
// backward against the reference in fp64, and the one-token update fed the sequence token by
// token against the scan, and from a bf16 state against the reference's steps. Cases: the GPU test's edges (L = 1, one kept chunk exactly and one
// step past it, E not a multiple of the block's channels, d_state 7 / 64 / 200), the AiM Mamba1
// layout (channel-last slices, d_state 16, L = 257) with fewer channels, every optional input
// off, d_state 129 and 256.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "aim/ops/selective_scan.h"
#include "emu_test_util.h"
#include "ops/selective_scan_cases.h"
#include "ops/selective_scan_cuda.h"

namespace aim {
namespace {

using test::ScanCase;
namespace emu_t = test::emu;

class SelectiveScanEmu : public emu_t::EmulatedKernelTest<::testing::TestWithParam<ScanCase>> {};

TEST_P(SelectiveScanEmu, ForwardAndBackwardMatchTheReference) {
  test::check_selective_scan(
      GetParam(), torch::kCPU,
      [](const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
         const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D,
         const torch::Tensor& z, const torch::Tensor& bias, bool softplus,
         const torch::Tensor& init, bool return_last) {
        EXPECT_TRUE(ops::cuda_emu::selective_scan_supported(u, delta, A, Bm, Cm, D, z, bias, init));
        return ops::cuda_emu::selective_scan(u, delta, A, Bm, Cm, D, z, bias, softplus, init,
                                             return_last);
      });
}

std::vector<ScanCase> scan_cases() {
  std::vector<ScanCase> out;
  for (const auto& c : test::scan_cases()) {
    if (c.edge) out.push_back(c);
  }
  for (auto dt : {torch::kFloat, torch::kBFloat16}) {
    out.push_back({2, 72, 257, 16, true, true, true, true, false, true, true, dt});
    out.push_back({1, 64, 100, 16, false, false, false, false, false, false, false, dt});
    out.push_back({2, 24, 70, 129, true, true, true, true, true, true, false, dt});
    out.push_back({1, 8, 70, 256, true, true, true, true, true, true, false, dt});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, SelectiveScanEmu, ::testing::ValuesIn(scan_cases()),
                         [](const auto& info) { return test::case_name(info.param); });

class SelectiveStateUpdateEmu
    : public emu_t::EmulatedKernelTest<::testing::TestWithParam<ScanCase>> {};

TEST_P(SelectiveStateUpdateEmu, TeacherForcedStepsEqualTheScan) {
  test::check_selective_steps(GetParam(), torch::kCPU, ops::cuda_emu::selective_scan,
                              ops::cuda_emu::selective_state_update);
}

TEST_P(SelectiveStateUpdateEmu, Bf16StateStepsEqualTheReferenceSteps) {
  test::check_selective_steps_bf16_state(
      GetParam(), torch::kCPU,
      [](torch::Tensor& state, const torch::Tensor& u, const torch::Tensor& delta,
         const torch::Tensor& A, const torch::Tensor& Bm, const torch::Tensor& Cm,
         const torch::Tensor& D, const torch::Tensor& z, const torch::Tensor& bias, bool softplus) {
        EXPECT_TRUE(ops::cuda_emu::selective_state_update_supported(state, u, delta, A, Bm, Cm, D, z, bias));
        return ops::cuda_emu::selective_state_update(state, u, delta, A, Bm, Cm, D, z, bias, softplus);
      });
}

std::vector<ScanCase> step_cases() {
  std::vector<ScanCase> out;
  for (auto dt : {torch::kFloat, torch::kBFloat16}) {
    out.push_back({2, 72, 20, 16, true, true, true, true, false, false, true, dt});
    out.push_back({3, 40, 12, 37, false, false, false, false, true, false, true, dt});
    out.push_back({1, 8, 10, 256, true, true, true, true, true, false, false, dt});
    out.push_back({1, 37, 3, 1, true, true, true, true, true, false, false, dt, true});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, SelectiveStateUpdateEmu, ::testing::ValuesIn(step_cases()),
                         [](const auto& info) { return test::case_name(info.param); });

}  // namespace
}  // namespace aim
