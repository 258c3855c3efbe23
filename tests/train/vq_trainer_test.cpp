// Stage-1 tokenizer training: the quantiser's training forward and losses against their
// definitions, the PatchGAN, and aim train-vq end to end on generated shapes (learning, exact
// resume with the discriminator, two ranks against one, the run directory as a tokenizer for the
// rest of the pipeline).
#include <filesystem>
#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "aim/core/config.h"
#include "aim/core/fileio.h"
#include "aim/core/safetensors.h"
#include "aim/data/code_dataset.h"
#include "aim/data/image.h"
#include "aim/data/shapes.h"
#include "aim/eval/lpips.h"
#include "aim/model/loader.h"
#include "aim/train/flops.h"
#include "aim/train/run_dir.h"
#include "aim/train/vq_losses.h"
#include "aim/train/vq_trainer.h"
#include "test_util.h"

namespace aim::train {
namespace {

namespace fs = std::filesystem;

TEST(VqLosses, QuantizerTrainingForwardMatchesItsDefinition) {
  torch::manual_seed(3);
  for (bool l2 : {true, false}) {
    VectorQuantizer q(32, 8, l2);
    {
      torch::NoGradGuard ng;
      q->embedding->weight.normal_();  // spread codes (the default init is nearly all equal)
    }
    auto z = torch::randn({2, 8, 3, 4}, torch::requires_grad());
    const auto out = quantize_for_training(*q, z, 0.05);
    // Codes: the inference path's nearest codes.
    EXPECT_TRUE(torch::equal(out.codes, q->nearest(z.detach()))) << "l2 " << l2;
    // Forward value: the (normalised) code vectors.
    const auto e = q->codebook().detach();
    EXPECT_TRUE(torch::allclose(out.z_q.detach(), q->lookup(out.codes, 3, 4).detach(), 1e-6, 1e-6));
    // Losses in double from the definitions.
    auto zn = z.detach().to(torch::kDouble).permute({0, 2, 3, 1}).reshape({-1, 8});
    if (l2) zn = zn / zn.norm(2, 1, true);
    const auto zq = e.to(torch::kDouble).index_select(0, out.codes.reshape({-1}));
    const double mse = (zq - zn).pow(2).mean().item<double>();
    EXPECT_NEAR(out.codebook_loss.item<double>(), mse, 1e-6);
    EXPECT_NEAR(out.commit_loss.item<double>(), mse, 1e-6);
    const auto ed = e.to(torch::kDouble);
    const auto dist = zn.pow(2).sum(1, true) + ed.pow(2).sum(1) - 2 * zn.matmul(ed.t());
    const auto p = torch::softmax(-dist / 0.05, 1);
    const double sample_h = -(p * torch::log_softmax(-dist / 0.05, 1)).sum(1).mean().item<double>();
    const auto avg = p.mean(0);
    const double avg_h = -(avg * torch::log(avg + 1e-5)).sum().item<double>();
    EXPECT_NEAR(out.entropy_loss.item<double>(), sample_h - avg_h, 1e-4);
    // Straight-through: d(sum(z_q * g)) / dz = g (through the normalisation when l2).
    const auto g = torch::randn_like(out.z_q);
    (out.z_q * g).sum().backward();
    if (!l2) {
      EXPECT_TRUE(torch::allclose(z.grad(), g, 1e-6, 1e-6));
    } else {
      auto zz = z.detach().clone().requires_grad_(true);
      auto n = torch::nn::functional::normalize(zz, torch::nn::functional::NormalizeFuncOptions().dim(1));
      (n * g).sum().backward();
      EXPECT_TRUE(torch::allclose(z.grad(), zz.grad(), 1e-5, 1e-6));
    }
    // The commitment loss moves the encoder, the codebook loss the codes only.
    auto z2 = torch::randn({1, 8, 2, 2}, torch::requires_grad());
    q->zero_grad();
    quantize_for_training(*q, z2).commit_loss.backward();
    EXPECT_TRUE(z2.grad().defined());
    EXPECT_FALSE(q->embedding->weight.grad().defined() && q->embedding->weight.grad().abs().sum().item<double>() > 0);
    auto z3 = torch::randn({1, 8, 2, 2}, torch::requires_grad());
    quantize_for_training(*q, z3).codebook_loss.backward();
    EXPECT_FALSE(z3.grad().defined() && z3.grad().abs().sum().item<double>() > 0);
    EXPECT_GT(q->embedding->weight.grad().abs().sum().item<double>(), 0);
  }
}

TEST(VqLosses, UsageHistoryKeepsTheNewestCodes) {
  VectorQuantizer q(16, 4, true);
  EXPECT_DOUBLE_EQ(record_codebook_usage(*q, torch::tensor({3, 5, 5}, torch::kLong)), 3.0 / 16);  // + zeros
  const int64_t cap = q->codebook_used.size(0);
  EXPECT_EQ(q->codebook_used[cap - 1].item<double>(), 5);
  EXPECT_EQ(q->codebook_used[cap - 3].item<double>(), 3);
  auto all = torch::arange(16).repeat({cap / 16 + 1});  // more than the history holds
  EXPECT_DOUBLE_EQ(record_codebook_usage(*q, all), 1.0);
  EXPECT_DOUBLE_EQ(record_codebook_usage(*q, torch::full({cap}, 7, torch::kLong)), 1.0 / 16);
}

TEST(VqLosses, PatchGanAndHingeLosses) {
  torch::manual_seed(0);
  PatchDiscriminator d(16, 3);
  const auto out = d->forward(torch::randn({2, 3, 64, 64}));
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{2, 1, 6, 6}));  // 64 -> 32 -> 16 -> 8 -> 7 -> 6
  const auto names = d->named_parameters().keys();
  EXPECT_EQ(names.front(), "main.0.weight");
  EXPECT_EQ(d->named_parameters()["main.2.weight"].size(0), 32);
  const auto real = torch::tensor({2.0, 0.5, -1.0}), fake = torch::tensor({-2.0, 0.0, 1.0});
  // relu(1 - real) = [0, 0.5, 2] -> 5/6; relu(1 + fake) = [0, 1, 2] -> 1; LlamaGen halves the sum.
  EXPECT_NEAR(hinge_discriminator_loss(real, fake).item<double>(), 0.5 * (5.0 / 6 + 1.0), 1e-6);
  EXPECT_NEAR(hinge_generator_loss(fake).item<double>(), 1.0 / 3, 1e-6);
  EXPECT_NEAR(psnr(torch::zeros({1, 3, 2, 2}), torch::full({1, 3, 2, 2}, 0.2)), 10 * std::log10(4 / 0.04), 1e-5);  // fp32 mse
}

/// SSIM written out from Wang et al. (2004) in double, one window position at a time: 2-D
/// Gaussian weights (sigma 1.5) normalised to 1, population (weighted) moments, C1 = (0.01 L)^2,
/// C2 = (0.03 L)^2 with L = 2, mean over channels and the positions where the window fits.
torch::Tensor ssim_by_definition(const torch::Tensor& a_in, const torch::Tensor& b_in, int64_t win) {
  const auto a = a_in.to(torch::kDouble), b = b_in.to(torch::kDouble);
  auto w = torch::empty({win, win}, torch::kDouble);
  for (int64_t i = 0; i < win; ++i)
    for (int64_t j = 0; j < win; ++j) {
      const double di = static_cast<double>(i - win / 2), dj = static_cast<double>(j - win / 2);
      w[i][j] = std::exp(-(di * di + dj * dj) / (2 * 1.5 * 1.5));
    }
  w = w / w.sum();
  const double c1 = 0.02 * 0.02, c2 = 0.06 * 0.06;
  std::vector<torch::Tensor> values;
  for (int64_t n = 0; n < a.size(0); ++n)
    for (int64_t c = 0; c < a.size(1); ++c)
      for (int64_t y = 0; y + win <= a.size(2); ++y)
        for (int64_t x = 0; x + win <= a.size(3); ++x) {
          const auto pa = a[n][c].slice(0, y, y + win).slice(1, x, x + win);
          const auto pb = b[n][c].slice(0, y, y + win).slice(1, x, x + win);
          const auto ma = (w * pa).sum(), mb = (w * pb).sum();
          const auto va = (w * (pa - ma).pow(2)).sum(), vb = (w * (pb - mb).pow(2)).sum();
          const auto cov = (w * (pa - ma) * (pb - mb)).sum();
          values.push_back(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2)));
        }
  return torch::stack(values).mean();
}

TEST(VqLosses, SsimMatchesItsDefinitionWithItsGradient) {
  torch::manual_seed(11);
  for (int64_t win : {11, 5}) {
    const auto a = (torch::rand({2, 3, 14, 13}) * 2 - 1).to(torch::kDouble);
    // A reconstruction-like second image: the first, smoothed and noisy.
    const auto b0 = (0.7 * a + 0.2 * torch::randn_like(a)).clamp(-1, 1);
    auto b = b0.to(torch::kFloat).requires_grad_(true);
    auto b_ref = b0.clone().requires_grad_(true);
    const auto s = ssim(a.to(torch::kFloat), b, win);
    const auto s_ref = ssim_by_definition(a, b_ref, win);
    EXPECT_NEAR(s.item<double>(), s_ref.item<double>(), 1e-5) << "window " << win;
    EXPECT_LT(s_ref.item<double>(), 0.9);  // far from identical: the comparison means something
    s.backward();
    s_ref.backward();
    const double scale = b_ref.grad().abs().max().item<double>();
    EXPECT_GT(scale, 0);
    EXPECT_LT((b.grad().to(torch::kDouble) - b_ref.grad()).abs().max().item<double>(), 1e-4 * scale)
        << "window " << win;
    EXPECT_NEAR(ssim(a.to(torch::kFloat), a.to(torch::kFloat), win).item<double>(), 1.0, 1e-5);
  }
  // Contrast-normalised: at 0.4 of the contrast the same blurred edge loses most of its squared
  // error (0.16x) but keeps most of its 1 - SSIM (C2 matters only at fainter edges).
  auto edge = torch::zeros({1, 1, 24, 24});
  edge.slice(3, 12) = 1.0;
  const auto soft = torch::avg_pool2d(torch::nn::functional::pad(edge, torch::nn::functional::PadFuncOptions({1, 1, 1, 1}).mode(torch::kReplicate)), 3, 1);
  const double strong = ssim(edge - 0.5, soft - 0.5).item<double>(), faint = ssim(0.4 * edge, 0.4 * soft).item<double>();
  EXPECT_GT((1 - faint) / (1 - strong), 0.6) << strong << " " << faint;
  EXPECT_LT(strong, 0.99);
  EXPECT_NE(test::error_of([&] { ssim(torch::zeros({1, 3, 8, 8}), torch::zeros({1, 3, 8, 8})); }).find("window of 11"),
            std::string::npos);
}

class TrainVqTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("aim_vq_trainer_test_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
            "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    ShapesOptions o;
    o.classes = 4;
    o.per_class = 6;  // 24 images: 3 steps of 8 per epoch
    o.size = 32;
    o.seed = 5;
    write_shapes_dataset(images(), o);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string images() const { return (dir_ / "shapes").string(); }
  /// LPIPS weights for the perceptual loss: random, with the scale of trained ones (the
  /// network's layout and loader are pinned by tests/eval/lpips_test.cpp).
  std::string lpips_weights() const {
    const auto path = (dir_ / "lpips.safetensors").string();
    if (fs::exists(path)) return path;
    torch::manual_seed(3);
    eval::Lpips net;
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    torch::NoGradGuard no_grad;
    for (auto& conv : net->convs) conv->bias.copy_(torch::randn_like(conv->bias) * 0.05);
    for (auto& lin : net->lins) lin->weight.copy_(torch::rand_like(lin->weight) * 0.5);
    for (const auto& p : net->named_parameters()) tensors.emplace_back(p.key(), p.value());
    save_safetensors(path, tensors);
    return path;
  }
  std::string run(const std::string& name) const { return (dir_ / name).string(); }
  /// A run with default options, and what it wrote to stderr.
  std::pair<VqTrainResult, std::string> run_saying(const Config& cfg) const {
    testing::internal::CaptureStderr();
    const auto r = run_vq_training(cfg, TrainOptions{});
    return {r, testing::internal::GetCapturedStderr()};
  }

  /// configs/vq_demo.yaml shrunk: 32 px, 3 levels (4x: 8x8 codes), global 8 = micro 4 x 2.
  Config config(const std::string& out, std::vector<std::string> sets = {}) const {
    std::vector<std::string> all = {"data.images=" + images(), "train.out_dir=" + out, "data.image_size=32",
                                    "vq.ch_mult=[1, 1, 2]", "vq.z_channels=32", "vq.codebook_size=64",
                                    "train.global_batch=8", "train.micro_batch=4", "train.max_steps=8",
                                    "train.ckpt_every=0", "train.log_every=1", "train.sample_every=0",
                                    "vq_train.eval_images=8", "optim.lr=2e-3", "schedule.warmup_steps=0"};
    all.insert(all.end(), sets.begin(), sets.end());
    return load_config(test::source_dir() + "/configs/vq_demo.yaml", all, ConfigUse::kTokenizer);
  }
  fs::path dir_;
};

std::vector<double> logged(const std::string& run_dir, const std::string& key) {
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::vector<double> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.find("\"kind\":\"train\"") == std::string::npos) continue;
    const auto at = line.find("\"" + key + "\":");
    if (at != std::string::npos) out.push_back(std::stod(line.substr(at + key.size() + 3)));
  }
  return out;
}

TEST_F(TrainVqTest, ReconstructionLossFallsAndTheGridIsWritten) {
  TrainOptions o;
  o.quiet = true;
  o.device = test::model_device();
  const auto cfg = config(run("a"), {"train.max_steps=12", "train.sample_every=12", "train.peak_tflops=0.5"});
  const auto r = run_vq_training(cfg, o);
  EXPECT_EQ(r.steps, 12);
  // MFU against the configured peak: images/s x the tokenizer's training FLOPs per image.
  const auto mfu = logged(run("a"), "mfu"), img_s = logged(run("a"), "images_per_s");
  ASSERT_EQ(mfu.size(), 12u);
  ASSERT_EQ(img_s.size(), 12u);
  const double per_image = vq_training_flops_per_image(cfg.vq, 32);
  for (size_t i = 0; i < mfu.size(); ++i) {
    EXPECT_GT(mfu[i], 0.0);
    EXPECT_NEAR(mfu[i] / (img_s[i] * per_image / 0.5e12), 1.0, 1e-9) << "step " << i + 1;
  }
  const auto l1 = logged(run("a"), "l1");
  ASSERT_EQ(l1.size(), 12u);
  std::printf("    L1 %.4f -> %.4f, grid PSNR %.2f dB, usage %.3f\n", l1.front(), l1.back(), r.psnr, r.usage);
  EXPECT_LT(l1.back(), 0.7 * l1.front());
  EXPECT_TRUE(logged(run("a"), "ssim").empty());  // logged only when it is a loss term
  EXPECT_TRUE(fs::exists(run("a") + "/samples/step-00000012.png"));
  // TensorBoard shows the losses and the grid.
  const auto tb = test::read_tensorboard(run("a") + "/tensorboard");
  ASSERT_FALSE(tb.is_null());
  ASSERT_TRUE(tb.at("scalars").contains("train/l1")) << tb.dump();
  EXPECT_EQ(tb.at("scalars").at("train/l1").size(), 12u);
  EXPECT_NEAR(tb.at("scalars").at("train/l1").back()[1].get<double>(), l1.back(), 1e-6 * l1.back());
  EXPECT_TRUE(tb.at("scalars").contains("eval/psnr")) << tb.dump();
  ASSERT_TRUE(tb.at("images").contains("reconstructions")) << tb.dump();
  EXPECT_EQ(tb.at("images").at("reconstructions").size(), 1u);
  EXPECT_EQ(tb.at("images").at("reconstructions")[0][3].get<std::string>(),
            file_digest(run("a") + "/samples/step-00000012.png"));
  EXPECT_GT(r.psnr, 5.0);
  EXPECT_GT(r.usage, 0.0);
  // The checkpoint holds LlamaGen's key layout.
  SafetensorsFile f(r.checkpoint + "/model.safetensors");
  EXPECT_TRUE(f.contains("quantize.embedding.weight"));
  EXPECT_TRUE(f.contains("encoder.conv_blocks.0.res.0.conv1.weight"));
  EXPECT_TRUE(f.contains("decoder.conv_out.weight"));
  EXPECT_TRUE(f.contains("quantize.codebook_used"));
}

TEST_F(TrainVqTest, LlamaGensRandomCropArrIsAnOption) {
  const auto [r, said] = run_saying(config(run("arr"), {"train.max_steps=2", "vq_train.crop=llamagen"}));
  EXPECT_EQ(r.steps, 2);
  EXPECT_NE(said.find("LlamaGen's random_crop_arr"), std::string::npos) << said;
  const std::string msg = test::error_of([&] { config(run("x"), {"vq_train.crop=center"}); });
  EXPECT_NE(msg.find("vq_train.crop"), std::string::npos) << msg;
}

TEST_F(TrainVqTest, StageTwoKeysItDoesNotReadAreNamed) {
  const auto [r, said] = run_saying(
      config(run("k"), {"train.max_steps=1", "vq.weights=" + run("vq.safetensors"), "data.codes=" + run("c.codes")}));
  EXPECT_EQ(r.steps, 1);
  EXPECT_NE(said.find("note: vq.weights " + run("vq.safetensors") + " is not read: train-vq trains the tokenizer (--init "),
            std::string::npos) << said;
  EXPECT_NE(said.find("note: data.codes " + run("c.codes") + " is not read"), std::string::npos) << said;
}

TEST_F(TrainVqTest, APictureThatCannotBeWrittenDoesNotEndTheRun) {
  // A folder where step 1's grid goes: its write fails; the run (and other ranks) go on.
  fs::create_directories(run("g") + "/samples/step-00000001.png");
  const auto [r, said] = run_saying(config(run("g"), {"train.max_steps=2", "train.sample_every=1"}));
  EXPECT_EQ(r.steps, 2);
  EXPECT_NE(said.find("warning: reconstructions not written, training goes on"), std::string::npos) << said;
  EXPECT_TRUE(RunDir(run("g")).latest().has_value());
}

TEST_F(TrainVqTest, TheSsimTermJoinsTheLoss) {
  TrainOptions o;
  o.quiet = true;
  o.device = test::model_device();
  run_vq_training(config(run("s"), {"train.max_steps=3", "vq_train.ssim_weight=0.5", "vq_train.disc_weight=0"}), o);
  const auto loss = logged(run("s"), "loss"), l1 = logged(run("s"), "l1"), l2 = logged(run("s"), "l2"),
             cb = logged(run("s"), "codebook_loss"), commit = logged(run("s"), "commit_loss"),
             s = logged(run("s"), "ssim");
  ASSERT_EQ(s.size(), 3u);
  for (size_t i = 0; i < s.size(); ++i) {
    EXPECT_GT(s[i], -1.0);
    EXPECT_LT(s[i], 1.0);
    // vq_demo.yaml: L1 x 1 + L2 x 1 + codebook x 1 (commitment beta 0.25), no entropy loss.
    EXPECT_NEAR(loss[i], l1[i] + l2[i] + cb[i] + 0.25 * commit[i] + 0.5 * (1 - s[i]), 1e-4) << "step " << i + 1;
  }
  EXPECT_NE(test::error_of([&] { config(run("x"), {"vq_train.ssim_weight=-1"}); }).find("vq_train.ssim_weight"),
            std::string::npos);
}

TEST_F(TrainVqTest, ThePerceptualTermJoinsTheLossAndTheFlops) {
  TrainOptions o;
  o.quiet = true;
  o.device = test::model_device();
  const auto cfg = config(run("p"), {"train.max_steps=3", "vq_train.perceptual_weight=0.5",
                                     "vq_train.lpips=" + lpips_weights(), "train.peak_tflops=0.5"});
  run_vq_training(cfg, o);
  const auto loss = logged(run("p"), "loss"), l1 = logged(run("p"), "l1"), l2 = logged(run("p"), "l2"),
             cb = logged(run("p"), "codebook_loss"), commit = logged(run("p"), "commit_loss"),
             p = logged(run("p"), "perceptual_loss"), mfu = logged(run("p"), "mfu"),
             img_s = logged(run("p"), "images_per_s");
  ASSERT_EQ(p.size(), 3u);
  const double per_image = vq_training_flops_per_image(cfg.vq, cfg.vq_train, 32);
  // LPIPS's VGG16 three times (x, x' and x''s backward) on top of the tokenizer's 3 x forward.
  EXPECT_DOUBLE_EQ(per_image - vq_training_flops_per_image(cfg.vq, 32), 3 * eval::lpips_vgg_flops(32, 32));
  for (size_t i = 0; i < p.size(); ++i) {
    EXPECT_GT(p[i], 0.0);
    EXPECT_NEAR(loss[i], l1[i] + l2[i] + cb[i] + 0.25 * commit[i] + 0.5 * p[i], 1e-4) << "step " << i + 1;
    EXPECT_NEAR(mfu[i] / (img_s[i] * per_image / 0.5e12), 1.0, 1e-9) << "step " << i + 1;
  }

  const auto unset = test::error_of([&] { config(run("x"), {"vq_train.perceptual_weight=1"}); });
  EXPECT_NE(unset.find("key 'vq_train.lpips'"), std::string::npos) << unset;
  EXPECT_NE(unset.find("--kind lpips"), std::string::npos) << unset;
  const auto small = test::error_of([&] {
    config(run("x"), {"vq_train.perceptual_weight=1", "vq_train.lpips=w.safetensors", "data.image_size=8",
                      "vq.ch_mult=[1, 2]"});
  });
  EXPECT_NE(small.find("key 'data.image_size': expected at least 16"), std::string::npos) << small;
  const auto missing = test::error_of([&] {
    run_vq_training(config(run("m"), {"vq_train.perceptual_weight=1", "vq_train.lpips=" + run("none.safetensors")}),
                    o);
  });
  EXPECT_NE(missing.find("vq_train.lpips: no such file: " + run("none.safetensors")), std::string::npos) << missing;
  // Weights named with the term off: said, not silently dropped.
  const auto [r, said] = run_saying(config(run("off"), {"train.max_steps=1", "vq_train.lpips=" + lpips_weights()}));
  EXPECT_NE(said.find("(vq_train.lpips " + lpips_weights() + " unused: vq_train.perceptual_weight is 0)"),
            std::string::npos) << said;
  EXPECT_TRUE(logged(run("off"), "perceptual_loss").empty());
}

TEST_F(TrainVqTest, ThePerceptualGradientReachesTheTokenizerAndItsDropoutActs) {
  TrainOptions o;
  o.quiet = true;
  const std::vector<std::string> common = {"train.max_steps=1", "vq_train.lpips=" + lpips_weights()};
  auto with = [&](const std::string& name, std::vector<std::string> sets) {
    sets.insert(sets.end(), common.begin(), common.end());
    return run_vq_training(config(run(name), sets), o);
  };
  const auto off = with("off", {"vq_train.perceptual_weight=0"});
  const auto on = with("on", {"vq_train.perceptual_weight=1"});
  const auto exact = with("exact", {"vq_train.perceptual_weight=1", "vq_train.lpips_dropout=false"});
  // One step from the same weights and images: the LPIPS term moves the decoder.
  const auto a = load_safetensors(off.checkpoint + "/model.safetensors");
  const auto b = load_safetensors(on.checkpoint + "/model.safetensors");
  EXPECT_FALSE(torch::equal(a.at("decoder.conv_out.weight"), b.at("decoder.conv_out.weight")));
  // Step 1's perceptual loss with and without LPIPS's dropout: same images and weights.
  const auto p_on = logged(run("on"), "perceptual_loss"), p_exact = logged(run("exact"), "perceptual_loss");
  ASSERT_EQ(p_on.size(), 1u);
  ASSERT_EQ(p_exact.size(), 1u);
  EXPECT_NE(p_on[0], p_exact[0]);
  EXPECT_NEAR(p_on[0] / p_exact[0], 1.0, 0.25) << "dropout is unbiased";
}

TEST_F(TrainVqTest, TheGanStartsAtStepDiscStartWithLlamaGensAdamCount) {
  // disc_start 2 (1-based, as LlamaGen's adopt_weight): steps 2 and 3 are adversarial; the
  // discriminator's Adam counts step 1 as taken (LlamaGen steps it with a zero loss).
  TrainOptions o;
  o.quiet = true;
  const auto r = run_vq_training(config(run("gan"), {"train.max_steps=3", "vq_train.disc_weight=0.5",
                                                     "vq_train.disc_start=2", "vq_train.disc_channels=8",
                                                     "vq_train.disc_layers=2"}),
                                 o);
  EXPECT_EQ(logged(run("gan"), "gen_loss").size(), 2u);
  const auto d = logged(run("gan"), "disc_loss");
  ASSERT_EQ(d.size(), 2u);
  for (const double v : d) EXPECT_LT(v, 3.0) << "the halved hinge, without the weight";
  SafetensorsFile f(r.checkpoint + "/disc_optimizer.safetensors");
  EXPECT_EQ(f.metadata().at("step"), "3");
  SafetensorsFile g(r.checkpoint + "/optimizer.safetensors");
  EXPECT_EQ(g.metadata().at("step"), "3");
  // Logged every 2 steps: the window of steps 1-2, where the GAN starts, gives its losses over
  // step 2 alone (not diluted by step 1), the next window the mean over steps 3 and 4.
  run_vq_training(config(run("gan1"), {"train.max_steps=4", "vq_train.disc_weight=0.5", "vq_train.disc_start=2",
                                       "vq_train.disc_channels=8", "vq_train.disc_layers=2"}),
                  o);
  run_vq_training(config(run("gan2"), {"train.max_steps=4", "vq_train.disc_weight=0.5", "vq_train.disc_start=2",
                                       "vq_train.disc_channels=8", "vq_train.disc_layers=2", "train.log_every=2"}),
                  o);
  for (const char* key : {"gen_loss", "disc_loss"}) {
    const auto every = logged(run("gan1"), key), pairs = logged(run("gan2"), key);
    ASSERT_EQ(every.size(), 3u) << key;
    ASSERT_EQ(pairs.size(), 2u) << key;
    EXPECT_DOUBLE_EQ(pairs[0], every[0]) << key;
    EXPECT_NEAR(pairs[1], 0.5 * (every[1] + every[2]), 1e-12) << key;
  }
}

TEST_F(TrainVqTest, ResumeWithTheDiscriminatorContinuesBitwiseIdentically) {
  // Entropy loss, PatchGAN from step 2, LPIPS with its dropout, flips and an epoch boundary (3
  // steps/epoch) in play.
  // Logged every 2 steps: the stop at 3 splits a logging window, whose means (and the count of
  // dead codes restarted, every step here) must not change.
  const std::vector<std::string> sets = {"train.max_steps=5", "vq_train.disc_weight=0.5", "vq_train.disc_start=2",
                                         "vq_train.disc_channels=8", "vq_train.disc_layers=2",
                                         "vq_train.entropy_weight=0.1", "vq_train.restart_every=1",
                                         "vq_train.perceptual_weight=1", "vq_train.lpips=" + lpips_weights(),
                                         "train.log_every=2"};
  TrainOptions o;
  o.quiet = true;
  const auto straight = run_vq_training(config(run("straight"), sets), o);
  o.stop_after = 3;
  const auto first = run_vq_training(config(run("resumed"), sets), o);
  EXPECT_TRUE(first.paused);
  o.stop_after = 0;
  o.resume = "auto";
  const auto second = run_vq_training(config(run("resumed"), sets), o);
  EXPECT_EQ(second.steps, 5);
  EXPECT_EQ(straight.loss, second.loss);
  for (const char* name : {"model.safetensors", "optimizer.safetensors", "discriminator.safetensors",
                           "disc_optimizer.safetensors"}) {
    const auto a = load_safetensors(straight.checkpoint + "/" + name);
    const auto b = load_safetensors(second.checkpoint + "/" + name);
    ASSERT_EQ(a.size(), b.size()) << name;
    for (const auto& [k, v] : a) EXPECT_TRUE(torch::equal(v, b.at(k))) << name << ": " << k;
  }
  EXPECT_FALSE(logged(run("straight"), "disc_loss").empty());
  const auto restarted = logged(run("straight"), "codes_restarted");
  std::printf("    codes restarted per log line:");
  for (const double r : restarted) std::printf(" %.0f", r);
  std::printf("\n");
  EXPECT_GT(restarted.at(1), 0.0);  // the window the stop splits (steps 3 and 4) restarted codes
  for (const char* key : {"loss", "l1", "psnr", "gen_loss", "perceptual_loss", "codes_restarted"})
    EXPECT_EQ(logged(run("straight"), key), logged(run("resumed"), key)) << key;
  EXPECT_EQ(logged(run("straight"), "loss").size(), 3u);  // steps 2, 4, 5
  // Another architecture is refused by key.
  auto other = sets;
  other.push_back("vq.codebook_embed_dim=4");
  const auto msg = test::error_of([&] { run_vq_training(config(run("resumed"), other), o); });
  EXPECT_NE(msg.find("vq section differs from this run's config: vq.codebook_embed_dim "), std::string::npos) << msg;
}

TEST_F(TrainVqTest, TheDiscriminatorMustFitTheImageAndItsCheckpointFilesMustBeThere) {
  // A PatchGAN too deep for the image failed at its first step (vq_train.disc_start, 20000 in
  // vq_16.yaml) with LibTorch's convolution message: refused by key before the run.
  const auto deep = test::error_of([&] {
    config(run("x"), {"vq_train.disc_weight=0.5", "vq_train.disc_layers=4"});
  });
  EXPECT_NE(deep.find("vq_train.disc_layers"), std::string::npos) << deep;
  EXPECT_NE(deep.find("at most 3 for data.image_size 32"), std::string::npos) << deep;
  EXPECT_NO_THROW(config(run("x"), {"vq_train.disc_weight=0.5", "vq_train.disc_layers=3"}));
  EXPECT_NO_THROW(config(run("x"), {"vq_train.disc_weight=0", "vq_train.disc_layers=4"}));  // no discriminator

  // A checkpoint of GAN training without its discriminator is refused on resume (it resumed
  // with a fresh PatchGAN and Adam, silently); a run that adds the GAN on resume is told so.
  const std::vector<std::string> gan = {"train.max_steps=3", "vq_train.disc_weight=0.5", "vq_train.disc_start=1",
                                        "vq_train.disc_channels=8", "vq_train.disc_layers=2"};
  TrainOptions o;
  o.quiet = true;
  o.stop_after = 2;
  EXPECT_TRUE(run_vq_training(config(run("gan"), gan), o).paused);
  const auto latest = RunDir(run("gan")).latest();
  ASSERT_TRUE(latest.has_value());
  fs::remove(*latest + "/disc_optimizer.safetensors");
  o.stop_after = 0;
  o.resume = "auto";
  const auto missing = test::error_of([&] { run_vq_training(config(run("gan"), gan), o); });
  EXPECT_NE(missing.find("disc_optimizer.safetensors"), std::string::npos) << missing;
  EXPECT_NE(missing.find("the checkpoint's run kept it (vq_train.disc_weight > 0)"), std::string::npos) << missing;

  auto plain = gan;
  plain[1] = "vq_train.disc_weight=0";
  o.resume = "";
  o.stop_after = 1;
  run_vq_training(config(run("added"), plain), o);
  o.stop_after = 0;
  o.resume = "auto";
  o.quiet = false;
  testing::internal::CaptureStderr();
  const auto added = run_vq_training(config(run("added"), gan), o);
  const std::string said = testing::internal::GetCapturedStderr();
  EXPECT_EQ(added.steps, 3);
  EXPECT_NE(said.find("note: the checkpoint's run trained without a discriminator (vq_train.disc_weight 0): the "
                      "PatchGAN and its optimizer start fresh at step 1"),
            std::string::npos) << said;
}

TEST_F(TrainVqTest, TwoRanksUnderMpirunMatchOneRank) {
  // The same global batch (8): one rank x micro 4 x 2 accumulation vs two ranks x micro 2 x 2,
  // on the CPU (Gloo). Flips depend on (seed, epoch, image) only and the losses are per-image
  // means, so both runs see the same images and differ by summation order alone. The entropy
  // loss (statistics of a micro-batch), the PatchGAN (BatchNorm over a micro-batch) and dead-code
  // restarts (from rank 0's last micro-batch) depend on the split, so they are off here.
  const std::string aim = test::aim_binary() + " train-vq " + test::source_dir() + "/configs/vq_demo.yaml";
  const std::string sets =
      " --device cpu --set data.images=" + images() +
      " --set data.image_size=32 --set vq.ch_mult='[1, 1, 2]' --set vq.z_channels=32 --set vq.codebook_size=64"
      " --set train.global_batch=8 --set train.max_steps=4 --set train.ckpt_every=0 --set train.log_every=1"
      " --set train.sample_every=0 --set vq_train.eval_images=8 --set optim.lr=1e-3 --set schedule.warmup_steps=0"
      " --set vq_train.entropy_weight=0 --set vq_train.disc_weight=0 --set train.precision=fp32";
  const auto one = test::run_shell(aim + sets + " --set vq_train.restart_every=0 --set train.micro_batch=4 --out " +
                                   run("one"));
  ASSERT_EQ(one.code, 0) << one.output;
  const std::string mpirun =
      "OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1 "
      "mpirun --allow-run-as-root --oversubscribe -np 2 ";
  const auto two = test::run_shell(mpirun + aim + sets + " --set vq_train.restart_every=0 --set train.micro_batch=2"
                                   " --out " + run("two"));
  ASSERT_EQ(two.code, 0) << two.output;
  EXPECT_NE(two.output.find("2 rank(s) x micro 2 x 2 accumulation"), std::string::npos) << two.output;
  EXPECT_NE(two.output.find("parameters identical on all 2 ranks"), std::string::npos) << two.output;
  const auto a = load_safetensors(RunDir(run("one")).latest().value() + "/model.safetensors");
  const auto b = load_safetensors(RunDir(run("two")).latest().value() + "/model.safetensors");
  ASSERT_EQ(a.size(), b.size());
  // Adam moves an element by about lr per step whatever its gradient's size, so summation-order
  // noise in a near-zero gradient may move one by a fraction of lr x steps; 3% of that is allowed.
  // A missing all-reduce or a wrong average moves elements by ~lr.
  const double tol = 0.03 * 1e-3 * 4;
  for (const auto& [k, v] : a) {
    if (k == "quantize.codebook_used") continue;  // rank 0's own usage history, not a parameter
    test::expect_close("1 rank vs 2 ranks: " + k, b.at(k), v, tol, false);
  }
  const auto l1_one = logged(run("one"), "l1"), l1_two = logged(run("two"), "l1");
  ASSERT_EQ(l1_one.size(), 4u);
  ASSERT_EQ(l1_two.size(), 4u);
  EXPECT_NEAR(l1_one[0], l1_two[0], 1e-5);  // the same weights and images at the first step
  // With the split-dependent parts on, the replicas still stay identical: dead-code restarts are
  // broadcast from rank 0 and the discriminator's gradients are all-reduced.
  const auto gan = test::run_shell(mpirun + aim + sets + " --set vq_train.restart_every=1 --set train.micro_batch=2"
                                   " --set vq_train.disc_weight=0.5 --set vq_train.disc_start=1"
                                   " --set vq_train.disc_channels=8 --set vq_train.disc_layers=2"
                                   " --set train.ckpt_every=2 --set train.keep_last=2 --out " + run("gan"));
  ASSERT_EQ(gan.code, 0) << gan.output;
  EXPECT_NE(gan.output.find("parameters identical on all 2 ranks at step 2"), std::string::npos) << gan.output;
  EXPECT_NE(gan.output.find("parameters identical on all 2 ranks at step 4"), std::string::npos) << gan.output;
  EXPECT_EQ(RunDir(run("gan")).checkpoint_steps(), (std::vector<int64_t>{2, 4}));
  // Dead-code restarts read every rank's code counts since the last restart: a checkpoint keeps
  // their sum, so stopping between two restarts and resuming gives the same weights.
  const std::string restarts = sets + " --set vq_train.restart_every=2 --set train.micro_batch=2";
  ASSERT_EQ(test::run_shell(mpirun + aim + restarts + " --out " + run("rs")).code, 0);
  const auto stop = test::run_shell(mpirun + aim + restarts + " --out " + run("rs2") + " --stop-after-steps 1");
  ASSERT_EQ(stop.code, 0) << stop.output;
  const auto go_on = test::run_shell(mpirun + test::aim_binary() + " train-vq --device cpu --resume " + run("rs2"));
  ASSERT_EQ(go_on.code, 0) << go_on.output;
  const auto straight = load_safetensors(RunDir(run("rs")).latest().value() + "/model.safetensors");
  const auto resumed = load_safetensors(RunDir(run("rs2")).latest().value() + "/model.safetensors");
  for (const auto& [k, v] : straight) EXPECT_TRUE(torch::equal(v, resumed.at(k))) << "resumed across a restart: " << k;
}

TEST_F(TrainVqTest, TheRunIsATokenizerForTheRestOfThePipeline) {
  TrainOptions o;
  o.quiet = true;
  const auto r = run_vq_training(config(run("vq"), {"train.max_steps=2"}), o);
  // load_vq_model reads the run directory (following `latest`) with the run's architecture.
  auto vq = load_vq_model(run("vq"));
  EXPECT_EQ(vq.model->config.ch_mult, (std::vector<int64_t>{1, 1, 2}));
  EXPECT_EQ(vq.model->config.codebook_size, 64);
  const auto saved = load_safetensors(r.checkpoint + "/model.safetensors");
  for (const auto& [k, v] : vq_state_dict(vq.model)) EXPECT_TRUE(torch::equal(v, saved.at(k))) << k;
  // eval-vq and extract-codes take it as --vq; aim info describes it as a tokenizer.
  const std::string aim = test::aim_binary();
  auto info = test::run_shell(aim + " info " + run("vq"));
  ASSERT_EQ(info.code, 0) << info.output;
  EXPECT_NE(info.output.find("4: 32 px -> 8x8 = 64 codes"), std::string::npos) << info.output;
  EXPECT_NE(info.output.find("codebook                             64 x 8"), std::string::npos) << info.output;
  EXPECT_EQ(info.output.find("Mamba"), std::string::npos) << info.output;
  // Its config.yaml holds what aim train-vq reads (no model or sample section), so aim info reads
  // it as a tokenizer config too, and aim train-vq loads it back to the run's config.
  const std::string yaml = read_text(run("vq") + "/config.yaml");
  EXPECT_EQ(yaml.rfind("# aim train-vq config (resolved)", 0), 0u) << yaml;
  EXPECT_EQ(yaml.find("\nmodel:"), std::string::npos) << yaml;
  EXPECT_EQ(yaml.find("\nsample:"), std::string::npos) << yaml;
  EXPECT_EQ(read_text(r.checkpoint + "/config.yaml"), yaml);
  EXPECT_TRUE(load_config(run("vq") + "/config.yaml", {}, ConfigUse::kTokenizer) ==
              tokenizer_config(config(run("vq"), {"train.max_steps=2"})));
  auto yaml_info = test::run_shell(aim + " info " + run("vq") + "/config.yaml");
  ASSERT_EQ(yaml_info.code, 0) << yaml_info.output;
  EXPECT_NE(yaml_info.output.find("4: 32 px -> 8x8 = 64 codes"), std::string::npos) << yaml_info.output;
  EXPECT_EQ(yaml_info.output.find("Mamba"), std::string::npos) << yaml_info.output;
  auto bare = test::run_shell(aim + " info " + r.checkpoint + "/model.safetensors --config " + run("vq") + "/config.yaml");
  ASSERT_EQ(bare.code, 0) << bare.output;
  EXPECT_NE(bare.output.find("4: 32 px -> 8x8 = 64 codes"), std::string::npos) << bare.output;
  auto e = test::run_shell(aim + " eval-vq --device cpu --vq " + run("vq") + " --data " + images() +
                           " --image-size 32 --json " + run("eval.json") + " --save-recon " + run("recon") +
                           " --lpips " + lpips_weights());
  ASSERT_EQ(e.code, 0) << e.output;
  EXPECT_NE(e.output.find("PSNR"), std::string::npos) << e.output;
  EXPECT_NE(e.output.find("SSIM"), std::string::npos) << e.output;
  EXPECT_NE(e.output.find("LPIPS"), std::string::npos) << e.output;
  const auto report = nlohmann::json::parse(read_text(run("eval.json")));
  EXPECT_TRUE(report.contains("usage"));
  EXPECT_EQ(report.at("image_size"), 32);
  EXPECT_EQ(report.at("upscaled"), 0);
  // Images enlarged to a larger --image-size reconstruct unusually well: said, not hidden.
  auto big = test::run_shell(aim + " eval-vq --device cpu --vq " + run("vq") + " --data " + images() + " --image-size 64");
  ASSERT_EQ(big.code, 0) << big.output;
  EXPECT_NE(big.output.find("note: 24 of 24 images are smaller than --image-size 64 and were enlarged"),
            std::string::npos) << big.output;
  // Each reconstruction carries its source's name, so the two pair up; the reported SSIM and LPIPS
  // are the means over the pairs of the definition's SSIM and of LPIPS.
  int64_t paired = 0;
  double ssim_sum = 0, lpips_sum = 0;
  eval::Lpips lpips;
  eval::load_lpips(lpips, lpips_weights());
  torch::NoGradGuard no_grad;
  for (int64_t c = 0; c < 4; ++c) {
    for (const auto& f : fs::directory_iterator(images() + "/" + shape_class_dir(c))) {
      const auto recon = run("recon") + "/" + shape_class_dir(c) + "/" + f.path().filename().string();
      ASSERT_TRUE(fs::exists(recon)) << f.path();
      const auto original = to_tensor(decode_image(f.path().string())).unsqueeze(0);
      const auto reconstruction = to_tensor(decode_image(recon)).unsqueeze(0);
      ssim_sum += ssim_by_definition(original, reconstruction, 11).item<double>();
      lpips_sum += lpips->forward(original, reconstruction).item<double>();
      ++paired;
    }
  }
  EXPECT_EQ(paired, 24);
  EXPECT_NEAR(report.at("ssim").get<double>(), ssim_sum / static_cast<double>(paired), 1e-5);
  EXPECT_GT(report.at("lpips").get<double>(), 0.0);
  EXPECT_NEAR(report.at("lpips").get<double>(), lpips_sum / static_cast<double>(paired), 1e-6);
  // The same run again replaces its reconstructions; one that would write fewer into the folder is
  // refused before the work (the earlier run's would be scored as its own).
  const std::string recon_run = aim + " eval-vq --device cpu --vq " + run("vq") + " --data " + images() +
                                " --image-size 32 --save-recon " + run("recon");
  auto again = test::run_shell(recon_run);
  ASSERT_EQ(again.code, 0) << again.output;
  auto fewer = test::run_shell(recon_run + " --max-images 2");
  EXPECT_NE(fewer.code, 0);
  EXPECT_NE(fewer.output.find("--save-recon " + run("recon") + ": holds 22 PNGs this run would not write"),
            std::string::npos) << fewer.output;
  // An unreadable image is skipped and counted, not the end of the run.
  fs::copy(images(), run("damaged"), fs::copy_options::recursive);
  const auto first = *fs::directory_iterator(run("damaged") + "/" + shape_class_dir(0));
  std::ofstream(first.path(), std::ios::trunc) << "not an image";
  auto damaged = test::run_shell(aim + " eval-vq --device cpu --vq " + run("vq") + " --data " + run("damaged") +
                                 " --image-size 32 --json " + run("damaged.json"));
  ASSERT_EQ(damaged.code, 0) << damaged.output;
  EXPECT_NE(damaged.output.find("note: 1 unreadable image skipped (not scored):"), std::string::npos) << damaged.output;
  const auto damaged_report = nlohmann::json::parse(read_text(run("damaged.json")));
  EXPECT_EQ(damaged_report.at("images"), 23);
  EXPECT_EQ(damaged_report.at("skipped"), 1);
  auto x = test::run_shell(aim + " extract-codes --device cpu --data " + images() + " --vq " + run("vq") +
                           " --out " + run("codes") + " --aug flip --image-size 32");
  ASSERT_EQ(x.code, 0) << x.output;
  // aim sample --from-tokens decodes codes with the run given as --ckpt (a tokenizer's run, not
  // a language model's whose vq.weights would name the tokenizer), as --vq does.
  {
    CodeDataset codes(run("codes"));
    const int64_t n = 3, t = codes.info().tokens;
    auto tokens = torch::empty({n, t}, torch::kLong);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < t; ++j) tokens[i][j] = static_cast<int64_t>(codes.codes(i, 0)[j]);
    save_safetensors(run("tokens.safetensors"), {{"tokens", tokens}, {"labels", torch::arange(n)}});
    const std::string decode = aim + " sample --device cpu --from-tokens " + run("tokens.safetensors");
    auto by_ckpt = test::run_shell(decode + " --ckpt " + run("vq") + " --npz " + run("by_ckpt.npz"));
    ASSERT_EQ(by_ckpt.code, 0) << by_ckpt.output;
    auto by_vq = test::run_shell(decode + " --vq " + run("vq") + " --npz " + run("by_vq.npz"));
    ASSERT_EQ(by_vq.code, 0) << by_vq.output;
    EXPECT_EQ(read_text(run("by_ckpt.npz")), read_text(run("by_vq.npz")));
  }
  // Errors name the key.
  EXPECT_NE(test::error_of([&] { config(run("x"), {"vq_train.commit_beta=-1"}); }).find("vq_train.commit_beta"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { config(run("x"), {"data.image_size=30"}); }).find("data.image_size"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { run_vq_training(config(run("x"), {"data.images="}), o); }).find("data.images"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { run_vq_training(config(run("x"), {"train.recompute_every=1"}), o); })
                .find("train.recompute_every: not supported by aim train-vq"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { run_vq_training(config(run("x"), {"data.aug=flip"}), o); })
                .find("data.aug: not used by aim train-vq (expected empty, found 'flip')"),
            std::string::npos);
}

}  // namespace
}  // namespace aim::train
