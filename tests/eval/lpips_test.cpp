// LPIPS (include/aim/eval/lpips.h) against the lpips package, through the weights conversion a
// user runs (tests/tools/lpips_reference.py writes the inputs), and its properties.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <unistd.h>

#include "aim/core/safetensors.h"
#include "aim/eval/lpips.h"
#include "test_util.h"

namespace aim {
namespace {

namespace fs = std::filesystem;
using eval::Lpips;
using test::run_shell;

using test::read_bytes;
using test::shell_quote;

std::string tool() { return test::source_dir() + "/tools/convert_checkpoint.py"; }
std::string generator() { return test::source_dir() + "/tests/tools/lpips_reference.py"; }

/// Random weights with nonzero biases and a scale that keeps VGG16's activations near one.
Lpips random_lpips(uint64_t seed) {
  torch::manual_seed(seed);
  Lpips model;
  torch::NoGradGuard no_grad;
  for (auto& conv : model->convs) {
    const double fan_in = static_cast<double>(conv->weight[0].numel());
    conv->weight.copy_(torch::randn_like(conv->weight) * std::sqrt(2.0 / fan_in));
    conv->bias.copy_(torch::randn_like(conv->bias) * 0.05);
  }
  for (auto& lin : model->lins) lin->weight.copy_(torch::rand_like(lin->weight) * 0.5);
  return model;
}

std::pair<torch::Tensor, torch::Tensor> image_pair(int64_t n, int64_t h, int64_t w, uint64_t seed) {
  torch::manual_seed(seed);
  auto x = torch::rand({n, 3, h, w}) * 2 - 1;
  auto y = (x + 0.4 * torch::randn({n, 3, h, w})).clamp(-1, 1);
  return {x, y};
}

// ------------------------------------------------------------------------ lpips package

class LpipsReference : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string python = test::python();
    if (python.empty() || !fs::exists(python)) {
      skip_reason_ = "no Python at AIM_PYTHON '" + python + "' (configure with -DAIM_PYTHON=...)";
      return;
    }
    auto probe = run_shell(shell_quote(python) + " -c 'import lpips, torchvision, safetensors'");
    if (probe.code != 0) {
      skip_reason_ = python + " cannot import lpips (scripts/setup.sh installs it):\n" + probe.output;
      return;
    }
    // Generated once per generator and converter version, shared by every test process.
    inputs_ = test::generated_once("lpips_reference_", read_bytes(generator()) + read_bytes(tool()),
                                   "lpips_reference.py", [&](const fs::path& tmp) {
      auto gen = run_shell(shell_quote(python) + " " + shell_quote(generator()) + " " + shell_quote(tmp.string()));
      std::printf("  %s", gen.output.c_str());
      return gen;
    }, setup_error_);
    if (!setup_error_.empty()) return;
    out_ = fs::temp_directory_path() / ("aim_lpips_out_" + std::to_string(getpid()));
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
  static test::RunResult convert(const std::string& args) {
    auto r = run_shell(shell_quote(test::python()) + " " + shell_quote(tool()) + " " + args);
    std::printf("  $ convert_checkpoint.py %s -> exit %d\n", args.c_str(), r.code);
    return r;
  }
  static std::string in(const std::string& rel) { return shell_quote((inputs_ / rel).string()); }
  static fs::path out(const std::string& rel) { return out_ / rel; }

  static inline std::string skip_reason_, setup_error_;
  static inline fs::path inputs_, out_;
};

TEST_F(LpipsReference, BothConversionsGiveTheSameWeightsAndThePackagesDistances) {
  // What users have: torchvision's VGG16 file + LPIPS's linear layers, or a saved LPIPS module.
  auto a = convert(in("vgg16.pth") + " --lpips-lin " + in("lin.pth") + " --out " + shell_quote(out("a.safetensors")));
  ASSERT_EQ(a.code, 0) << a.output;
  EXPECT_NE(a.output.find("6 classifier tensors dropped"), std::string::npos) << a.output;
  auto b = convert(in("lpips_module.pth") + " --out " + shell_quote(out("b.safetensors")));
  ASSERT_EQ(b.code, 0) << b.output;
  EXPECT_NE(b.output.find("kind        lpips"), std::string::npos) << b.output;
  const auto wa = load_safetensors(out("a.safetensors").string());
  const auto wb = load_safetensors(out("b.safetensors").string());
  ASSERT_EQ(wa.size(), 31u);
  ASSERT_EQ(wb.size(), wa.size());
  for (const auto& [k, v] : wa) {
    ASSERT_TRUE(wb.count(k)) << k;
    EXPECT_TRUE(torch::equal(v, wb.at(k))) << k;
  }

  Lpips model;
  eval::load_lpips(model, out("a.safetensors").string());
  SafetensorsFile cases((inputs_ / "cases.safetensors").string());
  for (const std::string c : {"square", "wide"}) {
    SCOPED_TRACE(c);
    const auto x = cases.get(c + ".x"), y = cases.get(c + ".y");
    torch::Tensor d32;
    {
      torch::NoGradGuard no_grad;
      d32 = model->forward(x, y);
    }
    // float32: VGG16's 13 convolutions in another summation order.
    test::expect_close(c + " distance fp32", d32, cases.get(c + ".d32"), 1e-5);
    EXPECT_EQ(d32[0].item<float>(), 0.0f) << "an image and itself";
    model->to(torch::kDouble);
    auto y64 = y.to(torch::kDouble).requires_grad_(true);
    const auto d64 = model->forward(x.to(torch::kDouble), y64).to(torch::kDouble);
    const auto grad = torch::autograd::grad({d64.sum()}, {y64})[0];
    test::expect_close(c + " distance fp64", d64, cases.get(c + ".d64"), 1e-12);
    test::expect_close(c + " d/dy fp64", grad, cases.get(c + ".grad64"), 1e-10);
    EXPECT_GT(grad.abs().max().item<double>(), 0.0);
    model->to(torch::kFloat);
  }
}

TEST_F(LpipsReference, TheConverterRefusesWhatIsNotLpips) {
  auto no_lin = convert(in("vgg16.pth") + " --out " + shell_quote(out("x.safetensors")));
  EXPECT_EQ(no_lin.code, 1);
  EXPECT_NE(no_lin.output.find("--lpips-lin"), std::string::npos) << no_lin.output;
  auto wrong_lin = convert(in("vgg16.pth") + " --lpips-lin " + in("vgg16.pth") + " --out " + shell_quote(out("x.safetensors")));
  EXPECT_EQ(wrong_lin.code, 1);
  EXPECT_NE(wrong_lin.output.find("missing 5: lin0.model.1.weight"), std::string::npos) << wrong_lin.output;
  auto both = convert(in("lpips_module.pth") + " --lpips-lin " + in("lin.pth") + " --out " + shell_quote(out("x.safetensors")));
  EXPECT_EQ(both.code, 1);
  EXPECT_NE(both.output.find("holds its linear layers already"), std::string::npos) << both.output;
  auto bf16 = convert(in("lpips_module.pth") + " --dtype bf16 --out " + shell_quote(out("x.safetensors")));
  EXPECT_EQ(bf16.code, 1);
  EXPECT_NE(bf16.output.find("float32 only"), std::string::npos) << bf16.output;
  auto not_lpips = convert(in("lin.pth") + " --kind lpips --out " + shell_quote(out("x.safetensors")));
  EXPECT_EQ(not_lpips.code, 1);
  EXPECT_NE(not_lpips.output.find("--kind lpips expects"), std::string::npos) << not_lpips.output;
  EXPECT_FALSE(fs::exists(out("x.safetensors")));
  // What LlamaGen loads directly is refused by aim's loader with the conversion command.
  Lpips model;
  const auto pickle = test::error_of([&] { eval::load_lpips(model, (inputs_ / "lin.pth").string()); });
  EXPECT_NE(pickle.find("a PyTorch pickle (torch.save), not safetensors"), std::string::npos) << pickle;
  EXPECT_NE(pickle.find("--lpips-lin vgg.pth"), std::string::npos) << pickle;
}

// ------------------------------------------------------------------------------ properties

TEST(Lpips, IsZeroForEqualImagesSymmetricAndDifferentiableInBoth) {
  auto model = random_lpips(1);
  auto [x, y] = image_pair(2, 16, 24, 2);
  x.requires_grad_(true);
  y.requires_grad_(true);
  const auto d = model->forward(x, y);
  ASSERT_EQ(d.sizes(), torch::IntArrayRef({2}));
  EXPECT_EQ(d.scalar_type(), torch::kFloat);
  EXPECT_TRUE((d > 0).all().item<bool>()) << d;
  test::expect_close("d(x, y) = d(y, x)", model->forward(y, x), d, 1e-6);
  torch::NoGradGuard no_grad;
  EXPECT_EQ(model->forward(x, x).abs().max().item<float>(), 0.0f);
  for (const auto& p : model->parameters()) EXPECT_FALSE(p.requires_grad());
}

TEST(Lpips, GradientsReachBothImages) {
  auto model = random_lpips(3);
  auto [x, y] = image_pair(2, 16, 16, 4);
  x.requires_grad_(true);
  y.requires_grad_(true);
  model->forward(x, y).sum().backward();
  EXPECT_GT(x.grad().abs().max().item<float>(), 0.0f);
  EXPECT_GT(y.grad().abs().max().item<float>(), 0.0f);
}

TEST(Lpips, DropoutIsUnbiasedAndFollowsTheSeed) {
  // Training-mode dropout on the squared differences: each draw differs, the mean over draws is
  // the eval distance (the linear layers are linear), a seed gives the same draw.
  auto model = random_lpips(5);
  auto [x, y] = image_pair(2, 16, 16, 6);
  torch::NoGradGuard no_grad;
  const auto exact = model->forward(x, y);
  torch::manual_seed(11);
  const auto first = model->forward(x, y, /*dropout=*/true);
  torch::manual_seed(11);
  EXPECT_TRUE(torch::equal(model->forward(x, y, true), first));
  EXPECT_FALSE(torch::allclose(first, exact));
  auto sum = torch::zeros_like(exact), sum_sq = torch::zeros_like(exact);
  constexpr int kDraws = 200;
  for (int i = 0; i < kDraws; ++i) {
    const auto d = model->forward(x, y, true);
    sum += d;
    sum_sq += d * d;
  }
  const auto mean = sum / kDraws;
  const auto spread = (sum_sq / kDraws - mean * mean).sqrt() / mean;
  const auto off = (mean / exact - 1).abs();
  std::printf("    one draw's relative spread %.4f, %.4f; the mean of %d is off by %.5f, %.5f\n",
              spread[0].item<double>(), spread[1].item<double>(), kDraws, off[0].item<double>(),
              off[1].item<double>());
  EXPECT_TRUE((spread > 0.002).all().item<bool>()) << spread;
  // About 1.7% per draw here, so 0.12% for the mean of 200: 0.5% is 4 standard deviations.
  EXPECT_TRUE((off < 0.005).all().item<bool>()) << mean << " vs " << exact;
}

TEST(Lpips, RefusesSmallOrMismatchedImages) {
  Lpips model;
  torch::NoGradGuard no_grad;
  const auto small = test::error_of([&] { model->forward(torch::zeros({1, 3, 8, 32}), torch::zeros({1, 3, 8, 32})); });
  EXPECT_NE(small.find("8x32 are too small"), std::string::npos) << small;
  const auto shape = test::error_of([&] { model->forward(torch::zeros({1, 3, 16, 16}), torch::zeros({2, 3, 16, 16})); });
  EXPECT_NE(shape.find("of one shape"), std::string::npos) << shape;
}

TEST(Lpips, LoaderNamesTheFileAndEveryProblem) {
  const auto dir = fs::temp_directory_path() / ("aim_lpips_load_" + std::to_string(getpid()));
  fs::create_directories(dir);
  auto model = random_lpips(7);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& p : model->named_parameters()) tensors.emplace_back(p.key(), p.value());
  ASSERT_EQ(tensors.size(), eval::lpips_keys().size());
  ASSERT_EQ(tensors.size(), 31u);
  const auto good = (dir / "good.safetensors").string();
  save_safetensors(good, tensors);
  Lpips loaded;
  eval::load_lpips(loaded, good);
  for (const auto& p : loaded->named_parameters())
    EXPECT_TRUE(torch::equal(p.value(), model->named_parameters()[p.key()])) << p.key();

  auto bad = tensors;
  bad.erase(bad.begin() + 3);                                       // net.slice1.2.bias
  bad.back().second = torch::zeros({1, 256, 1, 1});                  // lin4 of the wrong width
  bad.emplace_back("lins.0.model.1.weight", torch::zeros({1, 64, 1, 1}));
  const auto path = (dir / "bad.safetensors").string();
  save_safetensors(path, bad);
  const auto msg = test::error_of([&] { eval::load_lpips(loaded, path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("3 problems"), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing: net.slice1.2.bias [64]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("lin4.model.1.weight: checkpoint [1, 256, 1, 1], model [1, 512, 1, 1]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unexpected: lins.0.model.1.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--kind lpips"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(Lpips, FlopsAreVgg16s) {
  // VGG16's 13 convolutions at 224 x 224: 15.35 G multiply-adds (Simonyan & Zisserman's
  // 15.5 G includes the classifier's 0.12 G).
  const double convs = eval::lpips_vgg_flops(224, 224);
  EXPECT_NEAR(convs / 2e9, 15.35, 0.01);
  EXPECT_NEAR(eval::lpips_vgg_flops(256, 256) / convs, (256.0 * 256.0) / (224.0 * 224.0), 1e-4);
}

}  // namespace
}  // namespace aim
