// tools/convert_checkpoint.py as a user runs it, on checkpoints saved the way LlamaGen and AiM
// save them (tests/tools/make_checkpoints.py builds them from the fixture weights). Outputs are
// read back with the project's loaders and compared bit for bit with the fixtures.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include "aim/core/config.h"
#include "aim/core/safetensors.h"
#include "aim/eval/inception.h"
#include "aim/model/aim.h"
#include "aim/model/loader.h"
#include "aim/model/vq.h"
#include "test_util.h"

#include <nlohmann/json.hpp>

namespace aim {
namespace {

namespace fs = std::filesystem;
using TensorMap = std::map<std::string, torch::Tensor>;

/// The EMA weights make_checkpoints.py stores: model + 2^-10 on every floating tensor.
constexpr double kEmaDelta = 0.0009765625;

using test::RunResult;
using test::run_shell;

using test::read_bytes;
using test::shell_quote;

fs::path fixture(const std::string& rel) { return test::fixtures_dir() / rel; }
std::string tool() { return test::source_dir() + "/tools/convert_checkpoint.py"; }
std::string generator() { return test::source_dir() + "/tests/tools/make_checkpoints.py"; }

/// Every name of `expected` present in `actual` and no other, each tensor with the same dtype,
/// shape and bytes.
void expect_identical(const TensorMap& actual, const TensorMap& expected, const std::string& what) {
  size_t mismatches = 0;
  for (const auto& [name, e] : expected) {
    auto it = actual.find(name);
    if (it == actual.end()) {
      ADD_FAILURE() << what << ": missing " << name;
      ++mismatches;
      continue;
    }
    const auto& a = it->second;
    if (a.scalar_type() != e.scalar_type() || a.sizes() != e.sizes() || !torch::equal(a, e)) {
      const double diff = a.sizes() == e.sizes()
                              ? (a.to(torch::kDouble) - e.to(torch::kDouble)).abs().max().item<double>()
                              : -1.0;
      ADD_FAILURE() << what << ": " << name << " differs: " << a.scalar_type() << " "
                    << a.sizes() << " vs expected " << e.scalar_type() << " " << e.sizes()
                    << ", max|diff| " << diff;
      ++mismatches;
    }
  }
  for (const auto& [name, a] : actual) {
    if (!expected.count(name)) {
      ADD_FAILURE() << what << ": unexpected " << name;
      ++mismatches;
    }
  }
  std::printf("    %-52s %zu tensors, %zu mismatches\n", what.c_str(), expected.size(), mismatches);
}

TensorMap with_prefix(const TensorMap& sd, const std::string& prefix, bool strip) {
  TensorMap out;
  for (const auto& [k, v] : sd) {
    if (!strip) out[prefix + k] = v;
    else if (k.rfind(prefix, 0) == 0) out[k.substr(prefix.size())] = v;
  }
  return out;
}

/// The entries whose name starts with `prefix`, names unchanged.
TensorMap subset(const TensorMap& sd, const std::string& prefix) {
  TensorMap out;
  for (const auto& [k, v] : sd)
    if (k.rfind(prefix, 0) == 0) out[k] = v;
  return out;
}

TensorMap map_floating(const TensorMap& sd, const std::function<torch::Tensor(const torch::Tensor&)>& f) {
  TensorMap out;
  for (const auto& [k, v] : sd) out[k] = v.is_floating_point() ? f(v) : v;
  return out;
}

/// The named tensors a loaded module gives back, as a map.
TensorMap as_map(const std::vector<std::pair<std::string, torch::Tensor>>& named) {
  TensorMap out;
  for (const auto& [k, v] : named) out[k] = v;
  return out;
}

class ConvertCheckpoint : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string python = test::python();
    if (python.empty() || !fs::exists(python)) {
      skip_reason_ = "no Python at AIM_PYTHON '" + python + "' (configure with -DAIM_PYTHON=...)";
      return;
    }
    auto probe = run_shell(shell_quote(python) + " -c 'import torch'");
    if (probe.code != 0) {
      skip_reason_ = python + " cannot import torch, which the converter needs:\n" + probe.output;
      return;
    }
    // The inputs are generated once and shared by every test process (a test can run alone
    // under --gtest_filter), in the build directory, named after the generator, the converter
    // and the fixtures they read; older generations are removed.
    std::string key = read_bytes(generator()) + read_bytes(tool());
    for (const char* f : {"vq/vq16_tiny/model.safetensors", "aim/mamba2_tiny/model.safetensors",
                          "aim/mamba1_tiny/model.safetensors", "aim/mamba2_tiny/config.json"})
      key += std::to_string(fs::file_size(fixture(f))) + f;
    inputs_ = test::generated_once("convert_checkpoint_", key, "make_checkpoints.py", [&](const fs::path& tmp) {
      return run_shell(shell_quote(python) + " " + shell_quote(generator()) + " " +
                       shell_quote(test::fixtures_dir().string()) + " " + shell_quote(tmp.string()));
    }, setup_error_);
    if (!setup_error_.empty()) return;
    out_ = fs::temp_directory_path() / ("aim_convert_out_" + std::to_string(getpid()));
    fs::remove_all(out_);
    fs::create_directories(out_);
  }

  static void TearDownTestSuite() {
    if (!out_.empty()) fs::remove_all(out_);
  }

  void SetUp() override {
    if (!skip_reason_.empty()) GTEST_SKIP() << skip_reason_;
    ASSERT_TRUE(setup_error_.empty()) << setup_error_;
  }

  /// Runs the converter; `env` is prepended (VAR=value ...).
  static RunResult convert(const std::string& args, const std::string& env = "") {
    auto r = run_shell(env + (env.empty() ? "" : " ") + shell_quote(test::python()) + " " +
                       shell_quote(tool()) + " " + args);
    std::printf("  $ convert_checkpoint.py %s -> exit %d\n", args.c_str(), r.code);
    return r;
  }
  static std::string in(const std::string& rel) { return shell_quote((inputs_ / rel).string()); }
  static fs::path out(const std::string& rel) { return out_ / rel; }

  static inline std::string skip_reason_, setup_error_;
  static inline fs::path inputs_, out_;
};

// ---------------------------------------------------------------------------- tokenizer

void expect_vq_config_equal(const VqConfig& a, const VqConfig& b) {
  EXPECT_EQ(a.codebook_size, b.codebook_size);
  EXPECT_EQ(a.codebook_embed_dim, b.codebook_embed_dim);
  EXPECT_EQ(a.codebook_l2_norm, b.codebook_l2_norm);
  EXPECT_EQ(a.ch, b.ch);
  EXPECT_EQ(a.ch_mult, b.ch_mult);
  EXPECT_EQ(a.z_channels, b.z_channels);
  EXPECT_EQ(a.num_res_blocks, b.num_res_blocks);
  EXPECT_EQ(a.dropout, b.dropout);
}

/// Builds the tokenizer from the written config, loads the written weights and checks what the
/// module holds against `expected` (fixture names, no prefix).
void expect_vq_loads(const fs::path& weights, const fs::path& config, const TensorMap& expected,
                     const std::string& prefix = "") {
  auto cfg = vq_config_from_json(config.string());
  expect_vq_config_equal(cfg, vq_config_from_json(fixture("vq/vq16_tiny/config.json").string()));
  VqModel vq(cfg);
  load_vq_state_dict(vq, load_safetensors(weights.string()), weights.string(), prefix);
  expect_identical(as_map(vq_state_dict(vq)), expected, "VqModel loaded from " + weights.filename().string());
}

TEST_F(ConvertCheckpoint, HelpExplainsUsage) {
  auto r = convert("--help");
  EXPECT_EQ(r.code, 0) << r.output;
  for (const char* s : {"usage:", "--use-ema", "--prefix", "--dtype", "llamagen-vq", "aim-trainer", "inception"})
    EXPECT_NE(r.output.find(s), std::string::npos) << s << "\n" << r.output;
}

TEST_F(ConvertCheckpoint, LlamaGenTrainingCheckpoint) {
  const auto fix = load_safetensors(fixture("vq/vq16_tiny/model.safetensors").string());
  auto r = convert(in("llamagen/vq.pt") + " --out " + shell_quote(out("vq.safetensors").string()));
  ASSERT_EQ(r.code, 0) << r.output;
  std::printf("%s", r.output.c_str());
  for (const char* s : {"llamagen-vq", "steps 123", "['model']", "vq.json"})
    EXPECT_NE(r.output.find(s), std::string::npos) << s << "\n" << r.output;
  expect_identical(load_safetensors(out("vq.safetensors").string()), fix, "vq.safetensors");
  expect_vq_loads(out("vq.safetensors"), out("vq.json"), fix);
}

TEST_F(ConvertCheckpoint, LlamaGenEmaAndBf16) {
  const auto fix = load_safetensors(fixture("vq/vq16_tiny/model.safetensors").string());
  auto r = convert(in("llamagen/vq.pt") + " --use-ema --out " + shell_quote(out("ema.safetensors").string()));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("['ema']"), std::string::npos) << r.output;
  const auto ema = map_floating(fix, [](const torch::Tensor& t) { return t + kEmaDelta; });
  expect_identical(load_safetensors(out("ema.safetensors").string()), ema, "ema.safetensors (--use-ema)");
  expect_vq_loads(out("ema.safetensors"), out("ema.json"), ema);

  r = convert(in("llamagen/vq.pt") + " --dtype bf16 --out " + shell_quote(out("bf16.safetensors").string()));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("-> bfloat16"), std::string::npos) << r.output;
  auto bf16 = map_floating(fix, [](const torch::Tensor& t) { return t.to(torch::kBFloat16); });
  // The usage history holds code indices in a float buffer: kept as it is (bf16 rounds 301 to 300).
  bf16["quantize.codebook_used"] = fix.at("quantize.codebook_used");
  expect_identical(load_safetensors(out("bf16.safetensors").string()), bf16, "bf16.safetensors (--dtype bf16)");
  auto used = fix;
  used["quantize.codebook_used"] = torch::arange(301, 301 + fix.at("quantize.codebook_used").numel(), torch::kFloat);
  save_safetensors(out("used.safetensors").string(),
                   std::vector<std::pair<std::string, torch::Tensor>>(used.begin(), used.end()));
  r = convert(shell_quote(out("used.safetensors").string()) + " --dtype bf16 --out " +
              shell_quote(out("used_bf16.safetensors").string()));
  ASSERT_EQ(r.code, 0) << r.output;
  const auto converted = load_safetensors(out("used_bf16.safetensors").string());
  EXPECT_TRUE(torch::equal(converted.at("quantize.codebook_used"), used.at("quantize.codebook_used")));
  EXPECT_EQ(converted.at("encoder.conv_in.weight").scalar_type(), torch::kBFloat16);
}

TEST_F(ConvertCheckpoint, PrefixAddsAndStrips) {
  const auto fix = load_safetensors(fixture("vq/vq16_tiny/model.safetensors").string());
  // The released vq_ds16_c2i.pt form ({"model": ...}) made loadable as AiM's tokenizer part.
  auto r = convert(in("llamagen/vq_ds16_c2i.pt") + " --prefix vqvae. --out " +
                   shell_quote(out("vqvae.safetensors").string()));
  ASSERT_EQ(r.code, 0) << r.output;
  expect_identical(load_safetensors(out("vqvae.safetensors").string()), with_prefix(fix, "vqvae.", false),
                   "vqvae.safetensors (--prefix vqvae.)");
  expect_vq_loads(out("vqvae.safetensors"), out("vqvae.json"), fix, "vqvae.");

  // A DDP-wrapped state dict (module.*).
  r = convert(in("bad/module_prefixed.bin") + " --prefix module.- --out " +
              shell_quote(out("unwrapped.safetensors").string()));
  ASSERT_EQ(r.code, 0) << r.output;
  expect_identical(load_safetensors(out("unwrapped.safetensors").string()), fix,
                   "unwrapped.safetensors (--prefix module.-)");

  // The tokenizer taken out of an AiM checkpoint.
  const auto aim_fix = load_safetensors(fixture("aim/mamba2_tiny/model.safetensors").string());
  r = convert(in("aim/pytorch_model.bin") + " --prefix vqvae.- --out " +
              shell_quote(out("aim_vq.safetensors").string()));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("llamagen-vq"), std::string::npos) << r.output;
  expect_identical(load_safetensors(out("aim_vq.safetensors").string()), with_prefix(aim_fix, "vqvae.", true),
                   "aim_vq.safetensors (--prefix vqvae.-)");
  auto cfg = vq_config_from_json(out("aim_vq.json").string());
  auto expected_cfg = vq_config_from_json(fixture("aim/mamba2_tiny/config.json").string(), "fixture.vq");
  expect_vq_config_equal(cfg, expected_cfg);
}

// ---------------------------------------------------------------------------- AiM

/// Builds AimModel from the written config.json, loads the written weights and compares the
/// module's tensors (official names) and the tokenizer part with the fixture case.
void expect_aim_loads(const fs::path& weights, const fs::path& config, const std::string& fixture_case) {
  const auto fix = load_safetensors(fixture("aim/" + fixture_case + "/model.safetensors").string());
  auto cfg = model_config_from_hf_json(config.string());
  auto expected = model_config_from_hf_json(fixture("aim/" + fixture_case + "/config.json").string());
  // chunk_size only tiles the scan (same results) and is not in the tensors: it cannot be inferred.
  cfg.ssm.chunk_size = expected.ssm.chunk_size;
  EXPECT_TRUE(cfg == expected) << config << " differs from the fixture's config:\n"
                               << model_config_to_hf_json(cfg) << "\nvs\n"
                               << model_config_to_hf_json(expected);
  AimModel model(cfg);
  const auto sd = load_safetensors(weights.string());
  load_official_state_dict(model, sd, weights.string());
  expect_identical(as_map(official_state_dict(model)), subset(fix, "mamba."),
                   "AimModel loaded from " + weights.filename().string());
  bool has_vq = false;
  for (const auto& [k, v] : sd) has_vq = has_vq || k.rfind("vqvae.", 0) == 0;
  if (has_vq) {
    VqModel vq(vq_config_from_json(fixture("aim/" + fixture_case + "/config.json").string(), "fixture.vq"));
    load_vq_state_dict(vq, sd, weights.string(), "vqvae.");
    expect_identical(as_map(vq_state_dict(vq, "vqvae.")), subset(fix, "vqvae."),
                     "VqModel (vqvae.) loaded from " + weights.filename().string());
  }
}

TEST_F(ConvertCheckpoint, AimStateDictInfersTheConfig) {
  for (const auto& [input, fixture_case] : {std::pair<std::string, std::string>{"aim", "mamba2_tiny"},
                                            {"aim_mamba1", "mamba1_tiny"}}) {
    SCOPED_TRACE(fixture_case);
    const auto dir = out(fixture_case);
    auto r = convert(in(input + "/pytorch_model.bin") + " --out " + shell_quote(dir.string() + "/"));
    ASSERT_EQ(r.code, 0) << r.output;
    std::printf("%s", r.output.c_str());
    EXPECT_NE(r.output.find("derived from tensor shapes"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("under both names"), std::string::npos) << r.output;
    const auto fix = load_safetensors(fixture("aim/" + fixture_case + "/model.safetensors").string());
    const auto sd = load_safetensors((dir / "model.safetensors").string());
    // The fixture stores the tied weight under both names, as the converter must.
    expect_identical(sd, fix, fixture_case + "/model.safetensors");
    expect_aim_loads(dir / "model.safetensors", dir / "config.json", fixture_case);
    // The fixture's vqvae.* tokenizer is not VQ-16: its config goes to vq.json, where aim finds it
    // (it assumed VQ-16 beside an AiM config.json, and the tensors did not fit).
    EXPECT_NE(r.output.find("vq.json (the vqvae.* tokenizer: not VQ-16"), std::string::npos) << r.output;
    const auto tokenizer = load_vq_model(dir.string(), "", "--vq");
    expect_vq_config_equal(tokenizer.model->config,
                           vq_config_from_json(fixture("aim/" + fixture_case + "/config.json").string(), "fixture.vq"));
    // aim info describes that tokenizer too (it described VQ-16, 71.88M parameters).
    const auto info = test::run_shell(test::aim_binary() + " info " + shell_quote(dir.string()));
    ASSERT_EQ(info.code, 0) << info.output;
    EXPECT_NE(info.output.find("sampling: tokenizer weights"), std::string::npos) << info.output;
    EXPECT_EQ(info.output.find("(71.88M"), std::string::npos) << info.output;
    // A safetensors input keeps the tied pair as two tensors: still one parameter in the summary.
    auto again = convert(shell_quote((dir / "model.safetensors").string()) + " --out " + shell_quote(out(fixture_case + "_again/").string()));
    ASSERT_EQ(again.code, 0) << again.output;
    auto params = [](const std::string& o) {
      const auto at = o.find("  parameters  ");
      return at == std::string::npos ? std::string("(none)") : o.substr(at, o.find('\n', at) - at);
    };
    EXPECT_EQ(params(again.output), params(r.output));
  }
}

TEST_F(ConvertCheckpoint, ConfigInSaysWhatTheShapesCannot) {
  // Shapes fix ngroups x d_state (16 here) only: without a config the converter assumes ngroups 1
  // and says so; --config-in gives the run's own (ngroups 2 x d_state 8), checked and copied.
  auto r = convert(in("aim/pytorch_model.bin") + " --out " + shell_quote(out("guessed/").string()));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("ngroups 1 assumed (shapes fix only ngroups * d_state = 16"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--config-in"), std::string::npos) << r.output;
  auto given = nlohmann::json::parse(read_bytes(fixture("aim/mamba2_tiny/config.json")));
  given["ssm_cfg"]["ngroups"] = 2;
  given["ssm_cfg"]["d_state"] = 8;
  std::ofstream(out("ngroups2.json")) << given.dump(2);
  r = convert(in("aim/pytorch_model.bin") + " --config-in " + shell_quote(out("ngroups2.json").string()) + " --out " +
              shell_quote(out("grouped/").string()));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("copied from " + out("ngroups2.json").string()), std::string::npos) << r.output;
  const auto cfg = model_config_from_hf_json(out("grouped/config.json").string());
  EXPECT_EQ(cfg.ssm.ngroups, 2);
  EXPECT_EQ(cfg.ssm.d_state, 8);
  // One the shapes contradict, one that is no MambaConfig, and one for a tokenizer are refused.
  given["ssm_cfg"]["d_state"] = 16;
  std::ofstream(out("wrong.json")) << given.dump(2);
  r = convert(in("aim/pytorch_model.bin") + " --config-in " + shell_quote(out("wrong.json").string()) + " --out " +
              shell_quote(out("wrong/").string()));
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("ngroups * d_state"), std::string::npos) << r.output;
  r = convert(in("aim/pytorch_model.bin") + " --config-in " + shell_quote(fixture("vq/vq16_tiny/config.json").string()) +
              " --out " + shell_quote(out("notmamba/").string()));
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("not a MambaConfig config.json"), std::string::npos) << r.output;
  r = convert(in("llamagen/vq.pt") + " --config-in " + shell_quote(out("ngroups2.json").string()) + " --out " +
              shell_quote(out("vq_in.safetensors").string()));
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("belongs to an AiM checkpoint"), std::string::npos) << r.output;
}

TEST_F(ConvertCheckpoint, OutWithoutTheSuffixIsAFolder) {
  // A file named like a folder was written before, which aim then refused as no weights file.
  auto r = convert(in("aim/pytorch_model.bin") + " --out " + shell_quote(out("weights/aim-tiny").string()));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(fs::is_regular_file(out("weights/aim-tiny/model.safetensors")));
  expect_aim_loads(out("weights/aim-tiny/model.safetensors"), out("weights/aim-tiny/config.json"), "mamba2_tiny");
}

TEST_F(ConvertCheckpoint, ConfigBesideTheWeightsIsCopied) {
  const auto fix = load_safetensors(fixture("aim/mamba2_tiny/model.safetensors").string());
  // MambaLMHeadModel.save_pretrained(): unprefixed names + config.json.
  auto r = convert(in("mamba_pretrained") + " --out " + shell_quote(out("pretrained/").string()));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("copied from"), std::string::npos) << r.output;
  EXPECT_EQ(read_bytes(out("pretrained/config.json")), read_bytes(inputs_ / "mamba_pretrained/config.json"));
  expect_identical(load_safetensors(out("pretrained/model.safetensors").string()),
                   with_prefix(fix, "mamba.", true), "pretrained/model.safetensors");
  expect_aim_loads(out("pretrained/model.safetensors"), out("pretrained/config.json"), "mamba2_tiny");

  // A Hugging Face snapshot whose model.safetensors keeps the tied weight once.
  r = convert(in("snapshot") + " --out " + shell_quote(out("snapshot/model.safetensors").string()));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(read_bytes(out("snapshot/config.json")), read_bytes(inputs_ / "snapshot/config.json"));
  expect_identical(load_safetensors(out("snapshot/model.safetensors").string()), fix, "snapshot/model.safetensors");
  expect_aim_loads(out("snapshot/model.safetensors"), out("snapshot/config.json"), "mamba2_tiny");
}

TEST_F(ConvertCheckpoint, TrainerCheckpointDirectoryOrItsWeightsFile) {
  const auto fix = load_safetensors(fixture("aim/mamba2_tiny/model.safetensors").string());
  for (const std::string input : {"trainer/checkpoint-250", "trainer/checkpoint-250/pytorch_model.bin"}) {
    SCOPED_TRACE(input);
    const std::string name = input.find(".bin") != std::string::npos ? "file" : "dir";
    auto r = convert(in(input) + " --kind aim-trainer --out " + shell_quote(out(name).string() + "/"));
    ASSERT_EQ(r.code, 0) << r.output;
    for (const char* s : {"aim-trainer", "global_step 250"})
      EXPECT_NE(r.output.find(s), std::string::npos) << s << "\n" << r.output;
    expect_identical(load_safetensors((out(name) / "model.safetensors").string()), fix,
                     name + "/model.safetensors");
    expect_aim_loads(out(name) / "model.safetensors", out(name) / "config.json", "mamba2_tiny");
  }
}

TEST_F(ConvertCheckpoint, BuiltInWriterGivesIdenticalTensors) {
  const std::string args = in("aim/pytorch_model.bin") + " --dtype bf16 --out ";
  auto a = convert(args + shell_quote(out("default.safetensors").string()));
  ASSERT_EQ(a.code, 0) << a.output;
  auto b = convert(args + shell_quote(out("builtin.safetensors").string()), "AIM_CONVERT_NO_SAFETENSORS=1");
  ASSERT_EQ(b.code, 0) << b.output;
  EXPECT_NE(b.output.find("AIM_CONVERT_NO_SAFETENSORS"), std::string::npos) << b.output;
  const auto line = a.output.substr(a.output.find("writer"));
  std::printf("    default run: %s", line.substr(0, line.find('\n') + 1).c_str());
  if (line.rfind("writer      built-in", 0) == 0)
    std::printf("    note: the safetensors package is not importable here, so both runs used the "
                "built-in writer\n");
  const auto fa = load_safetensors(out("default.safetensors").string());
  const auto fb = load_safetensors(out("builtin.safetensors").string());
  expect_identical(fb, fa, "built-in writer vs default writer");
  const auto fix = load_safetensors(fixture("aim/mamba2_tiny/model.safetensors").string());
  auto rounded = map_floating(fix, [](const torch::Tensor& t) { return t.to(torch::kBFloat16); });
  rounded["vqvae.quantize.codebook_used"] = fix.at("vqvae.quantize.codebook_used");  // indices: kept
  expect_identical(fb, rounded, "built-in writer vs bf16 rounding of the fixture");
  SafetensorsFile file(out("builtin.safetensors").string());
  EXPECT_EQ(file.metadata().count("format") ? file.metadata().at("format") : "", "pt");
}

// ---------------------------------------------------------------------------- FID Inception

TEST_F(ConvertCheckpoint, PytorchFidInceptionWeights) {
  // pytorch-fid's pt_inception-2015-12-05-6726825d.pth layout: a torch.save'd state dict with
  // every BatchNorm's num_batches_tracked; recognised without --kind.
  auto r = convert(in("inception/pt_inception-2015-12-05-6726825d.pth") + " --out " +
                   shell_quote(out("fid_inception.safetensors").string()));
  ASSERT_EQ(r.code, 0) << r.output;
  std::printf("%s", r.output.c_str());
  for (const char* s : {"kind        inception", "472 (94 BatchNorm num_batches_tracked dropped)",
                        "23,885,392", "-> float32 x472", "config      none"})
    EXPECT_NE(r.output.find(s), std::string::npos) << s << "\n" << r.output;
  EXPECT_FALSE(fs::exists(out("fid_inception.json"))) << "a config was written for the Inception";
  const auto expected = load_safetensors((inputs_ / "inception/expected.safetensors").string());
  ASSERT_EQ(expected.size(), 472u);
  expect_identical(load_safetensors(out("fid_inception.safetensors").string()), expected,
                   "fid_inception.safetensors");
  // The strict C++ loader takes it, and the module then holds exactly these tensors.
  eval::FidInceptionV3 model;
  eval::load_fid_inception(model, out("fid_inception.safetensors").string());
  TensorMap held;
  for (const auto& p : model->named_parameters()) held[p.key()] = p.value();
  for (const auto& b : model->named_buffers())
    if (b.key().find("num_batches_tracked") == std::string::npos) held[b.key()] = b.value();
  expect_identical(held, expected, "FidInceptionV3 loaded from fid_inception.safetensors");

  r = convert(in("inception/pt_inception-2015-12-05-6726825d.pth") + " --kind inception --dtype fp32 --out " +
              shell_quote(out("fid_inception_fp32/").string()));
  ASSERT_EQ(r.code, 0) << r.output;
  expect_identical(load_safetensors(out("fid_inception_fp32/model.safetensors").string()), expected,
                   "fid_inception_fp32/model.safetensors (--kind inception)");
}

// ---------------------------------------------------------------------------- refusals

TEST_F(ConvertCheckpoint, RefusesWhatItDoesNotKnow) {
  struct Case {
    std::string input, extra;
    std::vector<std::string> expect;  // substrings of the message
  };
  const std::vector<Case> cases = {
      {"bad/random.bin", "", {"random.bin", "not a checkpoint", "zip archive or a pickle"}},
      {"bad/unknown_keys.pt", "", {"unknown_keys.pt", "unknown top-level keys", "epoch", "scaler"}},
      {"bad/evil.pt", "", {"evil.pt", "refusing to unpickle", "system"}},
      {"bad/no_model.pt", "", {"no_model.pt", "no 'model'"}},
      {"bad/gpt.pt", "", {"gpt.pt", "neither a VQ tokenizer", "tok_embeddings.weight", "GPT-B"}},
      {"bad/truncated.pt", "", {"truncated.pt", "not a readable PyTorch checkpoint"}},
      {"bad/module_prefixed.bin", "", {"module_prefixed.bin", "--prefix module.-"}},
      {"trainer/checkpoint-250/training_args.bin", "",
       {"training_args.bin", "refusing to unpickle", "transformers.training_args.TrainingArguments"}},
      {"trainer/checkpoint-250/optimizer.pt", "", {"optimizer.pt", "optimizer state"}},
      {"llamagen/vq_ds16_c2i.pt", "--use-ema", {"vq_ds16_c2i.pt", "no 'ema' entry"}},
      {"aim/pytorch_model.bin", "--use-ema", {"pytorch_model.bin", "no EMA"}},
      {"aim/pytorch_model.bin", "--kind llamagen-vq",
       {"pytorch_model.bin", "--kind llamagen-vq expects", "found an AiM model", "--prefix vqvae.-"}},
      {"llamagen/vq.pt", "--prefix foo.-", {"vq.pt", "no key starts with 'foo.'"}},
      {"bad/inception_torchvision.pth", "",
       {"inception_torchvision.pth", "not pytorch-fid's FID Inception-v3 weights",
        "fc.weight: expected [1008, 2048], found [1000, 2048]", "unexpected 1: AuxLogits.fc.weight",
        "torchvision's ImageNet Inception-v3"}},
      {"inception/pt_inception-2015-12-05-6726825d.pth", "--dtype bf16", {"pt_inception-2015-12-05-6726825d.pth", "--dtype bf16", "float32 only"}},
      {"inception/pt_inception-2015-12-05-6726825d.pth", "--prefix fid.", {"pt_inception-2015-12-05-6726825d.pth", "--prefix fid.", "cannot be added"}},
      {"llamagen/vq.pt", "--kind inception", {"vq.pt", "not pytorch-fid's FID Inception", "missing 472"}},
      // Every tensor is checked, not only those the configuration is read from (layer 0).
      {"bad/aim_missing.bin", "", {"aim_missing.bin", "do not form an AiM language model",
                                   "missing 1: mamba.backbone.layers.2.mixer.D"}},
      {"bad/aim_misshapen.bin", "", {"aim_misshapen.bin", "shape mismatch: mamba.backbone.layers.3.mixer.in_proj.weight: "
                                     "expected [296, 64], found [8, 64]"}},
      {"bad/aim_unexpected.bin", "", {"aim_unexpected.bin", "unexpected 1: mamba.backbone.layers.1.mixer.x_proj.weight"}},
      {"bad/aim_vq_missing.bin", "", {"aim_vq_missing.bin", "VQ tokenizer under vqvae.",
                                      "missing 1: vqvae.decoder.conv_blocks.1.res.2.conv2.bias"}},
      {"bad/aim_mlp.bin", "", {"aim_mlp.bin", "gated MLP", "d_intermediate 128", "aim runs AiM's blocks only"}},
      {"bad/vq_misshapen.pt", "", {"vq_misshapen.pt", "do not form LlamaGen's VQ tokenizer",
                                   "encoder.mid.1.q.weight: expected [64, 64, 1, 1], found [64, 64, 3, 3]"}},
      {"bad/mismatch", "", {"mismatch/config.json", "does not describe these weights", "d_model: config 64, tensors 48",
                            "ssm_cfg.layer"}},
  };
  // evil.pt's payload would create this file.
  const auto marker = out("EXECUTED");
  int i = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.input + " " + c.extra);
    const auto target = out("refused" + std::to_string(i++) + ".safetensors");
    auto r = convert(in(c.input) + " " + c.extra + " --out " + shell_quote(target.string()),
                     "AIM_CONVERT_TEST_MARKER=" + shell_quote(marker.string()));
    std::printf("    %s", r.output.c_str());
    EXPECT_EQ(r.code, 1) << r.output;
    for (const auto& s : c.expect) EXPECT_NE(r.output.find(s), std::string::npos) << s << "\n" << r.output;
    EXPECT_FALSE(fs::exists(target)) << "an output was written for a refused input";
  }
  EXPECT_FALSE(fs::exists(marker)) << "evil.pt's payload ran";
}

}  // namespace
}  // namespace aim
