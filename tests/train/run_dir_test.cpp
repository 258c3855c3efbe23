// Run directories (atomic checkpoints, keep-last-K, latest pointer), trainer state, EMA, FLOPs.
#include <torch/csrc/autograd/profiler_kineto.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "aim/core/checkpoint.h"
#include "aim/core/config.h"
#include "aim/core/fileio.h"
#include "aim/core/safetensors.h"
#include "aim/model/aim.h"
#include "aim/model/registry.h"
#include "aim/model/vq.h"
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
    EXPECT_LT(ratio, 1.2) << name;  // scan: 5 d_inner d_state per layer, ~12% at d_model 768
    EXPECT_DOUBLE_EQ(training_flops_per_image(c.model), 3.0 * 256 * forward_flops_per_token(c.model));
  }
  EXPECT_EQ(device_peak_tflops(torch::kCPU, 0.0), 0.0);
  EXPECT_EQ(device_peak_tflops(torch::kCPU, 123.0), 123.0);
}

/// The matrix FLOPs of one tokenizer forward (encode, nearest code, decode) of `images` as
/// LibTorch's profiler counts them from the shapes of the convolutions and products it ran.
double profiled_vq_forward_flops(const VqConfig& config, int64_t image_size, int64_t images) {
  torch::manual_seed(0);
  VqModel model(config);
  model->eval();
  torch::NoGradGuard no_grad;
  const auto x = torch::rand({images, 3, image_size, image_size}) * 2 - 1;
  namespace prof = torch::profiler::impl;
  const prof::ProfilerConfig pc(prof::ProfilerState::KINETO, /*report_input_shapes=*/true,
                                /*profile_memory=*/false, /*with_stack=*/false, /*with_flops=*/true);
  const std::set<prof::ActivityType> cpu{prof::ActivityType::CPU};
  torch::autograd::profiler::prepareProfiler(pc, cpu);
  torch::autograd::profiler::enableProfiler(pc, cpu);
  const auto z = model->encode_latent(x);
  const auto codes = model->quantize->nearest(z);
  model->decoder->forward(model->post_quant_conv->forward(model->quantize->lookup(codes, z.size(2), z.size(3))));
  const auto result = torch::autograd::profiler::disableProfiler();
  // The profiler also counts elementwise mul and add; MFU counts the matrix products.
  const std::set<std::string> matrix{"aten::conv2d", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"};
  double flops = 0;
  int64_t convs = 0;
  for (const auto& e : result->events()) {
    if (!matrix.count(e.name())) continue;
    flops += static_cast<double>(e.flops());
    convs += e.name() == "aten::conv2d";
  }
  EXPECT_GT(convs, 10) << "the profiler recorded no convolutions";
  return flops / static_cast<double>(images);
}

TEST(Flops, TokenizerCountIsWhatTheProfilerCountsOfTheModel) {
  // The demo's tokenizer, VQ-16 at a small image (attention at 2x2, two blocks per level), and
  // a narrow config (widths 8 and 24, three blocks per level, a 100-entry codebook of width 5).
  // Every kind of block runs in each: 1x1 shortcuts where a level widens, attention at the
  // lowest resolution, stride-2 and upsampling convolutions.
  struct Case {
    std::string name;
    VqConfig vq;
    int64_t image_size;
  };
  std::vector<Case> cases;
  const auto demo = load_config(test::source_dir() + "/configs/vq_demo.yaml", {}, ConfigUse::kTokenizer);
  cases.push_back({"vq_demo", demo.vq, demo.data.image_size});
  cases.push_back({"VQ-16 at 32 px", VqConfig{}, 32});
  VqConfig narrow;
  narrow.ch = 8;
  narrow.ch_mult = {1, 3};
  narrow.z_channels = 12;
  narrow.num_res_blocks = 3;
  narrow.norm_groups = 4;
  narrow.codebook_size = 100;
  narrow.codebook_embed_dim = 5;
  cases.push_back({"narrow", narrow, 24});
  for (const auto& c : cases) {
    const double counted = vq_forward_flops_per_image(c.vq, c.image_size);
    const double profiled = profiled_vq_forward_flops(c.vq, c.image_size, 2);
    std::printf("    %s: %.6e FLOPs per image forward, profiler %.6e\n", c.name.c_str(), counted, profiled);
    EXPECT_NEAR(counted / profiled, 1.0, 1e-9) << c.name;
    EXPECT_DOUBLE_EQ(vq_training_flops_per_image(c.vq, c.image_size), 3.0 * counted) << c.name;
  }
}

}  // namespace
}  // namespace aim::train
