// The RMS norm CUDA kernels (the block input's add + RMSNorm + adaLN modulate, Mamba2's gated
// group RMSNorm), forward and backward, against the reference on fp64 CPU copies, at the AiM-B/L
// shapes (L = 257, the sampling step's [B, D], the mixer's z sliced from in_proj's output) and
// at edge shapes. Outputs are poisoned with NaN before every launch; the backward runs twice and
// must give the same bits. The decoding step's fused norm + in_proj against the norm op then the
// linear. CPU tests pin the reference of add_rms_norm_modulate to the model's former
// add_rms_norm + modulate, and add_rms_norm_modulate_linear off the kernel to the two ops.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "aim/ops/dispatch.h"
#include "aim/ops/norms.h"
#include "ops/norms_cases.h"
#include "test_util.h"
#ifdef AIM_WITH_CUDA
#include "ops/norms_cuda.h"
#endif

namespace aim {
namespace {

using test::add_cases;
using test::AddCase;
using test::case_name;
using test::gated_cases;
using test::GatedCase;
using test::kNormEps;

// Kernel tests: on a GPU only, with poisoned outputs and the kernels switched on.
template <typename Case>
class NormsCudaTest : public test::CudaKernelTest<::testing::TestWithParam<Case>> {};

// ---------------------------------------------------------------- add_rms_norm_modulate

using NormsCudaAdd = NormsCudaTest<AddCase>;

TEST_P(NormsCudaAdd, ForwardAndBackwardMatchTheReference) {
  test::check_add_rms_norm(GetParam(), torch::kCUDA,
                           [](const torch::Tensor& hidden, const torch::Tensor& residual,
                              const torch::Tensor& weight, double eps, bool residual_in_fp32,
                              const torch::Tensor& shift, const torch::Tensor& scale) {
                             return ops::add_rms_norm_modulate(hidden, residual, weight, eps,
                                                               residual_in_fp32, shift, scale);
                           });
}

TEST_P(NormsCudaAdd, GatedWithGradientsMatchesTheReference) {
  if (GetParam().dim > 4096) {
    GTEST_SKIP() << "the gated backward takes D <= 4096; wider, the op multiplies first "
                    "(AddRmsNormEmu checks the refusal)";
  }
  test::check_add_rms_norm_gate_grad(GetParam(), torch::kCUDA,
                                     [](const torch::Tensor& hidden, const torch::Tensor& residual,
                                        const torch::Tensor& weight, double eps, bool res32,
                                        const torch::Tensor& shift, const torch::Tensor& scale,
                                        const torch::Tensor& gate) {
                                       return ops::add_rms_norm_modulate(
                                           hidden, residual, weight, eps, res32, shift, scale,
                                           gate, hidden.scalar_type());
                                     });
}

TEST_P(NormsCudaAdd, GatedReadIsTheMultiplyFirst) {
  test::check_add_rms_norm_gate(GetParam(), torch::kCUDA,
                                [](const torch::Tensor& hidden, const torch::Tensor& residual,
                                   const torch::Tensor& weight, double eps, bool residual_in_fp32,
                                   const torch::Tensor& shift, const torch::Tensor& scale,
                                   const torch::Tensor& gate) {
                                  return ops::add_rms_norm_modulate(hidden, residual, weight, eps,
                                                                    residual_in_fp32, shift, scale,
                                                                    gate);
                                });
}

INSTANTIATE_TEST_SUITE_P(Shapes, NormsCudaAdd, ::testing::ValuesIn(add_cases()),
                         [](const auto& info) { return case_name(info.param); });

// ---------------------------------------------------------------- gated_rms_norm

using NormsCudaGated = NormsCudaTest<GatedCase>;

TEST_P(NormsCudaGated, ForwardAndBackwardMatchTheReference) {
  test::check_gated_rms_norm(GetParam(), torch::kCUDA, ops::gated_rms_norm);
}

INSTANTIATE_TEST_SUITE_P(Shapes, NormsCudaGated, ::testing::ValuesIn(gated_cases()),
                         [](const auto& info) { return case_name(info.param); });

// ---------------------------------------------------------------- add_rms_norm_modulate_linear

using NormsCudaLinear = NormsCudaTest<test::NormLinearCase>;

// Through the public op on CUDA tensors (the fused kernel: the cases are all within its limits,
// which the first line checks), against the norm op then the linear.
TEST_P(NormsCudaLinear, EqualsTheNormThenTheLinear) {
  test::check_norm_linear(
      GetParam(), torch::kCUDA,
      [](const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight,
         double eps, bool residual_in_fp32, const torch::Tensor& shift, const torch::Tensor& scale,
         const torch::Tensor& gate, const torch::Tensor& linear_weight,
         const torch::Tensor& linear_bias) {
#ifdef AIM_WITH_CUDA
        EXPECT_TRUE(ops::cuda::add_rms_norm_linear_supported(hidden, residual, weight, shift, scale,
                                                             gate, linear_weight, linear_bias));
#endif
        return ops::add_rms_norm_modulate_linear(hidden, residual, weight, eps, residual_in_fp32,
                                                 shift, scale, gate, linear_weight, linear_bias);
      },
      [](const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight,
         double eps, bool residual_in_fp32, const torch::Tensor& shift, const torch::Tensor& scale,
         const torch::Tensor& gate) {
        return ops::add_rms_norm_modulate(hidden, residual, weight, eps, residual_in_fp32, shift,
                                          scale, gate);
      });
}

INSTANTIATE_TEST_SUITE_P(Shapes, NormsCudaLinear, ::testing::ValuesIn(test::norm_linear_cases()),
                         [](const auto& info) { return case_name(info.param); });

// ---------------------------------------------------------------- dispatch

// The kernels are used by default on CUDA and the switch turns them off; both paths give the
// same dtypes and agree through the public ops on the same device.
TEST(NormsDispatch, SwitchSelectsTheReferenceOnCuda) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible";
  torch::manual_seed(3);
  const auto dev = torch::Device(torch::kCUDA);
  auto hidden = test::randn({2, 257, 1024}, torch::kBFloat16, dev).requires_grad_(true);
  auto residual = test::randn({2, 257, 1024}, torch::kFloat, dev).requires_grad_(true);
  auto weight = torch::empty({1024}).uniform_(0.5, 1.5).to(dev).requires_grad_(true);
  auto shift = test::randn({2, 1024}, torch::kFloat, dev, 0.3).requires_grad_(true);
  auto scale = test::randn({2, 1024}, torch::kFloat, dev, 0.3).requires_grad_(true);
  auto z = test::randn({2, 257, 2048}, torch::kBFloat16, dev).requires_grad_(true);
  auto x = test::randn({2, 257, 2048}, torch::kBFloat16, dev).requires_grad_(true);
  auto gweight = torch::empty({2048}).uniform_(0.5, 1.5).to(dev).requires_grad_(true);
  const std::vector<torch::Tensor> inputs{hidden, residual, weight, shift, scale, x, z, gweight};

  auto run = [&](bool kernels) {
    ops::set_cuda_kernels(kernels);
    auto [out, res] = ops::add_rms_norm_modulate(hidden, residual, weight, kNormEps, true, shift, scale);
    auto y = ops::gated_rms_norm(x, z, gweight, 2048, kNormEps, false);
    ops::set_cuda_kernels(true);
    torch::manual_seed(5);
    auto g_out = test::randn(out.sizes(), out.scalar_type(), dev);
    auto g_res = test::randn(res.sizes(), res.scalar_type(), dev);
    auto g_y = test::randn(y.sizes(), y.scalar_type(), dev);
    auto grads = torch::autograd::grad({out, res, y}, inputs, {g_out, g_res, g_y});
    std::vector<torch::Tensor> all{out, res, y};
    all.insert(all.end(), grads.begin(), grads.end());
    return all;
  };
  const auto ker = run(true);
  const auto ref = run(false);
  // The reference rounds intermediates (normed, its gradient) to bf16: bf16 tolerances, and the
  // sums over rows relative to their largest value.
  const char* names[] = {"out", "residual_out", "gated out", "dhidden", "dresidual", "dweight",
                         "dshift", "dscale", "dx", "dz", "gated dweight"};
  const bool row_sum[] = {false, false, false, false, false, true, true, true, false, false, true};
  for (size_t i = 0; i < ker.size(); ++i) {
    const std::string name = std::string("kernel vs reference on cuda: ") + names[i];
    EXPECT_EQ(ker[i].scalar_type(), ref[i].scalar_type()) << name;
    EXPECT_EQ(ker[i].sizes(), ref[i].sizes()) << name;
    if (row_sum[i]) {
      test::norms_close_sum(name, ker[i], ref[i], torch::kBFloat16);
    } else {
      const auto tol = test::tolerance_for(torch::kBFloat16);
      test::expect_close(name, ker[i], ref[i], tol.atol, /*relative_to_max=*/false, tol.rtol);
    }
  }
}

// ---------------------------------------------------------------- reference (CPU, always runs)

// add_rms_norm_modulate's reference is exactly what the AiM block computed before it existed:
// add_rms_norm, then x * (1 + scale) + shift broadcast over L; its gradients reach every input.
TEST(AddRmsNormModulate, ReferenceIsAddRmsNormThenModulate) {
  torch::manual_seed(5);
  for (bool sequence : {true, false}) {
    const std::vector<int64_t> shape =
        sequence ? std::vector<int64_t>{2, 5, 16} : std::vector<int64_t>{2, 16};
    const std::string tag = sequence ? "[B, L, D]" : "[B, D]";
    auto hidden = torch::randn(shape).requires_grad_(true);
    auto residual = torch::randn(shape).requires_grad_(true);
    auto weight = torch::empty({16}).uniform_(0.5, 1.5).requires_grad_(true);
    auto shift = (torch::randn({2, 16}) * 0.3).requires_grad_(true);
    auto scale = (torch::randn({2, 16}) * 0.3).requires_grad_(true);

    auto [out, res] = ops::add_rms_norm_modulate(hidden, residual, weight, kNormEps, true, shift, scale);
    auto [normed, res_plain] = ops::add_rms_norm(hidden, residual, weight, kNormEps, true);
    auto expected = sequence ? normed * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
                             : normed * (1 + scale) + shift;
    EXPECT_TRUE(torch::equal(out, expected)) << tag;
    EXPECT_TRUE(torch::equal(res, res_plain)) << tag;

    const std::vector<torch::Tensor> inputs{hidden, residual, weight, shift, scale};
    const auto g_out = torch::randn(out.sizes()), g_res = torch::randn(res.sizes());
    const auto grads = torch::autograd::grad({out, res}, inputs, {g_out, g_res});
    const auto grads_expected = torch::autograd::grad({expected, res_plain}, inputs, {g_out, g_res});
    for (size_t i = 0; i < inputs.size(); ++i) {
      ASSERT_TRUE(grads[i].defined()) << tag << ": gradient " << i;
      EXPECT_EQ(grads[i].sizes(), inputs[i].sizes()) << tag << ": gradient " << i;
      EXPECT_GT(grads[i].abs().sum().item<double>(), 0.0) << tag << ": gradient " << i;
      EXPECT_TRUE(torch::equal(grads[i], grads_expected[i])) << tag << ": gradient " << i;
    }
  }
  // Without shift and scale it is add_rms_norm, the first block (no residual) included.
  auto hidden = torch::randn({2, 5, 16});
  auto weight = torch::empty({16}).uniform_(0.5, 1.5);
  auto [out, res] = ops::add_rms_norm_modulate(hidden, {}, weight, kNormEps, false, {}, {});
  auto [normed, res_plain] = ops::add_rms_norm(hidden, {}, weight, kNormEps, false);
  EXPECT_TRUE(torch::equal(out, normed));
  EXPECT_TRUE(torch::equal(res, res_plain));
  // Shape errors name the op and the tensor.
  try {
    ops::add_rms_norm_modulate(hidden, {}, weight, kNormEps, false, torch::zeros({2, 8}),
                               torch::zeros({2, 8}));
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("add_rms_norm_modulate: shift must be"),
              std::string::npos)
        << e.what();
  }
}

// add_rms_norm_modulate_linear off the fused kernel (the CPU here; on CUDA past its limits) is
// the norm op then torch's linear, the same bits; its argument errors name the argument.
TEST(AddRmsNormModulateLinear, IsTheNormThenTheLinearAndChecksItsArguments) {
  torch::manual_seed(7);
  for (bool with_bias : {false, true}) {
    auto hidden = torch::randn({3, 16}), residual = torch::randn({3, 16});
    auto weight = torch::empty({16}).uniform_(0.5, 1.5);
    auto shift = torch::randn({3, 16}) * 0.3, scale = torch::randn({3, 16}) * 0.3;
    auto gate = torch::randn({3, 16});
    auto lw = torch::randn({24, 16}) * 0.25;
    auto lb = with_bias ? torch::randn({24}) : torch::Tensor();
    auto [out, res] = ops::add_rms_norm_modulate_linear(hidden, residual, weight, kNormEps, true,
                                                        shift, scale, gate, lw, lb);
    auto [x, res_n] = ops::add_rms_norm_modulate(hidden, residual, weight, kNormEps, true, shift,
                                                 scale, gate);
    EXPECT_TRUE(torch::equal(out, torch::nn::functional::linear(x, lw, lb))) << with_bias;
    EXPECT_TRUE(torch::equal(res, res_n)) << with_bias;
  }
  auto hidden = torch::randn({2, 16});
  auto weight = torch::ones({16});
  auto expect_error = [&](const torch::Tensor& lw, const torch::Tensor& lb, const char* what) {
    try {
      ops::add_rms_norm_modulate_linear(hidden, {}, weight, kNormEps, true, {}, {}, {}, lw, lb);
      ADD_FAILURE() << "no error for " << what;
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  expect_error(torch::randn({24, 15}), {}, "linear_weight must be [N, 16]");
  expect_error(torch::randn({24, 16}), torch::randn({23}), "linear_bias must be [24]");
}

}  // namespace
}  // namespace aim
