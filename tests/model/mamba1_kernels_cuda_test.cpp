// The Mamba1 mixer gives the same outputs, gradients and sampling steps (prefill, then one token
// at a time) with the hand-written kernels (causal conv1d, selective scan and its one-token
// update) as with the references (ops::set_cuda_kernels(false)), on the kernels' device: a GPU,
// or the CPU emulator in aim_emu_tests (test::kernel_device()). The backward on the kernels
// concatenates nothing.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "aim/core/config.h"
#include "aim/model/mamba1.h"
#include "aim/ops/dispatch.h"
#include "test_util.h"

namespace aim {
namespace {

std::string dtype_name(torch::ScalarType t) { return t == torch::kBFloat16 ? "bf16" : "fp32"; }

struct MixerCase {
  int64_t d_model;
  torch::ScalarType dtype;
};

class SelectiveScanCudaMixer : public ::testing::TestWithParam<MixerCase> {
 protected:
  void SetUp() override {
    if (!test::kernel_device_available()) GTEST_SKIP() << "no GPU visible: CUDA mixer test skipped";
  }
  void TearDown() override { ops::set_cuda_kernels(true); }
};

struct MixerRun {
  torch::Tensor out, steps;
  std::vector<std::pair<std::string, torch::Tensor>> grads;  ///< "u" then parameters
  int cats = 0;                                              ///< aten::cat in the backward
};

// Training forward + backward, then a prefill of the first half and steps through the rest.
MixerRun run_mixer(Mamba1Mixer& mixer, const torch::Tensor& u0, const torch::Tensor& g,
                   bool kernels) {
  ops::set_cuda_kernels(kernels);
  mixer->zero_grad();
  MixerRun r;
  auto u = u0.detach().clone().requires_grad_(true);
  auto out = mixer->forward(u);
  {
    test::OpCounter cats("aten::cat");
    out.backward(g);
    r.cats = cats.count();
  }
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
  mixer->to(test::kernel_device(), c.dtype);
  const auto opts = torch::dtype(c.dtype).device(test::kernel_device());
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
  // The conv and the scan write x's, z's, B's and C's gradients into their splits' buffers
  // (ops::split_grad_slot), dt_low's is copied in: nothing is concatenated.
  EXPECT_EQ(on.cats, 0) << tag;
}

// AiM-B and AiM-L widths on a GPU; the emulator, whose time goes as channels x length, runs the
// same mixers at a third of the width (the kernel tests cover the wide channel counts' tiling).
#ifdef AIM_OPS_EMULATED
constexpr int64_t kWidthDivisor = 3;
#else
constexpr int64_t kWidthDivisor = 1;
#endif

INSTANTIATE_TEST_SUITE_P(Mixers, SelectiveScanCudaMixer,
                         ::testing::Values(MixerCase{768 / kWidthDivisor, torch::kFloat},
                                           MixerCase{768 / kWidthDivisor, torch::kBFloat16},
                                           MixerCase{1024 / kWidthDivisor, torch::kBFloat16}),
                         [](const auto& info) {
                           return "D" + std::to_string(info.param.d_model) + "_" +
                                  dtype_name(info.param.dtype);
                         });

}  // namespace
}  // namespace aim
