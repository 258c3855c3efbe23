// The model's layout, parameter counts, initialisation, and checkpoint loading/saving.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "aim/core/checkpoint.h"
#include "aim/core/config.h"
#include "aim/core/error.h"
#include "aim/core/safetensors.h"
#include "aim/model/aim.h"
#include "aim/model/loader.h"
#include "aim/model/registry.h"
#include "test_util.h"

namespace aim {
namespace {

namespace fs = std::filesystem;

struct OfficialLayout {
  std::vector<LayoutEntry> entries;
  int64_t total = -1;
};

OfficialLayout read_layout(const fs::path& path) {
  OfficialLayout out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("total ", 0) == 0) {
      out.total = std::stoll(line.substr(6));
      continue;
    }
    const auto space = line.find(' ');
    LayoutEntry e{line.substr(0, space), {}};
    std::stringstream dims(line.substr(space + 2, line.size() - space - 3));
    std::string d;
    while (std::getline(dims, d, ',')) e.shape.push_back(std::stoll(d));
    out.entries.push_back(e);
  }
  return out;
}

class OfficialSizes : public ::testing::TestWithParam<std::string> {};

TEST_P(OfficialSizes, LayoutAndTotalEqualTheOfficialModel) {
  const std::string size = GetParam();
  auto cfg = load_config(test::source_dir() + "/configs/" + size + ".yaml").model;
  auto official = read_layout(test::fixtures_dir() / "official_layout" / (size + ".txt"));
  ASSERT_FALSE(official.entries.empty());
  auto ours = official_layout(cfg);
  ASSERT_EQ(ours.size(), official.entries.size());
  for (size_t i = 0; i < ours.size(); ++i) {
    EXPECT_EQ(ours[i].key, official.entries[i].key) << "entry " << i;
    EXPECT_EQ(ours[i].shape, official.entries[i].shape) << ours[i].key;
  }
  EXPECT_EQ(count_parameters(cfg).total(), official.total);
  std::printf("    %s: %zu entries, %lld parameters (official %lld)\n", size.c_str(), ours.size(),
              (long long)count_parameters(cfg).total(), (long long)official.total);
}

INSTANTIATE_TEST_SUITE_P(Configs, OfficialSizes,
                         ::testing::Values("aim_b", "aim_l", "aim_xl", "aim_1b"));

TEST(AimModel, BuiltModelHasTheAnalyticLayout) {
  for (bool group : {true, false}) {
    for (const char* layer : {"Mamba2", "Mamba1"}) {
      auto cfg = test::tiny_model_config(group, layer);
      AimModel model(cfg);
      auto sd = official_state_dict(model);
      auto layout = official_layout(cfg);
      ASSERT_EQ(sd.size(), layout.size()) << layer << " group " << group;
      for (size_t i = 0; i < sd.size(); ++i) {
        EXPECT_EQ(sd[i].first, layout[i].key);
        EXPECT_EQ(sd[i].second.sizes().vec(), layout[i].shape) << sd[i].first;
      }
      EXPECT_EQ(model->num_parameters(), count_parameters(cfg).total());
    }
  }
}

std::map<std::string, torch::Tensor> params_of(const AimModel& model) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& item : model->named_parameters(true)) out[item.key()] = item.value().detach();
  return out;
}

TEST(AimModel, InitialisationFollowsTheOfficialCode) {
  torch::manual_seed(0);
  for (bool group : {false, true}) {
    auto cfg = test::tiny_model_config(group, "Mamba2");
    cfg.n_layer = 6;
    AimModel model(cfg);
    auto p = params_of(model);
    const std::string l0 = "backbone.layers.0.";
    auto dt = torch::softplus(p[l0 + "mixer.dt_bias"]);
    EXPECT_GE(dt.min().item<float>(), 0.001f * 0.999f);
    EXPECT_LE(dt.max().item<float>(), 0.1f * 1.001f);
    auto a = torch::exp(p[l0 + "mixer.A_log"]);
    EXPECT_GE(a.min().item<float>(), 1.0f - 1e-5f);
    EXPECT_LE(a.max().item<float>(), 16.0f + 1e-4f);
    EXPECT_TRUE(torch::equal(p[l0 + "mixer.D"], torch::ones_like(p[l0 + "mixer.D"])));
    EXPECT_TRUE(torch::equal(p[l0 + "norm.weight"], torch::ones_like(p[l0 + "norm.weight"])));
    const auto& out = p[l0 + "mixer.out_proj.weight"];
    const double bound = 1.0 / std::sqrt(double(cfg.d_inner())) / std::sqrt(double(cfg.n_layer));
    EXPECT_LE(out.abs().max().item<double>(), bound * 1.0001);
    EXPECT_GT(out.abs().max().item<double>(), bound * 0.9);
    const double emb_std = p["backbone.embeddings.word_embeddings.weight"].std().item<double>();
    EXPECT_NEAR(emb_std, 0.02, 0.002);
    EXPECT_EQ(p["backbone.final_layer.adaLN_modulation.1.weight"].abs().max().item<float>(), 0.f);
    if (group) {
      EXPECT_EQ(p["backbone.adaln_group.1.bias"].abs().max().item<float>(), 0.f);
      EXPECT_GT(p["backbone.adaln_group.1.weight"].abs().max().item<float>(), 0.f);
      const double sst = p[l0 + "scale_shift_table"].std().item<double>();
      EXPECT_NEAR(sst, 1.0 / std::sqrt(double(cfg.d_model)), 0.3 / std::sqrt(double(cfg.d_model)));
    } else {
      // Zero-initialised adaLN: every block starts as the identity on the residual stream.
      EXPECT_EQ(p[l0 + "adaLN_modulation.1.weight"].abs().max().item<float>(), 0.f);
      EXPECT_EQ(p[l0 + "adaLN_modulation.1.bias"].abs().max().item<float>(), 0.f);
    }
  }
  auto cfg1 = test::tiny_model_config(false, "Mamba1");
  AimModel m1(cfg1);
  auto p1 = params_of(m1);
  auto a1 = torch::exp(p1["backbone.layers.0.mixer.A_log"]);
  EXPECT_TRUE(torch::allclose(a1[3], torch::arange(1, cfg1.ssm.d_state + 1, torch::kFloat)));
  auto dt1 = torch::softplus(p1["backbone.layers.0.mixer.dt_proj.bias"]);
  EXPECT_GE(dt1.min().item<float>(), 0.001f * 0.999f);
  EXPECT_LE(dt1.max().item<float>(), 0.1f * 1.001f);
  // mamba_ssm's Mamba: dt_proj.weight uniform in +-dt_rank^-0.5 (dt_scale 1), D ones, the conv
  // bias left at nn.Conv1d's init (not zeroed as other biases are), out_proj rescaled by
  // 1/sqrt(n_layer) after kaiming_uniform(a=sqrt(5)).
  const auto& dtw = p1["backbone.layers.0.mixer.dt_proj.weight"];
  const double dt_bound = 1.0 / std::sqrt(double(cfg1.ssm.dt_rank));
  EXPECT_LE(dtw.abs().max().item<double>(), dt_bound * 1.0001);
  EXPECT_GT(dtw.abs().max().item<double>(), dt_bound * 0.8);
  const auto& d1 = p1["backbone.layers.0.mixer.D"];
  EXPECT_TRUE(torch::equal(d1, torch::ones_like(d1)));
  EXPECT_GT(p1["backbone.layers.0.mixer.conv1d.bias"].abs().max().item<float>(), 0.f);
  const auto& out1 = p1["backbone.layers.0.mixer.out_proj.weight"];
  const double bound1 = 1.0 / std::sqrt(double(cfg1.d_inner())) / std::sqrt(double(cfg1.n_layer));
  EXPECT_LE(out1.abs().max().item<double>(), bound1 * 1.0001);
  EXPECT_GT(out1.abs().max().item<double>(), bound1 * 0.8);
}

class CheckpointFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("aim_ckpt_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};


TEST_F(CheckpointFiles, SaveLoadRoundTripGivesTheSameModel) {
  torch::manual_seed(5);
  auto cfg = test::tiny_model_config(true, "Mamba2");
  AimModel a(cfg);
  // Non-trivial adaLN so the round trip is tested on real conditioning.
  for (auto& p : a->parameters()) p.data().add_(torch::randn_like(p) * 0.01);
  const auto path = (dir_ / "model.safetensors").string();
  save_aim_model(a, path);
  std::ofstream(dir_ / "config.yaml") << config_to_yaml(load_config(test::source_dir() + "/configs/tiny.yaml"));
  auto ref = find_checkpoint(dir_.string());
  EXPECT_EQ(ref.kind, CheckpointKind::kRunDir);
  auto b = load_aim_model(ref);
  auto pa = params_of(a), pb = params_of(b);
  for (const auto& [k, v] : pa) EXPECT_TRUE(torch::equal(v, pb[k])) << k;
  a->eval();
  auto tokens = torch::randint(cfg.vocab_size, {2, 9}, torch::kLong);
  auto labels = torch::tensor({int64_t{1}, cfg.num_classes}, torch::kLong);
  EXPECT_TRUE(torch::equal(a->forward(tokens, labels), b->forward(tokens, labels)));
}

TEST_F(CheckpointFiles, MismatchesAreReportedByName) {
  auto cfg = test::tiny_model_config(true, "Mamba2");
  AimModel model(cfg);
  auto sd = official_state_dict(model);
  std::map<std::string, torch::Tensor> m(sd.begin(), sd.end());
  m.erase("mamba.backbone.layers.1.mixer.A_log");
  m["mamba.backbone.layers.0.mixer.in_proj.weight"] = torch::zeros({3, 5});
  m["mamba.backbone.extra.weight"] = torch::zeros({2});
  m["vqvae.encoder.conv_in.weight"] = torch::zeros({1});  // the tokenizer's: ignored here
  auto msg = test::error_of([&] { load_official_state_dict(model, m, "ckpt/model.safetensors"); });
  EXPECT_NE(msg.find("ckpt/model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing: mamba.backbone.layers.1.mixer.A_log"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unexpected: mamba.backbone.extra.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("shape mismatch: mamba.backbone.layers.0.mixer.in_proj.weight: checkpoint [3, 5], model ["),
            std::string::npos) << msg;
  EXPECT_EQ(msg.find("vqvae"), std::string::npos) << msg;
}

TEST_F(CheckpointFiles, TiedWeightUnderEitherName) {
  auto cfg = test::tiny_model_config(true, "Mamba2");
  AimModel model(cfg), other(cfg);
  auto sd = official_state_dict(model);
  const std::string emb = "mamba.backbone.embeddings.word_embeddings.weight";
  for (const std::string keep : {emb, std::string("mamba.lm_head.weight")}) {
    std::map<std::string, torch::Tensor> m;
    for (const auto& [k, v] : sd) {
      if ((k == emb || k == "mamba.lm_head.weight") && k != keep) continue;
      m[k] = v;
    }
    load_official_state_dict(other, m, "x");
    EXPECT_TRUE(torch::equal(other->backbone->embeddings->word_embeddings->weight,
                             model->backbone->embeddings->word_embeddings->weight)) << keep;
  }
  std::map<std::string, torch::Tensor> bad(sd.begin(), sd.end());
  bad["mamba.lm_head.weight"] = bad[emb] + 1;
  auto msg = test::error_of([&] { load_official_state_dict(other, bad, "x"); });
  EXPECT_NE(msg.find("differs"), std::string::npos) << msg;
}

TEST_F(CheckpointFiles, DirectoryErrorsSayWhatIsMissing) {
  auto msg = test::error_of([&] { find_checkpoint((dir_ / "nope").string()); });
  EXPECT_NE(msg.find("no such file"), std::string::npos) << msg;
  msg = test::error_of([&] { find_checkpoint(dir_.string()); });
  EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
  std::ofstream(dir_ / "config.json") << "{}";
  std::ofstream(dir_ / "pytorch_model.bin") << "x";
  msg = test::error_of([&] { find_checkpoint(dir_.string()); });
  EXPECT_NE(msg.find("convert_checkpoint.py"), std::string::npos) << msg;
  msg = test::error_of([&] { find_checkpoint((dir_ / "pytorch_model.bin").string()); });
  EXPECT_NE(msg.find("expected a directory or a .safetensors file"), std::string::npos) << msg;
  // Shards are named as what is there.
  fs::remove(dir_ / "pytorch_model.bin");
  std::ofstream(dir_ / "model.safetensors.index.json") << "{}";
  msg = test::error_of([&] { find_checkpoint(dir_.string()); });
  EXPECT_NE(msg.find("model.safetensors.index.json"), std::string::npos) << msg;
  // A bare weights file takes NAME.json (the converter's) or config.json beside it when that is a
  // MambaConfig; otherwise it asks for --config.
  const auto fixture = test::fixtures_dir() / "aim" / "mamba2_tiny";
  fs::copy_file(fixture / "model.safetensors", dir_ / "w.safetensors");
  msg = test::error_of([&] { find_checkpoint((dir_ / "w.safetensors").string()); });
  EXPECT_NE(msg.find("needs --config"), std::string::npos) << msg;  // config.json here is {}
  fs::copy_file(fixture / "config.json", dir_ / "w.json");
  const auto ref = find_checkpoint((dir_ / "w.safetensors").string());
  EXPECT_EQ(ref.config_path, (dir_ / "w.json").string());
  EXPECT_EQ(checkpoint_model_config(ref).d_model, model_config_from_hf_json((fixture / "config.json").string()).d_model);
}

TEST(AimModel, ClassDropoutOnlyWhenTraining) {
  torch::manual_seed(9);
  auto cfg = test::tiny_model_config(true, "Mamba2");
  cfg.class_dropout = 0.5;
  AimModel model(cfg);
  auto tokens = torch::randint(cfg.vocab_size, {64, 4}, torch::kLong);
  auto labels = torch::randint(cfg.num_classes, {64}, torch::kLong);
  model->eval();
  auto a = model->forward(tokens, labels), b = model->forward(tokens, labels);
  EXPECT_TRUE(torch::equal(a, b));
  model->train();
  auto c = model->forward(tokens, labels);
  EXPECT_FALSE(torch::allclose(a, c));
}

// The decoding state carries the step's parameter-derived fp32 values (A = -exp(A_log), D, the
// dt bias) so that a token launches no conversion for them; a state without them (the step then
// derives them) gives the same bits, for both mixers and a bf16 model.
TEST(AimModel, StepConstantsOfTheStateGiveTheSameSteps) {
  for (const char* layer : {"Mamba2", "Mamba1"}) {
    torch::manual_seed(4);
    AimModel model(test::tiny_model_config(true, layer));
    model->eval();
    model->to(torch::kBFloat16);
    torch::NoGradGuard no_grad;
    const auto labels = torch::randint(10, {3}, torch::kLong);
    auto with = model->start(labels, torch::kFloat);
    auto without = model->start(labels, torch::kFloat);
    for (auto& s : without.layers) s.A = s.D = s.dt_bias = torch::Tensor();
    ASSERT_TRUE(with.layers[0].A.defined()) << layer;
    EXPECT_EQ(with.layers[0].A.scalar_type(), torch::kFloat) << layer;
    torch::Tensor tok;
    for (int t = 0; t < 4; ++t) {
      const auto a = model->step(with, tok), b = model->step(without, tok);
      ASSERT_TRUE(torch::equal(a, b)) << layer << " step " << t;
      tok = a.argmax(-1);
    }
  }
}

// The options the official fixtures leave at their defaults (in_proj/out_proj bias, no conv bias,
// a dt_rank other than auto): recurrent steps and prefill + steps equal the parallel forward.
// Every parameter is perturbed, so that the (zero-initialised) biases take part.
TEST(AimModel, NonDefaultBiasesStepAsTheParallelForward) {
  for (const char* layer : {"Mamba1", "Mamba2"}) {
    auto cfg = test::tiny_model_config(false, layer);
    cfg.ssm.bias = true;
    cfg.ssm.conv_bias = false;
    if (std::string(layer) == "Mamba1") cfg.ssm.dt_rank = 5;
    cfg.resolve();
    cfg.validate();
    torch::manual_seed(7);
    AimModel model(cfg);
    model->eval();
    torch::NoGradGuard no_grad;
    bool in_bias = false, conv_bias = false;
    for (auto& item : model->named_parameters()) {
      const std::string& n = item.key();
      in_bias |= n.find("mixer.in_proj.bias") != std::string::npos;
      conv_bias |= n.find("mixer.conv1d.bias") != std::string::npos;
      if (n.find("A_log") == std::string::npos) item.value().add_(torch::randn_like(item.value()) * 0.05);
    }
    ASSERT_TRUE(in_bias) << layer;
    ASSERT_FALSE(conv_bias) << layer;
    const int64_t batch = 2, len = 9;
    const auto tokens = torch::randint(cfg.vocab_size, {batch, len}, torch::kLong);
    const auto labels = torch::tensor({1, 3}, torch::kLong);
    const auto pos = torch::arange(len - 1, torch::kLong) + cfg.decode_position_offset;
    const auto parallel = model->forward(tokens.narrow(1, 0, len - 1), labels, pos);  // [B, len, V]
    auto state = model->start(labels);
    std::vector<torch::Tensor> steps;
    for (int64_t t = 0; t < len; ++t)
      steps.push_back(model->step(state, t == 0 ? torch::Tensor() : tokens.select(1, t - 1)));
    const auto stepped = torch::stack(steps, 1);
    test::expect_close(std::string(layer) + " parallel forward == recurrent steps", stepped, parallel, 1e-4);
    auto st = model->start(labels);
    std::vector<torch::Tensor> rest{model->prefill(st, tokens.narrow(1, 0, 4))};
    for (int64_t t = 5; t < len; ++t) rest.push_back(model->step(st, tokens.select(1, t - 1)));
    test::expect_close(std::string(layer) + " prefill(4) + steps == steps", torch::stack(rest, 1),
                       stepped.narrow(1, 4, len - 4), 1e-4);
  }
}

}  // namespace
}  // namespace aim
