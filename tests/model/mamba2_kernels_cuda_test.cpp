// The Mamba2 mixer on CUDA gives the same output and gradients (input and every parameter) with
// the hand-written kernels (conv1d, SSD scan, gated RMSNorm) as with the references
// (ops::set_cuda_kernels(false)), at AiM's mixer settings (headdim 64, d_state 128, ngroups 1,
// L = 257) on a narrower model, and with 2 groups and D per channel. On the kernels' device: a
// GPU, or the CPU emulator in aim_emu_tests (test::kernel_device()).
//
// Tolerance, max|a - b| / max|b|: 2e-3 in fp32 (both paths compute in fp32; sums of up to 514
// rows per parameter gradient); 5e-2 in bf16, where the kernels round intermediate products'
// operands to bf16 and either path's bf16 activations then flow through in_proj's backward.
// And the backward's concatenations, counted (none).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "aim/core/config.h"
#include "aim/model/mamba2.h"
#include "aim/ops/dispatch.h"
#include "test_util.h"

namespace aim {
namespace {

struct MixerCase {
  int64_t d_model, ngroups;
  bool d_has_hdim;
  torch::ScalarType dtype;
};

std::string case_name(const MixerCase& c) {
  return "D" + std::to_string(c.d_model) + "_G" + std::to_string(c.ngroups) +
         (c.d_has_hdim ? "_Dhp" : "") + (c.dtype == torch::kBFloat16 ? "_bf16" : "_fp32");
}

class Mamba2KernelsCuda : public ::testing::TestWithParam<MixerCase> {
 protected:
  void SetUp() override {
    if (!test::kernel_device_available()) GTEST_SKIP() << "no GPU visible: CUDA mixer test skipped";
  }
  void TearDown() override { ops::set_cuda_kernels(true); }
};

class Mamba2KernelsCudaOps : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::kernel_device_available()) GTEST_SKIP() << "no GPU visible: CUDA mixer test skipped";
    ops::set_cuda_kernels(true);
  }
};

struct RunResult {
  torch::Tensor out;
  std::vector<std::pair<std::string, torch::Tensor>> grads;  ///< "u" then parameters
};

RunResult run(Mamba2Mixer& mixer, const torch::Tensor& u0, const torch::Tensor& g, bool kernels) {
  ops::set_cuda_kernels(kernels);
  mixer->zero_grad();
  auto u = u0.detach().clone().requires_grad_(true);
  auto out = mixer->forward(u);
  out.backward(g);
  RunResult r;
  r.out = out.detach();
  r.grads.emplace_back("u", u.grad());
  for (const auto& p : mixer->named_parameters()) r.grads.emplace_back(p.key(), p.value().grad().clone());
  return r;
}

TEST_P(Mamba2KernelsCuda, KernelsOnEqualKernelsOff) {
  const auto c = GetParam();
  const auto tag = case_name(c);
  torch::manual_seed(21);
  SsmConfig ssm;
  ssm.d_state = 128;
  ssm.headdim = 64;
  ssm.ngroups = c.ngroups;
  ssm.d_has_hdim = c.d_has_hdim;
  Mamba2Mixer mixer(Mamba2MixerOptions(c.d_model, ssm));
  mixer->to(test::kernel_device(), c.dtype);
  const auto opts = torch::dtype(c.dtype).device(test::kernel_device());
  const auto u = torch::randn({2, 257, c.d_model}, opts);
  const auto g = torch::randn({2, 257, c.d_model}, opts);

  const auto off = run(mixer, u, g, false);
  const auto on = run(mixer, u, g, true);
  const double tol = c.dtype == torch::kBFloat16 ? 5e-2 : 2e-3;
  test::expect_close(tag + " out", on.out, off.out, tol);
  ASSERT_EQ(on.grads.size(), off.grads.size());
  for (size_t i = 0; i < on.grads.size(); ++i) {
    ASSERT_TRUE(on.grads[i].second.defined()) << tag << " " << on.grads[i].first;
    test::expect_close(tag + " d" + on.grads[i].first, on.grads[i].second, off.grads[i].second, tol);
  }
}

// The mixer's backward on the kernels concatenates nothing. The conv output's split (x, B, C)
// gets the scan's packed gradient as it is (ops::split_last_dim), where split_with_sizes would
// copy the three into a new tensor; in_proj's split (z, x B C, dt) gets one buffer that the
// gated norm, the conv and the scan wrote their gradients into (ops::split_grad_slot).
TEST_F(Mamba2KernelsCudaOps, BackwardConcatenatesNothing) {
  torch::manual_seed(22);
  SsmConfig ssm;
  ssm.d_state = 32;
  ssm.headdim = 32;
  Mamba2Mixer mixer(Mamba2MixerOptions(128, ssm));
  mixer->to(test::kernel_device(), torch::kBFloat16);
  const auto opts = torch::dtype(torch::kBFloat16).device(test::kernel_device());
  auto u = torch::randn({2, 40, 128}, opts).requires_grad_(true);
  auto out = mixer->forward(u);
  test::OpCounter cats("aten::cat");
  out.backward(torch::randn_like(out));
  EXPECT_EQ(cats.count(), 0);
  EXPECT_TRUE(u.grad().defined());
}

INSTANTIATE_TEST_SUITE_P(Mixers, Mamba2KernelsCuda,
                         ::testing::Values(MixerCase{256, 1, false, torch::kFloat},
                                           MixerCase{256, 1, false, torch::kBFloat16},
                                           MixerCase{384, 2, true, torch::kFloat},
                                           MixerCase{384, 2, true, torch::kBFloat16}),
                         [](const auto& info) { return case_name(info.param); });

}  // namespace
}  // namespace aim
