// AdamW (reference formula vs ATen's fused kernel, state round trip), clipping, schedules.
#include <cmath>

#include "aim/model/aim.h"
#include "aim/train/optim.h"
#include "test_util.h"

namespace aim::train {
namespace {

std::vector<NamedParam> make_params(uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<NamedParam> p = {{"w", torch::randn({7, 5})}, {"b", torch::randn({5})},
                               {"conv", torch::randn({3, 1, 4})}, {"scalar_like", torch::randn({1})}};
  for (auto& x : p) x.tensor.set_requires_grad(true);
  return p;
}

void set_grads(std::vector<NamedParam>& params, int64_t step) {
  torch::manual_seed(1000 + step);
  for (auto& x : params) x.tensor.mutable_grad() = torch::randn_like(x.tensor) * (0.1 + step);
}

OptimConfig recipe() {
  OptimConfig c;
  c.betas = {0.9, 0.95};
  c.eps = 1e-8;
  c.weight_decay = 0.05;
  return c;
}

TEST(AdamW, ReferenceMatchesTheFormulaInDoublePrecision) {
  auto params = make_params(1);
  const auto start = params[0].tensor.detach().to(torch::kDouble).clone();
  AdamW opt(params, recipe(), /*fused=*/false);
  auto p = start.clone();
  auto m = torch::zeros_like(p), v = torch::zeros_like(p);
  const double lrs[] = {1e-2, 5e-3, 2e-3};
  for (int t = 1; t <= 3; ++t) {
    set_grads(params, t);
    const auto g = params[0].tensor.grad().to(torch::kDouble);
    const double lr = lrs[t - 1];
    p = p * (1 - lr * 0.05);
    m = 0.9 * m + 0.1 * g;
    v = 0.95 * v + 0.05 * g * g;
    const double b1 = 1 - std::pow(0.9, t), b2 = 1 - std::pow(0.95, t);
    p = p - lr / b1 * m / (v.sqrt() / std::sqrt(b2) + 1e-8);
    opt.step(lr);
  }
  test::expect_close("adamw reference vs formula (fp32 vs fp64)", params[0].tensor, p, 1e-6);
}

TEST(AdamW, FusedKernelMatchesReference) {
  auto a = make_params(2), b = make_params(2);
  AdamW ref(a, recipe(), false), fused(b, recipe(), true);
  for (int t = 1; t <= 6; ++t) {
    set_grads(a, t);
    set_grads(b, t);
    ref.step(1e-2 / t);
    fused.step(1e-2 / t);
  }
  for (size_t i = 0; i < a.size(); ++i)
    test::expect_close("fused vs reference: " + a[i].name, b[i].tensor, a[i].tensor, 1e-6);
}

TEST(AdamW, FusedLeavesParametersWithoutAGradientAlone) {
  // The bias has no gradient at steps 2 and 3: it and its moments stay as they are, and its
  // later updates use the global step count, as the reference does.
  auto a = make_params(5), b = make_params(5);
  AdamW ref(a, recipe(), false), fused(b, recipe(), true);
  torch::Tensor held;
  for (int t = 1; t <= 5; ++t) {
    set_grads(a, t);
    set_grads(b, t);
    if (t == 2 || t == 3) {
      a[1].tensor.mutable_grad() = torch::Tensor();
      b[1].tensor.mutable_grad() = torch::Tensor();
      if (t == 2) held = b[1].tensor.detach().clone();
    }
    ref.step(1e-2);
    fused.step(1e-2);
    if (t == 3) EXPECT_TRUE(torch::equal(b[1].tensor, held)) << "bias moved without a gradient";
  }
  EXPECT_EQ(fused.steps(), 5);
  for (size_t i = 0; i < a.size(); ++i)
    test::expect_close("fused vs reference, gaps: " + a[i].name, b[i].tensor, a[i].tensor, 1e-6);
}

TEST(AdamW, WeightDecayOnlyOnParametersWithTwoOrMoreDims) {
  auto a = make_params(3), b = make_params(3);
  auto no_wd = recipe();
  no_wd.weight_decay = 0.0;
  AdamW with(a, recipe(), false), without(b, no_wd, false);
  EXPECT_TRUE(with.decays(0));
  EXPECT_FALSE(with.decays(1));
  EXPECT_TRUE(with.decays(2));
  EXPECT_FALSE(with.decays(3));
  set_grads(a, 1);
  set_grads(b, 1);
  with.step(0.1);
  without.step(0.1);
  EXPECT_FALSE(torch::equal(a[0].tensor, b[0].tensor));  // decayed
  EXPECT_TRUE(torch::equal(a[1].tensor, b[1].tensor));   // bias: no decay
  EXPECT_FALSE(torch::equal(a[2].tensor, b[2].tensor));  // conv weight (3 dims): decayed
  // Mamba1's A_log is 2-D ([d_inner, d_state]) but, as mamba_ssm marks it, not decayed.
  const auto config = test::tiny_model_config(false, "Mamba1");
  AimModel model(config);
  const auto named = unique_parameters(*model);
  AdamW m1(named, recipe(), false);
  int a_logs = 0;
  for (size_t i = 0; i < named.size(); ++i) {
    const std::string& n = named[i].name;
    const bool a_log = n.size() > 6 && n.compare(n.size() - 6, 6, ".A_log") == 0;
    const bool d = n.size() > 2 && n.compare(n.size() - 2, 2, ".D") == 0;
    EXPECT_EQ(m1.decays(i), named[i].tensor.dim() >= 2 && !a_log && !d) << n;
    if (a_log) EXPECT_EQ(named[i].tensor.dim(), 2) << n;
    a_logs += a_log;
  }
  EXPECT_EQ(a_logs, config.n_layer);
}

TEST(AdamW, StateRoundTripContinuesBitwise) {
  for (bool fused : {false, true}) {
    auto straight = make_params(4), resumed = make_params(4);
    AdamW s(straight, recipe(), fused);
    for (int t = 1; t <= 6; ++t) {
      set_grads(straight, t);
      s.step(1e-2);
    }
    AdamW first(resumed, recipe(), fused);
    for (int t = 1; t <= 3; ++t) {
      set_grads(resumed, t);
      first.step(1e-2);
    }
    std::map<std::string, torch::Tensor> saved;
    for (const auto& [k, v] : first.state_tensors()) saved[k] = v.clone();
    const auto meta = first.state_metadata();
    AdamW second(resumed, recipe(), fused);
    second.load_state(saved, meta, "test");
    EXPECT_EQ(second.steps(), 3);
    for (int t = 4; t <= 6; ++t) {
      set_grads(resumed, t);
      second.step(1e-2);
    }
    for (size_t i = 0; i < straight.size(); ++i)
      EXPECT_TRUE(torch::equal(straight[i].tensor, resumed[i].tensor)) << straight[i].name << " fused " << fused;
  }
}

TEST(AdamW, StartAtIsStepsWithZeroGradients) {
  // LlamaGen's discriminator Adam before its GAN starts: k steps with all-zero gradients (no
  // weight decay) leave the weights and zero moments as they were and count k; start_at(k) is
  // the same, then a real step is bias-corrected as step k + 1.
  OptimConfig c = recipe();
  c.weight_decay = 0.0;
  for (bool fused : {false, true}) {
    auto a = make_params(7), b = make_params(7);
    AdamW stepped(a, c, fused), started(b, c, fused);
    for (int t = 1; t <= 5; ++t) {
      for (auto& x : a) x.tensor.mutable_grad() = torch::zeros_like(x.tensor);
      stepped.step(1e-2);
    }
    started.start_at(5);
    EXPECT_EQ(started.steps(), 5);
    for (auto* params : {&a, &b}) set_grads(*params, 1);
    stepped.step(1e-2);
    started.step(1e-2);
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_TRUE(torch::equal(a[i].tensor, b[i].tensor)) << a[i].name << " fused " << fused;
    EXPECT_NE(test::error_of([&] { started.start_at(1); }).find("only before the first update"), std::string::npos);
  }
}

TEST(AdamW, LoadStateNamesMissingAndMisShapedTensors) {
  auto params = make_params(5);
  AdamW opt(params, recipe());
  std::map<std::string, torch::Tensor> saved;
  for (const auto& [k, v] : opt.state_tensors()) saved[k] = v.clone();
  auto meta = opt.state_metadata();
  auto missing = saved;
  missing.erase("exp_avg/b");
  EXPECT_NE(test::error_of([&] { opt.load_state(missing, meta, "opt.safetensors"); }).find("missing exp_avg/b"),
            std::string::npos);
  auto shaped = saved;
  shaped["exp_avg_sq/w"] = torch::zeros({5, 7});
  const auto msg = test::error_of([&] { opt.load_state(shaped, meta, "opt.safetensors"); });
  EXPECT_NE(msg.find("exp_avg_sq/w: expected shape [7, 5], found [5, 7]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("opt.safetensors"), std::string::npos);
  meta.erase("step");
  EXPECT_NE(test::error_of([&] { opt.load_state(saved, meta, "opt.safetensors"); }).find("'step'"),
            std::string::npos);
}

TEST(Clip, NormAndClippingMatchTorch) {
  auto a = make_params(6), b = make_params(6);
  set_grads(a, 2);
  set_grads(b, 2);
  const double norm = grad_norm(a);
  std::vector<torch::Tensor> tb;
  for (auto& x : b) tb.push_back(x.tensor);
  const double torch_norm = torch::nn::utils::clip_grad_norm_(tb, 1.0);
  EXPECT_NEAR(norm, torch_norm, 1e-5 * torch_norm);
  EXPECT_GT(norm, 1.0);
  clip_gradients(a, norm, 1.0);
  for (size_t i = 0; i < a.size(); ++i)
    test::expect_close("clipped grad " + a[i].name, a[i].tensor.grad(), b[i].tensor.grad(), 1e-6);
  EXPECT_NEAR(grad_norm(a), 1.0, 1e-5);
  // Below the threshold nothing changes.
  const auto before = a[0].tensor.grad().clone();
  clip_gradients(a, grad_norm(a), 10.0);
  EXPECT_TRUE(torch::equal(before, a[0].tensor.grad()));
}

TEST(Schedule, LinearDecayWithoutWarmupAsTheOfficialTrainer) {
  ScheduleConfig s;  // linear, no warm-up
  EXPECT_DOUBLE_EQ(lr_factor(s, 0, 100), 1.0);
  EXPECT_DOUBLE_EQ(lr_factor(s, 50, 100), 0.5);
  EXPECT_DOUBLE_EQ(lr_factor(s, 99, 100), 0.01);
  s.min_lr_ratio = 0.1;
  EXPECT_DOUBLE_EQ(lr_factor(s, 100, 100), 0.1);
}

TEST(Schedule, WarmupThenCosineToTheFloor) {
  ScheduleConfig s;
  s.type = "cosine";
  s.warmup_steps = 10;
  s.min_lr_ratio = 0.1;
  EXPECT_DOUBLE_EQ(lr_factor(s, 0, 110), 0.0);
  EXPECT_DOUBLE_EQ(lr_factor(s, 5, 110), 0.5);
  EXPECT_DOUBLE_EQ(lr_factor(s, 10, 110), 1.0);
  EXPECT_NEAR(lr_factor(s, 60, 110), 0.55, 1e-12);
  EXPECT_NEAR(lr_factor(s, 110, 110), 0.1, 1e-12);
  s.type = "constant";
  s.warmup_steps = 0;
  s.warmup_ratio = 0.05;
  EXPECT_EQ(warmup_steps(s, 110), 6);
  EXPECT_DOUBLE_EQ(lr_factor(s, 3, 110), 0.5);
  EXPECT_DOUBLE_EQ(lr_factor(s, 100, 110), 1.0);
}

}  // namespace
}  // namespace aim::train
