// The built-in shapes dataset and its analyser: determinism, layout, accuracy on clean and
// degraded images, "no shape" on backgrounds, and the CLI's exit codes and messages.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "aim/data/image.h"
#include "aim/data/shapes.h"
#include "test_util.h"

namespace aim {
namespace {
namespace fs = std::filesystem;

std::string read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

/// Separable Gaussian blur (clamped borders), then per-image colour shift and per-pixel noise:
/// roughly what a VQ round trip and a sampler do to an image.
Image degrade(const Image& im, double sigma, double shift, double noise, std::mt19937& rng) {
  const int radius = static_cast<int>(std::ceil(3 * sigma));
  std::vector<double> k(2 * radius + 1);
  double sum = 0;
  for (int i = -radius; i <= radius; ++i) sum += k[i + radius] = std::exp(-0.5 * i * i / (sigma * sigma));
  for (double& v : k) v /= sum;
  const int w = im.width, h = im.height;
  std::vector<double> tmp(static_cast<size_t>(w) * h * 3), out(tmp.size());
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) {
        double s = 0;
        for (int i = -radius; i <= radius; ++i) s += k[i + radius] * im.pixel(std::clamp(x + i, 0, w - 1), y)[c];
        tmp[(static_cast<size_t>(y) * w + x) * 3 + c] = s;
      }
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) {
        double s = 0;
        for (int i = -radius; i <= radius; ++i)
          s += k[i + radius] * tmp[(static_cast<size_t>(std::clamp(y + i, 0, h - 1)) * w + x) * 3 + c];
        out[(static_cast<size_t>(y) * w + x) * 3 + c] = s;
      }
  std::uniform_real_distribution<double> u(-shift, shift);
  std::normal_distribution<double> n(0, noise);
  const double d[3] = {u(rng), u(rng), u(rng)};
  Image res(w, h);
  for (size_t i = 0; i < out.size(); ++i)
    res.rgb[i] = static_cast<uint8_t>(std::clamp(std::lround(out[i] + d[i % 3] + n(rng)), 0L, 255L));
  return res;
}

struct Accuracy {
  int correct = 0, total = 0;
  double centre_err = 0, size_err = 0;  // mean, pixels / relative
};

Accuracy measure(const ShapesOptions& o, int64_t per_class, bool degraded) {
  std::mt19937 rng(1234);
  Accuracy a;
  std::vector<int> wrong(kNumShapeClasses, 0);
  for (int label = 0; label < o.classes; ++label)
    for (int64_t i = 0; i < per_class; ++i) {
      ShapeSample s = make_shape_sample(o, label, i);
      const Image im = degraded ? degrade(s.image, 1.0, 12, 5, rng) : s.image;
      const ShapeAnalysis r = analyse_shape(im);
      ++a.total;
      if (r.label == label) {
        ++a.correct;
        a.centre_err += std::hypot(r.cx - s.params.cx, r.cy - s.params.cy);
        a.size_err += std::abs(r.size - s.params.size) / s.params.size;
      } else {
        ++wrong[label];
        if (wrong[label] <= 2)
          std::printf("    miss: %s #%lld -> label %d (shape %d colour %d; hole %.2f solidity %.2f h3 %.3f h4 %.3f)\n",
                      shape_class_dir(label).c_str(), static_cast<long long>(i), r.label, r.shape, r.colour, r.hole,
                      r.solidity, r.harmonic3, r.harmonic4);
      }
    }
  if (a.correct) {
    a.centre_err /= a.correct;
    a.size_err /= a.correct;
  }
  return a;
}

TEST(Shapes, SameSeedSameBytesOtherSeedOtherImages) {
  ShapesOptions o;
  o.seed = 7;
  for (int label : {0, 2, 4, 7}) {
    const ShapeSample a = make_shape_sample(o, label, 11), b = make_shape_sample(o, label, 11);
    EXPECT_EQ(a.image.rgb, b.image.rgb) << shape_class_dir(label);
    EXPECT_EQ(encode_png(a.image), encode_png(b.image));
    ShapesOptions other = o;
    other.seed = 8;
    EXPECT_NE(a.image.rgb, make_shape_sample(other, label, 11).image.rgb) << shape_class_dir(label);
    EXPECT_NE(a.image.rgb, make_shape_sample(o, label, 12).image.rgb) << shape_class_dir(label);
  }
}

TEST(Shapes, DatasetLayoutAndThreadIndependence) {
  ShapesOptions o;
  o.classes = 10;
  o.per_class = 3;
  o.size = 32;
  o.seed = 5;
  const fs::path root = fs::temp_directory_path() / "aim_shapes_layout";
  fs::remove_all(root);
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  write_shapes_dataset((root / "a").string(), o);
  at::set_num_threads(3);
  write_shapes_dataset((root / "b").string(), o);
  at::set_num_threads(threads);
  std::ifstream classes(root / "a" / "classes.txt");
  std::string line;
  int n = 0;
  while (std::getline(classes, line)) {
    ASSERT_LT(n, 10);
    EXPECT_EQ(line, shape_class_dir(n));
    int files = 0;
    for (const auto& e : fs::directory_iterator(root / "a" / line)) {
      ++files;
      EXPECT_EQ(read_bytes(e.path()), read_bytes(root / "b" / line / e.path().filename())) << e.path();
    }
    EXPECT_EQ(files, 3) << line;
    EXPECT_TRUE(fs::exists(root / "a" / line / "00002.png")) << line;
    ++n;
  }
  EXPECT_EQ(n, 10);
  std::ifstream truth(root / "a" / "truth.jsonl");
  int lines = 0;
  while (std::getline(truth, line)) {
    if (lines == 0) {
      EXPECT_NE(line.find("\"path\": \"0_red_disc/00000.png\""), std::string::npos) << line;
      EXPECT_NE(line.find("\"rotation\": 0.000"), std::string::npos) << line;  // discs do not turn
    }
    ++lines;
  }
  EXPECT_EQ(lines, 30);
  EXPECT_EQ(read_bytes(root / "a" / "truth.jsonl"), read_bytes(root / "b" / "truth.jsonl"));
  fs::remove_all(root);
}

TEST(Shapes, ParametersVaryWithinEachClass) {
  ShapesOptions o;
  for (int label = 0; label < kNumShapeClasses; ++label) {
    double min_x = 1e9, max_x = -1e9, min_r = 1e9, max_r = -1e9;
    for (int64_t i = 0; i < 40; ++i) {
      const ShapeParams p = make_shape_sample(o, label, i).params;
      EXPECT_EQ(p.label, label);
      EXPECT_GE(p.cx - p.size, 0.0);
      EXPECT_LE(p.cy + p.size, static_cast<double>(o.size));
      min_x = std::min(min_x, p.cx), max_x = std::max(max_x, p.cx);
      min_r = std::min(min_r, p.size), max_r = std::max(max_r, p.size);
    }
    EXPECT_GT(max_x - min_x, 0.2 * o.size) << shape_class_dir(label);
    EXPECT_GT(max_r - min_r, 0.08 * o.size) << shape_class_dir(label);
  }
}

TEST(Shapes, AnalyserReadsGroundTruth) {
  ShapesOptions o;
  o.seed = 3;
  const Accuracy a = measure(o, 60, false);
  std::printf("    clean 64x64: accuracy %.2f%% (%d / %d), mean centre error %.2f px, size error %.1f%%\n",
              100.0 * a.correct / a.total, a.correct, a.total, a.centre_err, 100 * a.size_err);
  EXPECT_GE(a.total, 500);
  EXPECT_GE(a.correct, 0.99 * a.total);
  EXPECT_LT(a.centre_err, 1.0);
  EXPECT_LT(a.size_err, 0.1);
}

TEST(Shapes, AnalyserToleratesBlurNoiseAndColourShift) {
  ShapesOptions o;
  o.seed = 4;
  const Accuracy a = measure(o, 60, true);
  std::printf("    blur sigma 1, shift +-12, noise sigma 5: accuracy %.2f%% (%d / %d), centre error %.2f px\n",
              100.0 * a.correct / a.total, a.correct, a.total, a.centre_err);
  EXPECT_GE(a.correct, 0.95 * a.total);
}

TEST(Shapes, NoShapeOnABackground) {
  ShapesOptions o;
  std::mt19937 rng(9);
  for (int64_t i = 0; i < 40; ++i) {
    const Image bg = make_shape_background(o, static_cast<int>(i % 10), i);
    EXPECT_EQ(analyse_shape(bg).label, -1) << i;
    EXPECT_EQ(analyse_shape(bg).shape, -1) << i;
    EXPECT_EQ(analyse_shape(degrade(bg, 1.0, 12, 5, rng)).shape, -1) << i;
  }
  EXPECT_EQ(analyse_shape(Image(64, 64)).shape, -1);
}

TEST(Shapes, ScoreCountsConfusionsAndSpread) {
  std::vector<ShapeAnalysis> a(4);
  a[0].label = 1, a[0].shape = 1, a[0].cx = 10, a[0].size = 8;
  a[1].label = 1, a[1].shape = 1, a[1].cx = 30, a[1].size = 8;
  a[2].label = -1, a[2].shape = -1;
  a[3].label = 2, a[3].shape = 2, a[3].cx = 20, a[3].size = 8;
  const ShapeScore s = score_shapes(a, {1, 1, 1, 3}, {64, 64, 64, 64});
  EXPECT_EQ(s.correct, 2);
  EXPECT_EQ(s.no_shape, 1);
  EXPECT_EQ(s.confusion[1][0], 1);  // truth 1 -> none
  EXPECT_EQ(s.confusion[3][3], 1);  // truth 3 -> 2
  EXPECT_NEAR(s.per_class[1].std_cx, 10.0 / 64, 1e-12);
  EXPECT_EQ(s.per_class[1].std_size, 0.0);
  EXPECT_EQ(s.per_class[1].count, 3);
  EXPECT_EQ(s.per_class[1].detected, 2);  // a[2] had no shape
  EXPECT_EQ(s.per_class[3].detected, 1);  // one shape: no spread (0), which the demo's report leaves out
  EXPECT_NE(test::error_of([] { score_shapes(std::vector<ShapeAnalysis>(2), {1}, {64, 64}); }), "");
}

TEST(Shapes, OptionErrorsNameTheFlag) {
  auto bad = [](auto set) {
    ShapesOptions o;
    set(o);
    return test::error_of([&] { o.validate(); });
  };
  EXPECT_NE(bad([](ShapesOptions& o) { o.classes = 0; }).find("--classes"), std::string::npos);
  EXPECT_NE(bad([](ShapesOptions& o) { o.classes = 11; }).find("--classes"), std::string::npos);
  EXPECT_NE(bad([](ShapesOptions& o) { o.per_class = 0; }).find("--per-class"), std::string::npos);
  EXPECT_NE(bad([](ShapesOptions& o) { o.size = 8; }).find("--size"), std::string::npos);
  EXPECT_EQ(bad([](ShapesOptions&) {}), "");
}

test::RunResult run_aim(const std::string& args) {
  return test::run_shell(test::aim_binary() + " " + args);
}

TEST(Shapes, CliWritesAndAnalysesADataset) {
  const fs::path root = fs::temp_directory_path() / "aim_shapes_cli";
  fs::remove_all(root);
  auto r = run_aim("make-dataset shapes --out " + (root / "d").string() + " --per-class 4 --seed 2");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("40 images of 64x64"), std::string::npos) << r.output;
  r = run_aim("analyse-shapes " + (root / "d").string() + " --json " + (root / "s.json").string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("accuracy 100.00% (40 / 40)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("9_lime_cross"), std::string::npos) << r.output;
  EXPECT_NE(read_bytes(root / "s.json").find("\"accuracy\": 1"), std::string::npos);
  // A second dataset into the same folder would mix with the first: refused.
  r = run_aim("make-dataset shapes --out " + (root / "d").string() + " --per-class 2 --seed 3");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("d: the folder is not empty"), std::string::npos) << r.output;
  // Flat files named as aim sample --outdir names them carry their label.
  fs::create_directories(root / "flat");
  fs::copy_file(root / "d" / "3_yellow_ring" / "00000.png", root / "flat" / "000000_class3.png");
  fs::copy_file(root / "d" / "4_magenta_cross" / "00000.png", root / "flat" / "000001_class3.png");
  r = run_aim("analyse-shapes " + (root / "flat").string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("accuracy 50.00% (1 / 2)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("3_yellow_ring -> 4_magenta_cross: 1"), std::string::npos) << r.output;
  // A label beyond the shape classes (samples of a model with more classes) is no truth, and said.
  fs::copy_file(root / "d" / "3_yellow_ring" / "00000.png", root / "flat" / "000002_class11.png");
  r = run_aim("analyse-shapes " + (root / "flat").string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("one folder, 1 file labelled beyond the 10 shape classes (no truth)"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("accuracy 50.00% (1 / 2)"), std::string::npos) << r.output;
  fs::remove_all(root);
}

TEST(Shapes, CliBadValuesExitNonZeroNamingTheFlag) {
  const std::string out = (fs::temp_directory_path() / "aim_shapes_bad").string();
  for (const auto& [args, flag] : std::vector<std::pair<std::string, std::string>>{
           {"--classes 0", "--classes"}, {"--size 8", "--size"}, {"--per-class 0", "--per-class"}}) {
    auto r = run_aim("make-dataset shapes --out " + out + " " + args);
    EXPECT_NE(r.code, 0) << args;
    EXPECT_NE(r.output.find(flag), std::string::npos) << args << "\n" << r.output;
  }
  EXPECT_FALSE(fs::exists(out));
  auto r = run_aim("analyse-shapes /nonexistent/shapes.png");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("/nonexistent/shapes.png"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace aim
