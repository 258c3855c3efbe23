// Fast decoding paths. With the per-token step captured in a CUDA graph, decoding gives the
// tokens of eager stepping, for both mixers, with and without guidance, greedy and sampled, also
// through `aim sample` (which overlaps the VQ decode). On the CPU: step_at (the graph's step,
// position on the device) equals step, and bf16 VQ decoding stays close to fp32.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <unistd.h>

#include "aim/core/safetensors.h"
#include "aim/data/image.h"
#include "aim/model/loader.h"
#include "aim/sample/generate.h"
#include "test_util.h"

namespace aim {
namespace {

AimModel fixture_model(const std::string& name, torch::Device device) {
  auto model = load_aim_model(find_checkpoint((test::fixtures_dir() / "aim" / name).string()));
  model->to(device);
  model->eval();
  return model;
}

TEST(GraphDecode, StepAtEqualsStepOnTheCpu) {
  for (const char* name : {"mamba2_tiny", "mamba1_tiny"}) {
    auto model = fixture_model(name, torch::kCPU);
    torch::NoGradGuard no_grad;
    auto labels = torch::tensor({int64_t{2}, int64_t{5}, int64_t{9}}, torch::kLong);
    auto a = model->start(labels), b = model->start(labels);
    model->step(a, torch::Tensor());
    model->step(b, torch::Tensor());
    torch::manual_seed(3);
    for (int64_t t = 0; t < 5; ++t) {
      auto tok = torch::randint(model->config.vocab_size, {3}, torch::kLong);
      auto pos = torch::full({1}, t + model->config.decode_position_offset, torch::kLong);
      auto la = model->step(a, tok);
      auto lb = model->step_at(b, tok, pos);
      EXPECT_TRUE(torch::equal(la, lb)) << name << " token " << t;
      EXPECT_TRUE(torch::equal(a.layers[0].ssm_state, b.layers[0].ssm_state)) << name << " token " << t;
    }
  }
}

// bf16 decoding of the fixture tokenizer (the official layout, random weights) against fp32, on
// the CPU: the uint8 images the sampler writes. Measured 2026-12-02: mean |diff| 1.34 levels, max
// 16 (random weights amplify rounding; the demo's trained tokenizer: 0.18, max 3). The bounds
// leave about 2x margin.
TEST(VqDecodeDtype, Bf16ImagesStayWithinAFewLevelsOfFp32) {
  const std::string ckpt = (test::fixtures_dir() / "aim" / "mamba2_tiny").string();
  const std::string cfg = test::source_dir() + "/configs/fixture_tiny_vq.json";
  auto f32 = load_vq_model(ckpt, cfg).model, b16 = load_vq_model(ckpt, cfg).model;
  prepare_vq_for_decoding(f32, torch::kCPU, torch::kFloat);
  prepare_vq_for_decoding(b16, torch::kCPU, torch::kBFloat16);
  torch::manual_seed(5);
  const int64_t side = 8;  // any square grid
  auto codes = torch::randint(f32->config.codebook_size, {4, side * side}, torch::kLong);
  auto a = to_uint8_hwc(decode_tokens(f32, codes, 4)).to(torch::kInt);
  auto b = to_uint8_hwc(decode_tokens(b16, codes, 4)).to(torch::kInt);
  const auto diff = (a - b).abs().to(torch::kDouble);
  const double mean = diff.mean().item<double>(), max = diff.max().item<double>();
  std::printf("    bf16 vs fp32 decode: mean |diff| %.3f levels, max %.0f, %.2f%% of pixels differ\n", mean, max,
              100.0 * diff.gt(0).to(torch::kDouble).mean().item<double>());
  EXPECT_LT(mean, 3.0);
  EXPECT_LE(max, 32.0);
  EXPECT_THROW(prepare_vq_for_decoding(f32, torch::kCPU, torch::kHalf), Error);
}

struct Setting {
  double cfg, temperature;
  int64_t top_k;
  double top_p;
  double cfg_top_p = 1.0;
};

TEST(GraphDecodeCuda, ReplayGivesTheTokensOfEagerStepping) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU is visible: CUDA-graph decoding not run";
  const Setting settings[] = {{1.0, 1.0, 1, 1.0},     // greedy, conditional only
                              {3.0, 1.0, 1, 1.0},     // greedy, guided
                              {1.0, 1.0, 0, 1.0},     // the FID preset's filters
                              {4.0, 1.0, 600, 0.98},  // the demo preset's
                              {2.0, 0.8, 50, 0.9},
                              {4.0, 1.0, 0, 1.0, 0.9}};  // guidance in the conditional nucleus
  for (const char* name : {"mamba2_tiny", "mamba1_tiny"}) {
    auto model = fixture_model(name, torch::kCUDA);
    for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
      model->to(dtype);
      auto labels = torch::tensor({int64_t{0}, int64_t{3}, int64_t{3}, int64_t{7}, int64_t{9}}, torch::kLong);
      const std::vector<int64_t> ids{4, 8, 15, 16, 23};
      for (const auto& s : settings) {
        SamplingOptions o;
        o.cfg = s.cfg;
        o.temperature = s.temperature;
        o.top_k = s.top_k;
        o.top_p = s.top_p;
        o.cfg_top_p = s.cfg_top_p;
        o.seed = 42;
        o.cuda_graph = false;
        bool used = true;
        auto eager = generate_tokens(model, labels, ids, o, &used);
        EXPECT_FALSE(used);
        o.cuda_graph = true;
        auto graphed = generate_tokens(model, labels, ids, o, &used);
        EXPECT_TRUE(used) << "the fused sampler should take these settings";
        EXPECT_TRUE(torch::equal(eager, graphed))
            << name << " " << c10::toString(dtype) << " cfg " << s.cfg << " top_k " << s.top_k << " top_p " << s.top_p
            << " cfg_top_p " << s.cfg_top_p << ": " << eager.ne(graphed).sum().item<int64_t>() << " tokens differ";
        // A second graphed run (fresh capture) repeats itself.
        EXPECT_TRUE(torch::equal(graphed, generate_tokens(model, labels, ids, o)));
        // Continuing prompts: the prefill's state, then the graph from the token after the prompt
        // (61 given: one eager token and one replay; 62: one eager token, no graph).
        for (int64_t given : {int64_t{1}, int64_t{30}, int64_t{61}, int64_t{62}}) {
          const auto prompt = graphed.narrow(1, 0, given).contiguous();
          o.cuda_graph = false;
          auto eager_p = generate_tokens(model, labels, ids, o, &used, prompt);
          o.cuda_graph = true;
          auto graphed_p = generate_tokens(model, labels, ids, o, &used, prompt);
          EXPECT_EQ(used, given < 62) << given << " tokens given";
          EXPECT_TRUE(torch::equal(eager_p, graphed_p))
              << name << " " << c10::toString(dtype) << " cfg " << s.cfg << ", " << given << " tokens given: "
              << eager_p.ne(graphed_p).sum().item<int64_t>() << " tokens differ";
          EXPECT_TRUE(torch::equal(graphed_p.narrow(1, 0, given), prompt.cpu()));
        }
      }
    }
  }
}

TEST(GraphDecodeCuda, TheSampleCommandOverlapsDecodingAndMatchesEagerStepping) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU is visible: CUDA sampling CLI not run";
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("aim_graph_cli_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::string ckpt = (test::fixtures_dir() / "aim" / "mamba2_tiny").string();
  // 7 samples (random labels: balanced ones need a multiple of the 10 classes) in batches of 2:
  // four batches, so decoding overlaps three generations.
  const std::string base = test::aim_binary() + " sample --ckpt " + ckpt + " --vq-config " +
                           test::source_dir() + "/configs/fixture_tiny_vq.json --device cuda --num-samples 7 " +
                           "--labels random --cfg 2 --top-k 50 --seed 3 --batch-size 2 ";
  auto a = test::run_shell(base + "--tokens " + (dir / "graph.safetensors").string());
  ASSERT_EQ(a.code, 0) << a.output;
  auto b = test::run_shell(base + "--no-cuda-graph --tokens " + (dir / "eager.safetensors").string());
  ASSERT_EQ(b.code, 0) << b.output;
  auto ta = load_safetensors((dir / "graph.safetensors").string()), tb = load_safetensors((dir / "eager.safetensors").string());
  EXPECT_TRUE(torch::equal(ta["tokens"], tb["tokens"]));
  EXPECT_EQ(ta["tokens"].size(0), 7);
  std::error_code ec;
  fs::remove_all(dir, ec);
}

}  // namespace
}  // namespace aim
