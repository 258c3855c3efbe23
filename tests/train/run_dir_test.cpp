// Run directories (atomic checkpoints, keep-last-K, latest pointer), trainer state, EMA, FLOPs.
#include <filesystem>
#include <fstream>

#include "aim/core/checkpoint.h"
#include "aim/core/config.h"
#include "aim/core/fileio.h"
#include "aim/core/safetensors.h"
#include "aim/model/aim.h"
#include "aim/model/registry.h"
#include "aim/train/ema.h"
#include "aim/train/flops.h"
#include "aim/train/run_dir.h"
#include "test_util.h"

namespace aim::train {
namespace {

namespace fs = std::filesystem;

fs::path temp_dir(const std::string& name) {
  auto p = fs::temp_directory_path() / ("aim_run_dir_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  return p;
}

void write_marker(const std::string& dir, int64_t step) {
  write_text_atomic((fs::path(dir) / "trainer_state.json").string(),
                    str_cat("{\"step\": ", step, "}"));
}

TEST(RunDir, KeepsTheNewestKAndPointsLatestAtTheNewest) {
  const auto root = temp_dir("keep");
  RunDir run(root.string());
  EXPECT_FALSE(run.latest().has_value());
  for (int64_t step : {10, 20, 30, 40}) run.save(step, [&](const std::string& d) { write_marker(d, step); }, 2);
  EXPECT_EQ(run.checkpoint_steps(), (std::vector<int64_t>{30, 40}));
  ASSERT_TRUE(run.latest().has_value());
  EXPECT_EQ(fs::path(*run.latest()).filename(), "step-00000040");
  EXPECT_EQ(resolve_resume_dir(root.string()), *run.latest());
  EXPECT_EQ(resolve_resume_dir(*run.latest()), *run.latest());
  // Saving the same step again replaces it in place.
  run.save(40, [&](const std::string& d) { write_marker(d, 40); }, 2);
  EXPECT_EQ(run.checkpoint_steps(), (std::vector<int64_t>{30, 40}));
  fs::remove_all(root);
}

TEST(RunDir, AFailedSaveLeavesTheLatestCheckpointAndNoPartialDirectory) {
  const auto root = temp_dir("fail");
  RunDir run(root.string());
  run.save(5, [&](const std::string& d) { write_marker(d, 5); }, 3);
  const auto msg = test::error_of([&] {
    run.save(6, [&](const std::string& d) {
      write_marker(d, 6);
      throw Error("No space left on device");
    }, 3);
  });
  EXPECT_NE(msg.find("saving the checkpoint of step 6"), std::string::npos) << msg;
  EXPECT_NE(msg.find("No space left on device"), std::string::npos) << msg;
  EXPECT_NE(msg.find("step-00000005 is intact"), std::string::npos) << msg;
  EXPECT_EQ(run.checkpoint_steps(), (std::vector<int64_t>{5}));
  EXPECT_EQ(fs::path(*run.latest()).filename(), "step-00000005");
  for (const auto& e : fs::directory_iterator(root / "checkpoints"))
    EXPECT_EQ(e.path().filename().string().find(".partial"), std::string::npos) << e.path();
  fs::remove_all(root);
}

TEST(RunDir, ResumeOfSomethingElseSaysWhatItFound) {
  const auto root = temp_dir("bad");
  fs::create_directories(root);
  EXPECT_NE(test::error_of([&] { resolve_resume_dir(root.string()); }).find("neither a checkpoint"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { resolve_resume_dir((root / "nope").string()); }).find("no such directory"),
            std::string::npos);
  fs::remove_all(root);
}

TEST(TrainerState, JsonRoundTripAndErrorsNameTheKey) {
  TrainerState s;
  s.step = 12;
  s.epoch = 3;
  s.batch = 7;
  s.samples_seen = 96;
  s.world_size = 2;
  s.global_batch = 8;
  s.micro_batch = 2;
  s.seed = 5;
  s.loss = 6.25;
  const auto back = TrainerState::from_json(s.to_json(), "state");
  EXPECT_EQ(back.step, 12);
  EXPECT_EQ(back.epoch, 3);
  EXPECT_EQ(back.batch, 7);
  EXPECT_EQ(back.world_size, 2);
  EXPECT_DOUBLE_EQ(back.loss, 6.25);
  EXPECT_NE(test::error_of([] { TrainerState::from_json("{\"step\": -1}", "ts.json"); }).find("ts.json: key 'step'"),
            std::string::npos);
  EXPECT_NE(test::error_of([] { TrainerState::from_json("not json", "ts.json"); }).find("not valid JSON"),
            std::string::npos);
}

TEST(Checkpoint, FindCheckpointFollowsTheRunDirectorysLatest) {
  const auto root = temp_dir("find");
  RunDir run(root.string());
  const auto cfg = load_config(test::source_dir() + "/configs/tiny.yaml");
  run.save(3, [&](const std::string& d) {
    write_text_atomic((fs::path(d) / "config.yaml").string(), config_to_yaml(cfg));
    AimModel m(cfg.model);
    save_safetensors((fs::path(d) / "model.safetensors").string(), official_state_dict(m));
    write_marker(d, 3);
  }, 1);
  write_text_atomic((root / "config.yaml").string(), config_to_yaml(cfg));
  const auto ref = find_checkpoint(root.string());
  EXPECT_EQ(ref.kind, CheckpointKind::kRunDir);
  EXPECT_EQ(fs::path(ref.weights_path).parent_path().filename(), "step-00000003");
  fs::remove_all(root);
}

TEST(Ema, UpdateIsTheExponentialAverage) {
  auto cfg = load_config(test::source_dir() + "/configs/tiny.yaml").model;
  torch::manual_seed(0);
  AimModel model(cfg);
  Ema ema(model, 0.9);
  const auto p0 = model->named_parameters()["backbone.layers.0.mixer.in_proj.weight"].detach().clone();
  {
    torch::NoGradGuard ng;
    for (auto& p : model->parameters()) p.add_(1.0);
  }
  ema.update(model);
  const auto e = ema.model()->named_parameters()["backbone.layers.0.mixer.in_proj.weight"];
  test::expect_close("ema after one update", e, p0 + 0.1, 1e-6);
  EXPECT_FALSE(e.requires_grad());
}

TEST(Flops, ForwardFlopsAreTwiceTheMatmulWeightsPlusTheScan) {
  // Per token every mixer weight is one multiply-add, and so is the (tied) lm_head; the scan and
  // the depthwise conv add a few percent. Parameter counts come from the official layout.
  for (const char* name : {"aim_b", "aim_l", "aim_xl", "aim_1b"}) {
    const auto c = load_config(test::source_dir() + "/configs/" + name + ".yaml");
    const auto n = count_parameters(c.model);
    const double matmul = static_cast<double>(n.mixers) + static_cast<double>(c.model.vocab_size * c.model.d_model);
    const double ratio = forward_flops_per_token(c.model) / (2.0 * matmul);
    std::printf("    %s: forward %.3e FLOPs/token, 2 x matmul weights %.3e, ratio %.3f\n", name,
                forward_flops_per_token(c.model), 2.0 * matmul, ratio);
    EXPECT_GT(ratio, 1.0) << name;
    EXPECT_LT(ratio, 1.2) << name;  // scan: 6 d_inner d_state per layer, ~15% at d_model 768
    EXPECT_DOUBLE_EQ(training_flops_per_image(c.model), 3.0 * 256 * forward_flops_per_token(c.model));
  }
  EXPECT_EQ(device_peak_tflops(torch::kCPU, 0.0), 0.0);
  EXPECT_EQ(device_peak_tflops(torch::kCPU, 123.0), 123.0);
}

}  // namespace
}  // namespace aim::train
