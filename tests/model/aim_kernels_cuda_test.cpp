// The whole AiM model in the two bf16 modes users run, through the kernels against the references
// (ops::set_cuda_kernels(false)), on the kernels' device: a GPU in aim_tests, the CPU emulator
// in aim_emu_tests (test::kernel_device()).
//  - Training with `precision: bf16`: fp32 master weights under bf16 autocast; the loss and every
//    gradient. Autocast hands the ops mixed dtypes: bf16 activations from every linear, fp32
//    residuals, an fp32 final hidden state into the loss, whose lm_head product autocast makes
//    bf16. The op-level kernel tests feed each op one dtype at a time; this checks what the model
//    feeds them.
//  - Sampling with `--dtype bf16`: guided decoding's logits, half the sequence prefilled.
//
// Cases: both fixture models (official weights) and AiM-L's mixer and vocabulary (headdim 64,
// d_state 128, 256 tokens, 16384 codes) at one layer of width 256. Tolerance max|a - b| / max|b|:
// 1e-2 for the loss, 5e-2 for each gradient and the logits (the bf16 mixer tests' bound): both
// paths compute the products in bf16, the references also round intermediates that the kernels
// keep in fp32.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "aim/core/autocast.h"
#include "aim/core/config.h"
#include "aim/core/safetensors.h"
#include "aim/model/aim.h"
#include "aim/ops/dispatch.h"
#include "test_util.h"

namespace aim {
namespace {

struct StepResult {
  torch::Tensor loss;
  std::vector<std::pair<std::string, torch::Tensor>> grads;
};

StepResult autocast_step(AimModel& m, const torch::Tensor& tokens, const torch::Tensor& labels,
                         bool kernels) {
  ops::set_cuda_kernels(kernels);
  m->zero_grad();
  torch::Tensor loss;
  {
    AutocastScope autocast(true, tokens.device().type());
    loss = m->loss(tokens, labels);
  }
  loss.backward();
  StepResult r;
  r.loss = loss.detach().to(torch::kFloat);
  for (const auto& p : m->named_parameters()) {
    if (p.value().grad().defined()) r.grads.emplace_back(p.key(), p.value().grad().clone());
  }
  return r;
}

class AimKernelsBf16 : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!test::kernel_device_available()) GTEST_SKIP() << "no GPU visible: CUDA model test skipped";
  }
  void TearDown() override { ops::set_cuda_kernels(true); }

  /// The case's model: the fixture's official weights, or AiM-L's shapes freshly drawn, with
  /// the parameters the official constructor zeroes (the adaLN gates, which would keep every
  /// gradient from the mixers) drawn again.
  AimModel model() const {
    AimModel m(config());
    if (GetParam() == "aim_l_narrow") {
      torch::NoGradGuard no_grad;
      for (auto& p : m->parameters()) {
        if (p.abs().max().item<double>() == 0.0) p.normal_(0.0, 0.02);
      }
    } else {
      const auto weights = test::fixtures_dir() / "aim" / GetParam() / "model.safetensors";
      load_official_state_dict(m, load_safetensors(weights.string()), weights.string());
    }
    m->eval();  // no class or token dropout: both paths see the same inputs
    return m;
  }

  ModelConfig config() const {
    if (GetParam() == "aim_l_narrow") {
      return load_config(std::string(AIM_SOURCE_DIR) + "/configs/aim_l.yaml",
                         {"model.n_layer=1", "model.d_model=256", "model.num_classes=10"})
          .model;
    }
    return model_config_from_hf_json((test::fixtures_dir() / "aim" / GetParam() / "config.json").string());
  }
};

TEST_P(AimKernelsBf16, Bf16TrainingStepEqualsTheReferences) {
  torch::manual_seed(5);
  AimModel m = model();
  m->to(test::kernel_device());  // fp32 master weights, as the trainer keeps them
  const auto& cfg = m->config;
  const auto dev = torch::TensorOptions().device(test::kernel_device());
  const auto tokens = torch::randint(0, cfg.vocab_size, {3, cfg.num_tokens}, dev.dtype(torch::kLong));
  // The last label is the null class (classifier-free guidance's unconditional rows).
  const auto labels = torch::tensor({int64_t{1}, int64_t{3}, int64_t{cfg.num_classes}}, torch::kLong).to(test::kernel_device());

  const auto off = autocast_step(m, tokens, labels, false);
  const auto on = autocast_step(m, tokens, labels, true);
  const auto tag = GetParam();
  std::printf("    %s: loss %.6f (kernels) vs %.6f (references)\n", tag.c_str(),
              on.loss.item<double>(), off.loss.item<double>());
  test::expect_close(tag + " loss", on.loss, off.loss, 1e-2);
  ASSERT_EQ(on.grads.size(), off.grads.size());
  ASSERT_EQ(on.grads.size(), m->parameters().size()) << "every parameter gets a gradient";
  for (size_t i = 0; i < on.grads.size(); ++i) {
    ASSERT_EQ(on.grads[i].first, off.grads[i].first);
    EXPECT_EQ(on.grads[i].second.scalar_type(), torch::kFloat) << on.grads[i].first;
    EXPECT_GT(off.grads[i].second.abs().max().item<double>(), 0.0)
        << on.grads[i].first << ": no gradient reaches it, so the comparison checks nothing";
    test::expect_close(tag + " d" + on.grads[i].first, on.grads[i].second, off.grads[i].second, 5e-2);
  }
}

// train.recompute_every 1 through the kernels: the kernels' autograd functions run inside the
// recomputing node's backward, under the autocast state it restores. Equal to the plain step up
// to the kernels' own run-to-run differences (none is expected: 1e-5 of each gradient's maximum).
TEST_P(AimKernelsBf16, Bf16RecomputedStepEqualsThePlainStep) {
  torch::manual_seed(5);
  AimModel m = model();
  m->to(test::kernel_device());
  const auto& cfg = m->config;
  const auto dev = torch::TensorOptions().device(test::kernel_device());
  const auto tokens = torch::randint(0, cfg.vocab_size, {3, cfg.num_tokens}, dev.dtype(torch::kLong));
  const auto labels = torch::tensor({int64_t{1}, int64_t{3}, int64_t{cfg.num_classes}}, torch::kLong).to(test::kernel_device());
  const auto plain = autocast_step(m, tokens, labels, true);
  m->backbone->recompute_every = 1;
  const auto recomputed = autocast_step(m, tokens, labels, true);
  m->backbone->recompute_every = 0;
  const auto tag = GetParam() + " recomputed";
  test::expect_close(tag + " loss", recomputed.loss, plain.loss, 1e-5);
  ASSERT_EQ(recomputed.grads.size(), plain.grads.size());
  for (size_t i = 0; i < plain.grads.size(); ++i) {
    ASSERT_EQ(recomputed.grads[i].first, plain.grads[i].first);
    test::expect_close(tag + " d" + plain.grads[i].first, recomputed.grads[i].second, plain.grads[i].second, 1e-5);
  }
}

// `aim sample --dtype bf16`: the model's weights in bf16, guided decoding (conditional and null
// rows), teacher-forced over a whole sequence, the first half prefilled in one pass. The logits of
// every step through the kernels (the fused norm + in_proj, the fused step, the conv and state
// updates, the chunked scan for the prefill) against the references'.
TEST_P(AimKernelsBf16, Bf16DecodeEqualsTheReferences) {
  torch::manual_seed(7);
  AimModel m = model();
  m->to(test::kernel_device(), torch::kBFloat16);
  torch::NoGradGuard no_grad;
  const auto& cfg = m->config;
  const auto dev = torch::TensorOptions().device(test::kernel_device()).dtype(torch::kLong);
  const int64_t len = std::min<int64_t>(cfg.num_tokens, 64);
  const auto tokens = torch::randint(0, cfg.vocab_size, {2, len}, dev);
  const auto labels = torch::tensor({int64_t{1}, int64_t{4}}, torch::kLong).to(test::kernel_device());
  const auto both = torch::cat({labels, torch::full_like(labels, m->null_class())});
  const auto decode = [&](bool kernels) {
    ops::set_cuda_kernels(kernels);
    auto state = m->start(both, torch::kBFloat16);
    const int64_t k = len / 2;
    std::vector<torch::Tensor> out{m->prefill(state, torch::cat({tokens, tokens}).narrow(1, 0, k))};
    for (int64_t t = k + 1; t < len; ++t) {
      const auto prev = tokens.select(1, t - 1);
      out.push_back(m->step(state, torch::cat({prev, prev})));
    }
    return torch::stack(out, 1).to(torch::kFloat);  // [4, len - k, V]
  };
  const auto off = decode(false), on = decode(true);
  EXPECT_EQ(on.scalar_type(), torch::kFloat);
  test::expect_close(GetParam() + " bf16 decode logits", on, off, 5e-2);
  // The same kernels launched plainly (no programmatic dependent launches): the same bits. A
  // dependent launch changes when a kernel starts, never what it computes; on a GPU a kernel
  // that read the previous one's output before its wait would show here.
  const test::ScopedEnv plain("AIM_PDL", "0");
  EXPECT_TRUE(torch::equal(decode(true), on)) << GetParam() << ": AIM_PDL=0 changed the decode logits";
}

INSTANTIATE_TEST_SUITE_P(Models, AimKernelsBf16,
                         ::testing::Values("mamba1_tiny", "mamba2_tiny", "aim_l_narrow"));

}  // namespace
}  // namespace aim
