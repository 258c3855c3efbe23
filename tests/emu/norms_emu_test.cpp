// The RMS norm kernels (kernels/rms_norm*.cu[h]) run by the CPU emulator through the CUDA
// adapter's own code (src/ops/norms_cuda.cpp: rows per backward chunk from the device's SM
// count, workspaces, the autograd functions), with the GPU test's checks and every one of its
// cases: the block input's add + RMSNorm + adaLN modulate (AiM-B/L blocks, norm_f, a sampling
// step, edges) and Mamba2's gated group RMSNorm (AiM-B/L mixers, both gate orders, groups, no
// gate, a misaligned z slice, edges).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "emu_test_util.h"
#include "ops/norms_cases.h"
#include "ops/norms_cuda.h"

namespace aim {
namespace {

namespace emu_t = test::emu;

class AddRmsNormEmu : public emu_t::EmulatedKernelTest<::testing::TestWithParam<test::AddCase>> {};

TEST_P(AddRmsNormEmu, ForwardAndBackwardMatchTheReference) {
  test::check_add_rms_norm(
      GetParam(), torch::kCPU,
      [](const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight,
         double eps, bool residual_in_fp32, const torch::Tensor& shift, const torch::Tensor& scale) {
        EXPECT_TRUE(ops::cuda_emu::add_rms_norm_supported(hidden, residual, weight, shift, scale, {}));
        return ops::cuda_emu::add_rms_norm_modulate(hidden, residual, weight, eps,
                                                    residual_in_fp32, shift, scale, {});
      });
}

TEST_P(AddRmsNormEmu, GatedReadIsTheMultiplyFirst) {
  test::check_add_rms_norm_gate(
      GetParam(), torch::kCPU,
      [](const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight,
         double eps, bool residual_in_fp32, const torch::Tensor& shift, const torch::Tensor& scale,
         const torch::Tensor& gate) {
        EXPECT_TRUE(ops::cuda_emu::add_rms_norm_supported(hidden, residual, weight, shift, scale, gate));
        return ops::cuda_emu::add_rms_norm_modulate(hidden, residual, weight, eps,
                                                    residual_in_fp32, shift, scale, gate);
      });
}

INSTANTIATE_TEST_SUITE_P(Shapes, AddRmsNormEmu, ::testing::ValuesIn(test::add_cases()),
                         [](const auto& info) { return test::case_name(info.param); });

class GatedRmsNormEmu
    : public emu_t::EmulatedKernelTest<::testing::TestWithParam<test::GatedCase>> {};

TEST_P(GatedRmsNormEmu, ForwardAndBackwardMatchTheReference) {
  test::check_gated_rms_norm(
      GetParam(), torch::kCPU,
      [](const torch::Tensor& x, const torch::Tensor& z, const torch::Tensor& weight,
         int64_t group_size, double eps, bool norm_before_gate) {
        EXPECT_TRUE(ops::cuda_emu::gated_rms_norm_supported(x, z, weight, group_size));
        return ops::cuda_emu::gated_rms_norm(x, z, weight, group_size, eps, norm_before_gate);
      });
}

INSTANTIATE_TEST_SUITE_P(Shapes, GatedRmsNormEmu, ::testing::ValuesIn(test::gated_cases()),
                         [](const auto& info) { return test::case_name(info.param); });

}  // namespace
}  // namespace aim
