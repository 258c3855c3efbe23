// Whole models through the emulated kernels (installed for this binary by
// emulated_kernels.cpp): the fixture models' training step, recurrent decoding and generation
// run through the kernels when they are on (a decode step through every kernel it has) and
// through none when they are off, and generation draws the same tokens both ways, from the
// class alone and continuing a prompt. The official-fixture parity tests built into this binary
// (tests/model/parity_test.cpp) check the same paths against the official goldens.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "aim/core/config.h"
#include "aim/model/aim.h"
#include "aim/ops/dispatch.h"
#include "aim/sample/generate.h"
#include "emu_runtime.h"
#include "test_util.h"

namespace aim {
namespace {

class EmulatedModel : public ::testing::TestWithParam<std::string> {
 protected:
  void TearDown() override { ops::set_cuda_kernels(true); }
  AimModel model() {
    const auto dir = test::fixtures_dir() / "aim" / GetParam();
    torch::manual_seed(3);
    AimModel m(model_config_from_hf_json((dir / "config.json").string()));
    m->eval();
    return m;
  }
};

TEST_P(EmulatedModel, TrainingAndDecodingRunThroughTheKernelsWhenOn) {
  auto m = model();
  const auto labels = torch::tensor({1, 3}, torch::kLong);
  const auto tokens = torch::randint(0, m->config.vocab_size, {2, 12}, torch::kLong);
  for (bool on : {true, false}) {
    ops::set_cuda_kernels(on);
    const auto before = emu::launch_count();
    m->zero_grad();
    m->loss(tokens, labels).backward();
    const auto training = emu::launch_count() - before;
    torch::NoGradGuard no_grad;
    auto state = m->start(labels);
    m->step(state, {});
    m->step(state, tokens.select(1, 0));
    const auto decoding = emu::launch_count() - before - training;
    std::printf("    %s, kernels %s: %llu launches in a training step, %llu in two decode steps\n",
                GetParam().c_str(), on ? "on" : "off", static_cast<unsigned long long>(training),
                static_cast<unsigned long long>(decoding));
    if (on) {
      EXPECT_GT(training, 0u);
      // Every op of a decode step that has a kernel goes through it: per layer the block norm
      // and, for Mamba2 with its gated norm, the fused step (conv update, state update, gated
      // norm in one launch); otherwise the conv update and the state update. Then norm_f and
      // the final layer's norm + modulate. A path falling back to the reference shows here.
      const auto& cfg = m->config;
      const uint64_t per_layer = cfg.ssm.layer == "Mamba2" && cfg.ssm.rmsnorm ? 2 : 3;
      EXPECT_EQ(decoding, 2 * (static_cast<uint64_t>(cfg.n_layer) * per_layer + 2));
    } else {
      EXPECT_EQ(training + decoding, 0u);
    }
  }
}

// `aim sample --dtype bf16` (weights and conv states in bf16, guidance's two rows per image):
// every op of a decode step with a kernel goes through it, as in fp32. A bf16 input a kernel
// refuses would fall back to the reference without a word; the count shows it.
TEST_P(EmulatedModel, Bf16DecodingRunsThroughTheKernels) {
  auto m = model();
  m->to(torch::kBFloat16);
  ops::set_cuda_kernels(true);
  torch::NoGradGuard no_grad;
  const auto labels = torch::tensor({int64_t{1}, m->null_class()}, torch::kLong);
  auto state = m->start(labels, torch::kBFloat16);
  m->step(state, {});
  const auto before = emu::launch_count();
  const auto before_dependent = emu::dependent_launch_count();
  auto with_state = state;
  for (auto& layer : with_state.layers) {  // the next step again from the same state, below
    layer.conv_state = layer.conv_state.clone();
    layer.ssm_state = layer.ssm_state.clone();
  }
  const auto tokens = torch::tensor({int64_t{5}, int64_t{5}}, torch::kLong);
  const auto logits = m->step(state, tokens);
  const auto launches = emu::launch_count() - before;
  const auto dependent = emu::dependent_launch_count() - before_dependent;
  const auto& cfg = m->config;
  // Per layer: Mamba2 the fused norm + in_proj, the fused step and out_proj; Mamba1 the fused
  // norm + in_proj, the conv update, x_proj, the state update and out_proj. Then norm_f, the
  // final layer's norm and the lm_head. The small-batch linear kernel (out_proj, x_proj, the
  // lm_head) takes reductions of a multiple of 32: d_inner for the projections, d_model for the
  // lm_head (48 in mamba1_tiny: cuBLAS runs it).
  const bool proj = cfg.d_inner() % 32 == 0, head = cfg.d_model % 32 == 0;
  const uint64_t per_layer = cfg.ssm.layer == "Mamba2" && cfg.ssm.rmsnorm ? 2 + proj : 3 + 2 * proj;
  std::printf("    %s bf16: %llu launches in a decode step, %llu of them dependent\n", GetParam().c_str(),
              static_cast<unsigned long long>(launches), static_cast<unsigned long long>(dependent));
  EXPECT_EQ(launches, static_cast<uint64_t>(cfg.n_layer) * per_layer + 2 + head);
  // All but Mamba1's conv and state updates start as dependents of the kernel before them
  // (kernels/grid_dependency.cuh), each in its ranges and rules; the same logits with
  // AIM_PDL=0, where none does.
  const uint64_t plain_per_layer = cfg.ssm.layer == "Mamba2" && cfg.ssm.rmsnorm ? 0 : 2;
  EXPECT_EQ(dependent, launches - static_cast<uint64_t>(cfg.n_layer) * plain_per_layer);
  const test::ScopedEnv off("AIM_PDL", "0");
  const auto before_off = emu::dependent_launch_count();
  const auto logits_off = m->step(with_state, tokens);
  EXPECT_EQ(emu::dependent_launch_count(), before_off);
  EXPECT_TRUE(torch::equal(logits, logits_off));
}

TEST_P(EmulatedModel, GenerationDrawsTheTokensOfTheReferencePath) {
  auto m = model();
  const auto labels = torch::tensor({0, 2, 5}, torch::kLong);
  SamplingOptions o;
  o.cfg = 4.0;
  o.top_k = 40;
  o.top_p = 0.95;
  o.seed = 11;
  ops::set_cuda_kernels(true);
  const auto before = emu::launch_count();
  const auto with = generate_tokens(m, labels, {0, 1, 2}, o);
  EXPECT_GT(emu::launch_count(), before);
  ops::set_cuda_kernels(false);
  const auto without = generate_tokens(m, labels, {0, 1, 2}, o);
  ASSERT_EQ(with.sizes(), without.sizes());
  const double agree = with.eq(without).to(torch::kDouble).mean().item<double>();
  std::printf("    %s: %lld tokens, %.4f%% the same with and without the kernels\n",
              GetParam().c_str(), static_cast<long long>(with.numel()), 100.0 * agree);
  EXPECT_TRUE(torch::equal(with, without));
  // Continuing a prompt: its prefill through the scan and conv kernels (final states out), then
  // the kernels' steps; the same tokens as the reference path.
  const auto prompt = with.narrow(1, 0, 21).contiguous();
  ops::set_cuda_kernels(true);
  const auto before_prompted = emu::launch_count();
  const auto with_prompt = generate_tokens(m, labels, {0, 1, 2}, o, nullptr, prompt);
  EXPECT_GT(emu::launch_count(), before_prompted);
  ops::set_cuda_kernels(false);
  const auto without_prompt = generate_tokens(m, labels, {0, 1, 2}, o, nullptr, prompt);
  EXPECT_TRUE(torch::equal(with_prompt, without_prompt));
  EXPECT_TRUE(torch::equal(with_prompt.narrow(1, 0, 21), prompt));
}

std::vector<std::string> cases() {
  auto c = test::fixture_cases("aim", {"config.json"});
  if (c.empty()) c.push_back("NO_FIXTURES_FOUND");
  return c;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, EmulatedModel, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace aim
