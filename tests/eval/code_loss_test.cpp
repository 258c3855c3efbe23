// aim eval-loss: the held-out loss of every fixture model equals the cross-entropy of the
// official code's logits, at the training positions (the `logits` fixture) and at the decoder's
// positions, where the recurrent pass is the official teacher-forced decode (`decode_cond_logits`);
// views, image selection and the null class; the command's output, JSON and refusals.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "aim/core/config.h"
#include "aim/core/safetensors.h"
#include "aim/data/code_dataset.h"
#include "aim/data/image.h"
#include "aim/eval/code_loss.h"
#include "aim/model/aim.h"
#include "test_util.h"

namespace aim {
namespace {

namespace fs = std::filesystem;

/// Per-token cross-entropy [B, L] (fp64) of logits [B, L, V] against tokens [B, L].
torch::Tensor cross_entropy_of(const torch::Tensor& logits, const torch::Tensor& tokens) {
  const auto l = logits.to(torch::kCPU, torch::kDouble);
  return torch::logsumexp(l, -1) - l.gather(2, tokens.to(torch::kCPU).unsqueeze(2)).squeeze(2);
}

struct Fixture {
  std::string name;
  fs::path dir;
  ModelConfig config;
  AimModel model{nullptr};
  std::map<std::string, torch::Tensor> golden;
};

Fixture load_fixture(const std::string& name) {
  Fixture f;
  f.name = name;
  f.dir = test::fixtures_dir() / "aim" / name;
  f.config = model_config_from_hf_json((f.dir / "config.json").string());
  f.golden = load_safetensors((f.dir / "cases.safetensors").string());
  f.model = AimModel(f.config);
  load_official_state_dict(f.model, load_safetensors((f.dir / "model.safetensors").string()),
                           (f.dir / "model.safetensors").string());
  f.model->to(test::model_device());
  return f;
}

class CodeLossTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("aim_code_loss_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  /// A finished code dataset of codes [N, A, T] and labels [N].
  std::string write_codes(const std::string& file, const torch::Tensor& codes, const torch::Tensor& labels,
                          int64_t vocab, int64_t classes = 10, const std::string& tokenizer = "test",
                          const std::vector<std::string>& class_names = {}) {
    const std::string path = (dir_ / file).string();
    CodeDatasetInfo info;
    info.num_samples = codes.size(0);
    info.num_aug = codes.size(1);
    info.tokens = codes.size(2);
    info.vocab_size = vocab;
    info.image_size = 8 * static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(codes.size(2)))));
    info.aug = codes.size(1) == 1 ? "none" : "flip";
    for (int64_t c = 0; c < classes; ++c) info.classes.push_back("class" + std::to_string(c));
    if (!class_names.empty()) info.classes = class_names;
    info.tokenizer = tokenizer;
    info.source = "test";
    CodeDatasetWriter::create(path, info)->write(0, codes.cpu(), labels.cpu());
    code_dataset_mark_finished(path);
    return path;
  }
  fs::path dir_;
};

std::vector<std::string> cases() {
  return test::fixture_cases("aim", {"config.json", "model.safetensors", "cases.safetensors"});
}

TEST_F(CodeLossTest, TrainingPositionsGiveTheOfficialLogitsLoss) {
  const auto names = cases();
  ASSERT_FALSE(names.empty()) << "no fixture folders under " << test::fixtures_dir();
  for (const auto& name : names) {
    auto f = load_fixture(name);
    auto tokens = f.golden["tokens"], labels = f.golden["labels"], logits = f.golden["logits"];
    const int64_t b = tokens.size(0), classes = f.config.num_classes;
    ASSERT_EQ(labels[b - 1].item<int64_t>(), classes) << name << ": the last training row is the null class";
    // Rows with a class, as a dataset would hold them.
    const auto expected = cross_entropy_of(logits, tokens);  // [B, L]
    const auto path = write_codes(name + ".codes", tokens.narrow(0, 0, b - 1).unsqueeze(1),
                                  labels.narrow(0, 0, b - 1), f.config.vocab_size);
    CodeDataset data(path);
    const auto r = evaluate_code_loss(f.model, data, CodeLossOptions{});
    const auto want = expected.narrow(0, 0, b - 1);
    EXPECT_EQ(r.sequences, b - 1);
    EXPECT_EQ(r.tokens, tokens.size(1));
    test::expect_close(name + " loss", torch::tensor(r.nll, torch::kDouble), want.mean(), 1e-5);
    test::expect_close(name + " loss by position", torch::tensor(r.nll_by_position, torch::kDouble), want.mean(0),
                       1e-5);
    for (int64_t i = 0; i < b - 1; ++i) {
      const int64_t c = labels[i].item<int64_t>();
      EXPECT_NEAR(r.nll_by_class[c], want[i].mean().item<double>(), 1e-4) << name << " class " << c;
    }
    // The null-class row, fed with --unconditional (its stored label is any class).
    const auto null_path = write_codes(name + "_null.codes", tokens.narrow(0, b - 1, 1).unsqueeze(1),
                                       torch::zeros({1}, torch::kLong), f.config.vocab_size);
    CodeDataset null_data(null_path);
    CodeLossOptions o;
    o.unconditional = true;
    const auto u = evaluate_code_loss(f.model, null_data, o);
    test::expect_close(name + " null-class loss", torch::tensor(u.nll, torch::kDouble), expected[b - 1].mean(), 1e-5);
  }
}

TEST_F(CodeLossTest, DecoderPositionsAndTheRecurrentPassGiveTheOfficialDecodeLoss) {
  ASSERT_FALSE(cases().empty()) << "no fixture folders";
  for (const auto& name : cases()) {
    auto f = load_fixture(name);
    ASSERT_TRUE(f.golden.count("decode_tokens")) << name << ": no decode tensors";
    auto tokens = f.golden["decode_tokens"], labels = f.golden["decode_labels"];
    ASSERT_LT(labels.max().item<int64_t>(), f.config.num_classes);
    ASSERT_EQ(f.config.decode_position_offset, 1) << name << ": the official decoder's position shift";
    const auto expected = cross_entropy_of(f.golden["decode_cond_logits"], tokens);
    const auto path = write_codes(name + ".codes", tokens.unsqueeze(1), labels, f.config.vocab_size);
    CodeDataset data(path);
    CodeLossOptions o;
    o.recurrent = true;
    o.batch_size = 2;  // several batches when B > 2
    const auto r = evaluate_code_loss(f.model, data, o);
    test::expect_close(name + " loss at the decoder's positions", torch::tensor(r.nll_decode, torch::kDouble),
                       expected.mean(), 1e-5);
    test::expect_close(name + " ... by position", torch::tensor(r.nll_decode_by_position, torch::kDouble),
                       expected.mean(0), 1e-5);
    test::expect_close(name + " recurrent loss", torch::tensor(r.nll_recurrent, torch::kDouble), expected.mean(),
                       1e-5);
    std::printf("    %s: training positions %.6f, decoder's %.6f nats/token; recurrent logits max |error| %.2e "
                "of max |logit| %.2f\n",
                name.c_str(), r.nll, r.nll_decode, r.max_logit_error, r.max_abs_logit);
    EXPECT_NE(r.nll, r.nll_decode) << name << ": the positions differ, so must the losses";
    EXPECT_LT(r.max_logit_error / r.max_abs_logit, 1e-4) << name;  // the parity tests' logit tolerance
    EXPECT_EQ(r.argmax_agreement, 1.0) << name;

    // A bf16 recurrent state: the cost stays small and is reported, not hidden.
    o.ssm_state_dtype = torch::kBFloat16;
    const auto h = evaluate_code_loss(f.model, data, o);
    std::printf("    %s bf16 state: loss %+.2e, max |error| %.2e of max |logit|, argmax the same %.2f%%\n",
                name.c_str(), h.nll_recurrent - r.nll_recurrent, h.max_logit_error / h.max_abs_logit,
                100 * h.argmax_agreement);
    EXPECT_GT(h.max_logit_error, r.max_logit_error) << name << ": the bf16 state was not used";
    EXPECT_LT(h.max_logit_error / h.max_abs_logit, 2e-2) << name;
    EXPECT_GT(h.argmax_agreement, 0.95) << name;
  }
}

TEST_F(CodeLossTest, ViewsAndImageSelection) {
  const auto name = cases().at(0);
  auto f = load_fixture(name);
  const int64_t n = 5, t = f.config.num_tokens;
  torch::manual_seed(3);
  const auto codes = torch::randint(f.config.vocab_size, {n, 2, t}, torch::kLong);
  const auto labels = torch::randint(f.config.num_classes, {n}, torch::kLong);
  CodeDataset data(write_codes("two_views.codes", codes, labels, f.config.vocab_size));
  auto run = [&](int64_t view, int64_t max_images) {
    CodeLossOptions o;
    o.view = view;
    o.max_images = max_images;
    o.batch_size = 3;
    return evaluate_code_loss(f.model, data, o);
  };
  const auto v0 = run(0, 0), v1 = run(1, 0), all = run(-1, 0);
  EXPECT_EQ(all.images, n);
  EXPECT_EQ(all.sequences, 2 * n);
  EXPECT_NEAR(all.nll, (v0.nll + v1.nll) / 2, 1e-6);
  EXPECT_NE(v0.nll, v1.nll);
  // Two of five images, spread: images 0 and 2.
  const auto some = run(1, 2);
  EXPECT_EQ(some.images, 2);
  CodeDataset picked(write_codes("picked.codes", torch::stack({codes[0], codes[2]}),
                                 torch::stack({labels[0], labels[2]}), f.config.vocab_size));
  CodeLossOptions o;
  o.view = 1;
  EXPECT_NEAR(evaluate_code_loss(f.model, picked, o).nll, some.nll, 1e-6);
}

TEST_F(CodeLossTest, DatasetsThatDoNotFitTheModelAreRefusedByName) {
  const auto name = cases().at(0);
  auto f = load_fixture(name);
  const int64_t t = f.config.num_tokens, v = f.config.vocab_size;
  auto err = [&](const std::string& path, const CodeLossOptions& o) {
    return test::error_of([&] {
      CodeDataset d(path);
      evaluate_code_loss(f.model, d, o);
    });
  };
  const auto shorter =
      write_codes("short.codes", torch::zeros({2, 1, t / 2}, torch::kLong), torch::zeros({2}, torch::kLong), v);
  EXPECT_NE(err(shorter, {}).find(str_cat("short.codes: ", t / 2, " codes per image, but the model predicts ", t)),
            std::string::npos);
  const auto wide =
      write_codes("wide.codes", torch::zeros({2, 1, t}, torch::kLong), torch::zeros({2}, torch::kLong), 2 * v);
  EXPECT_NE(err(wide, {}).find("wide.codes: codes of a " + std::to_string(2 * v) + "-entry codebook"),
            std::string::npos);
  // The header lists more classes than the model has.
  const auto many = write_codes("classes.codes", torch::zeros({2, 1, t}, torch::kLong),
                                torch::tensor({int64_t{1}, f.config.num_classes}), v, f.config.num_classes + 5);
  EXPECT_NE(err(many, {}).find(str_cat("classes.codes: image 1 has label ", f.config.num_classes)), std::string::npos);
  CodeLossOptions o;
  o.view = 1;
  EXPECT_NE(err(many, o).find("view 1 requested, but"), std::string::npos);
}

TEST_F(CodeLossTest, TheCommandPrintsAndWritesTheLibraryFigures) {
  const auto name = cases().at(0);
  auto f = load_fixture(name);
  const auto tokens = f.golden["decode_tokens"], labels = f.golden["decode_labels"];
  const auto path = write_codes("cli.codes", tokens.unsqueeze(1), labels, f.config.vocab_size);
  const auto json = (dir_ / "loss.json").string(), heatmap = (dir_ / "loss.png").string();
  const auto ckpt = (f.dir).string();
  const auto out = test::run_shell(str_cat(test::aim_binary(), " eval-loss --device cpu --ckpt ", ckpt, " --codes ", path,
                                           " --recurrent --ssm-state bf16 --json ", json, " --heatmap ", heatmap));
  ASSERT_EQ(out.code, 0) << out.output;
  EXPECT_NE(out.output.find("loss, decoder's positions"), std::string::npos) << out.output;
  EXPECT_NE(out.output.find("recurrent decoding, bf16 state"), std::string::npos) << out.output;
  EXPECT_NE(out.output.find("[eval-loss] done"), std::string::npos) << out.output;
  const auto j = nlohmann::json::parse(std::ifstream(json));
  CodeDataset data(path);
  f.model->to(torch::kCPU);
  CodeLossOptions o;
  o.recurrent = true;
  o.ssm_state_dtype = torch::kBFloat16;
  const auto r = evaluate_code_loss(f.model, data, o);
  EXPECT_NEAR(j["nll"].get<double>(), r.nll, 1e-9);
  EXPECT_NEAR(j["nll_decode_positions"].get<double>(), r.nll_decode, 1e-9);
  EXPECT_NEAR(j["recurrent"]["nll"].get<double>(), r.nll_recurrent, 1e-9);
  EXPECT_EQ(j["nll_by_position"].size(), static_cast<size_t>(f.config.num_tokens));
  EXPECT_EQ(j["recurrent"]["ssm_state"], "bf16");
  EXPECT_EQ(j["ema"], false);
  EXPECT_EQ(j["codes_tokenizer"], "test");
  int64_t sequences = 0;
  for (const auto& c : j["by_class"]) sequences += c["sequences"].get<int64_t>();
  EXPECT_EQ(sequences, tokens.size(0));

  // The heatmap: the cell of the hardest position is the ramp's top colour, the easiest its bottom.
  const auto per_position = j["nll_by_position"].get<std::vector<double>>();
  const auto image = decode_image(heatmap);
  const int side = static_cast<int>(std::lround(std::sqrt(static_cast<double>(per_position.size()))));
  const int cell = 384 / side, left = 10, top = 10 + kCellHeight + 6;
  auto centre = [&](int64_t i) {
    const uint8_t* p = image.pixel(left + static_cast<int>(i % side) * cell + cell / 2,
                                   top + static_cast<int>(i / side) * cell + cell / 2);
    return std::vector<int>{p[0], p[1], p[2]};
  };
  const auto [lo, hi] = std::minmax_element(per_position.begin(), per_position.end());
  // As wide as the grid, or as its title where that is wider (a small grid cut it off).
  char mean[32];
  std::snprintf(mean, sizeof(mean), "%.3f", j["nll"].get<double>());
  const std::string title = str_cat("loss by token position (training's: j at j), ", j["sequences"].get<int64_t>(),
                                    " sequences (mean ", mean, ")");
  EXPECT_EQ(image.width, std::max(side * cell, text_width(title, 1)) + 20);
  EXPECT_EQ(centre(hi - per_position.begin()), (std::vector<int>{253, 231, 37}));
  EXPECT_EQ(centre(lo - per_position.begin()), (std::vector<int>{68, 1, 84}));

  // --decode-position-offset 0: the decoder's positions are training's, and so is the recurrent
  // pass (the override reaches the step).
  const auto zero = (dir_ / "zero.json").string();
  const auto z = test::run_shell(str_cat(test::aim_binary(), " eval-loss --device cpu --ckpt ", ckpt, " --codes ", path,
                                         " --recurrent --decode-position-offset 0 --quiet --json ", zero));
  ASSERT_EQ(z.code, 0) << z.output;
  EXPECT_NE(z.output.find("loss, decoder's positions      the same (model.decode_position_offset 0)"),
            std::string::npos) << z.output;
  const auto jz = nlohmann::json::parse(std::ifstream(zero));
  EXPECT_EQ(jz["decode_position_offset"], 0);
  EXPECT_NEAR(jz["nll_decode_positions"].get<double>(), r.nll, 1e-9);
  EXPECT_NEAR(jz["recurrent"]["nll"].get<double>(), r.nll, 1e-5);
  EXPECT_LT(jz["recurrent"]["max_logit_error"].get<double>() / jz["recurrent"]["max_abs_logit"].get<double>(), 1e-4);

  // Flags a user can get wrong: named, with what was expected, and a non-zero exit.
  const auto base = str_cat(test::aim_binary(), " eval-loss --device cpu --ckpt ", ckpt, " --codes ", path);
  for (const auto& [flags, message] : std::vector<std::pair<std::string, std::string>>{
           {" --ssm-state bf16", "--ssm-state bf16: the state is used by the recurrent pass only"},
           {" --view 2", "view 2 requested, but"},
           {" --view x", "--view: expected a view index (0, 1, ...) or 'all', found 'x'"},
           {" --dtype fp16", "--dtype: expected fp32 or bf16, found 'fp16'"},
           {" --batch-size 0", "--batch-size: expected >= 1, found 0"},
           {" --decode-position-offset 2", "--decode-position-offset: expected 0 (training's positions) or 1"}}) {
    const auto bad = test::run_shell(base + flags + " --quiet");
    EXPECT_EQ(bad.code, 1) << flags << "\n" << bad.output;
    EXPECT_NE(bad.output.find(message), std::string::npos) << flags << "\n" << bad.output;
  }
}

TEST_F(CodeLossTest, HeldOutCodesAreCheckedAgainstTheRunsTrainingCodes) {
  const auto f = load_fixture("mamba2_tiny");
  const int64_t n = 4, t = f.config.num_tokens, v = f.config.vocab_size;
  const auto codes = torch::randint(v, {n, 1, t}, torch::kLong), labels = torch::arange(n);
  const std::string held_out = write_codes("held.codes", codes, labels, v);
  // A run directory of the fixture's weights whose config names its training codes.
  auto run_on = [&](const std::string& name, const std::string& tokenizer) {
    const fs::path run = dir_ / name;
    fs::create_directories(run);
    fs::copy_file(f.dir / "model.safetensors", run / "model.safetensors");
    Config c;
    c.name = name;
    c.model = f.config;
    c.vq.codebook_size = v;
    c.data.image_size = 16 * static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(t))));
    c.data.codes = write_codes(name + "_train.codes", codes, labels, v, 10, tokenizer);
    std::ofstream(run / "config.yaml") << config_to_yaml(c);
    return test::run_shell(str_cat(test::aim_binary(), " eval-loss --quiet --device cpu --ckpt ", run.string(),
                                   " --codes ", held_out));
  };
  const auto same = run_on("same", "test");
  ASSERT_EQ(same.code, 0) << same.output;
  EXPECT_EQ(same.output.find("warning"), std::string::npos) << same.output;
  const auto other = run_on("other", "vq2.safetensors (1 bytes, fnv64 0)");
  ASSERT_EQ(other.code, 0) << other.output;
  EXPECT_NE(other.output.find("warning: " + held_out + " holds codes of tokenizer test, but the run trained on codes "
                              "of vq2.safetensors (1 bytes, fnv64 0)"),
            std::string::npos) << other.output;
  // Held-out codes naming the classes in another order than the run's training codes: every image
  // would be scored under another class. Refused, as training refuses them for data.val_codes.
  std::vector<std::string> swapped;
  for (int64_t c = 0; c < 10; ++c) swapped.push_back("class" + std::to_string(c));
  std::swap(swapped[1], swapped[2]);
  const std::string reordered = write_codes("reordered.codes", codes, labels, v, 10, "test", swapped);
  const auto order = test::run_shell(str_cat(test::aim_binary(), " eval-loss --quiet --device cpu --ckpt ",
                                             (dir_ / "same").string(), " --codes ", reordered));
  EXPECT_NE(order.code, 0) << order.output;
  EXPECT_NE(order.output.find("--codes " + reordered + ": label 1 is class 'class2', but in the run's training data "
                              "(data.codes "),
            std::string::npos) << order.output;
}

}  // namespace
}  // namespace aim
