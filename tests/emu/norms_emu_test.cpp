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
#include "rms_norm.h"

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

// The emulated adapter with the previous block's gate, which it must take.
std::pair<torch::Tensor, torch::Tensor> emulated_gated_add(
    const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight,
    double eps, bool residual_in_fp32, const torch::Tensor& shift, const torch::Tensor& scale,
    const torch::Tensor& gate) {
  EXPECT_TRUE(ops::cuda_emu::add_rms_norm_supported(hidden, residual, weight, shift, scale, gate));
  return ops::cuda_emu::add_rms_norm_modulate(hidden, residual, weight, eps, residual_in_fp32,
                                              shift, scale, gate);
}

TEST_P(AddRmsNormEmu, GatedReadIsTheMultiplyFirst) {
  test::check_add_rms_norm_gate(GetParam(), torch::kCPU, emulated_gated_add);
}

TEST_P(AddRmsNormEmu, GatedWithGradientsMatchesTheReference) {
  const auto& c = GetParam();
  if (c.dim > kernels_emu::kRmsNormMaxGatedBwdDim) {
    // Past the gated backward's width the op multiplies first (the model is then unchanged).
    const auto h = torch::randn({c.batch, 2, c.dim}, torch::requires_grad());
    EXPECT_FALSE(ops::cuda_emu::add_rms_norm_supported(h, {}, torch::ones({c.dim}), {}, {},
                                                       torch::ones({c.batch, c.dim})));
    return;
  }
  test::check_add_rms_norm_gate_grad(GetParam(), torch::kCPU, emulated_gated_add);
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

class NormLinearEmu
    : public emu_t::EmulatedKernelTest<::testing::TestWithParam<test::NormLinearCase>> {};

TEST_P(NormLinearEmu, EqualsTheNormThenTheLinear) {
  test::check_norm_linear(
      GetParam(), torch::kCPU,
      [](const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight,
         double eps, bool residual_in_fp32, const torch::Tensor& shift, const torch::Tensor& scale,
         const torch::Tensor& gate, const torch::Tensor& linear_weight,
         const torch::Tensor& linear_bias) {
        EXPECT_TRUE(ops::cuda_emu::add_rms_norm_linear_supported(
            hidden, residual, weight, shift, scale, gate, linear_weight, linear_bias));
        return ops::cuda_emu::add_rms_norm_modulate_linear(hidden, residual, weight, eps,
                                                           residual_in_fp32, shift, scale, gate,
                                                           linear_weight, linear_bias);
      },
      [](const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight,
         double eps, bool residual_in_fp32, const torch::Tensor& shift, const torch::Tensor& scale,
         const torch::Tensor& gate) {
        return ops::cuda_emu::add_rms_norm_modulate(hidden, residual, weight, eps,
                                                    residual_in_fp32, shift, scale, gate);
      });
}

INSTANTIATE_TEST_SUITE_P(Shapes, NormLinearEmu, ::testing::ValuesIn(test::norm_linear_cases()),
                         [](const auto& info) { return test::case_name(info.param); });

// What the fused kernel refuses goes to the norm and the linear apart (ops::
// add_rms_norm_modulate_linear): more than 8 rows, D past 2048 or not a multiple of the
// 16-byte vector, a weight in another dtype or not contiguous, anything tracking gradients.
TEST(NormLinearEmuLimits, RefusesWhatItCannotRun) {
  const auto h = torch::kBFloat16;
  auto make = [&](int64_t rows, int64_t dim, torch::ScalarType dtype) {
    return std::make_pair(test::randn({rows, dim}, dtype), test::randn({64, dim}, dtype));
  };
  auto ok = [&](const torch::Tensor& x, const torch::Tensor& w) {
    const auto nw = torch::ones({x.size(1)});
    return ops::cuda_emu::add_rms_norm_linear_supported(x, {}, nw, {}, {}, {}, w, {});
  };
  auto [x8, w8] = make(8, 1024, h);
  EXPECT_TRUE(ok(x8, w8));
  auto [x9, w9] = make(9, 1024, h);
  EXPECT_FALSE(ok(x9, w9)) << "9 rows";
  auto [xd, wd] = make(2, 2056, h);
  EXPECT_FALSE(ok(xd, wd)) << "D 2056";
  auto [xo, wo] = make(2, 1028, h);
  EXPECT_FALSE(ok(xo, wo)) << "D 1028 in bf16";
  auto [xf, wf] = make(2, 1028, torch::kFloat);
  EXPECT_TRUE(ok(xf, wf)) << "D 1028 in fp32";
  EXPECT_FALSE(ok(x8, w8.to(torch::kFloat))) << "weight dtype";
  EXPECT_FALSE(ok(x8, test::randn({1024, 64}, h).t())) << "transposed weight";
  EXPECT_FALSE(ok(x8, test::randn({64 * 1024 + 1}, h).narrow(0, 1, 64 * 1024).view({64, 1024})))
      << "weight not 16-byte aligned";
  auto tracked = w8.clone().requires_grad_(true);
  EXPECT_FALSE(ok(x8, tracked)) << "weight tracking gradients";
}
}  // namespace
}  // namespace aim
