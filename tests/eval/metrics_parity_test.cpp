// Parity of the ADM-evaluator metrics with golden values: every folder under
// $AIM_FIXTURES_DIR/eval whose config.json has "kind": "metrics" (tests/fixtures/eval/README.md,
// "metrics_dev/") is checked; folders of other kinds are skipped here. Errors are printed.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "aim/core/safetensors.h"
#include "aim/eval/metrics.h"
#include "test_util.h"

namespace aim::eval {
namespace {

namespace fs = std::filesystem;

constexpr double kStatsTol = 1e-12;   // mu/sigma vs np.mean/np.cov, relative to max |value|
constexpr double kFidRtol = 1e-8;     // float64 eigh vs the 50-digit value (README)
constexpr double kIsRtol = 1e-10;     // float64 softmax on both sides
constexpr double kRadii64Rtol = 1e-12;
constexpr double kRadii32Rtol = 1e-5;  // float32 distances of centred features

struct MetricsCase {
  std::string name;
  nlohmann::json config;
  std::map<std::string, torch::Tensor> t;
  double value(const std::string& key) const { return t.at(key).item<double>(); }
};

/// Loads folder `name` under eval/; returns false (with a printed reason) for other kinds.
bool load_case(const std::string& name, MetricsCase* c) {
  const fs::path dir = test::fixtures_dir() / "eval" / name;
  std::ifstream in(dir / "config.json");
  if (!in) throw std::runtime_error((dir / "config.json").string() + ": cannot open");
  c->name = name;
  c->config = nlohmann::json::parse(in);
  const std::string kind = c->config.value("kind", "");
  if (kind != "metrics") {
    std::printf("[ case %s ] kind \"%s\": not a metrics folder, skipped here\n", name.c_str(),
                kind.c_str());
    return false;
  }
  c->t = load_safetensors((dir / c->config.value("case_file", "cases.safetensors")).string());
  std::printf("[ case %s ] feats_a %s feats_b %s logits %s\n", name.c_str(),
              c10::str(c->t.at("feats_a").sizes()).c_str(),
              c10::str(c->t.at("feats_b").sizes()).c_str(),
              c10::str(c->t.at("logits").sizes()).c_str());
  return true;
}

void expect_rel(const std::string& name, double actual, double expected, double rtol) {
  const double rel = std::abs(actual - expected) / std::max(std::abs(expected), 1e-300);
  std::printf("    %-44s %.17g vs %.17g  rel %.3e  (%.1f%% of tolerance)\n", name.c_str(), actual,
              expected, rel, 100.0 * rel / rtol);
  EXPECT_LE(rel, rtol) << name << ": " << actual << " vs " << expected;
}

/// Count of points behind a fraction of `n` (precision/recall are counts / n).
int64_t count_of(double fraction, int64_t n) { return std::llround(fraction * n); }

class MetricsParity : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    ASSERT_NE(GetParam(), "NO_FIXTURES_FOUND")
        << "no folder with a config.json under " << (test::fixtures_dir() / "eval")
        << "; set AIM_FIXTURES_DIR or copy the eval fixtures into tests/fixtures/eval";
    if (!load_case(GetParam(), &c_)) GTEST_SKIP() << GetParam() << ": not kind \"metrics\"";
  }
  MetricsCase c_;
};

TEST_P(MetricsParity, FeatureStatistics) {
  for (const char* set : {"a", "b"}) {
    const torch::Tensor feats = c_.t.at(std::string("feats_") + set);
    for (int64_t block : {int64_t{4096}, int64_t{7}}) {
      const FeatureStats s = compute_feature_stats(feats, block);
      const std::string tag = std::string(set) + " (block " + std::to_string(block) + ")";
      test::expect_close("mu_" + tag, s.mu, c_.t.at(std::string("mu_") + set), kStatsTol);
      test::expect_close("sigma_" + tag, s.sigma, c_.t.at(std::string("sigma_") + set),
                         kStatsTol);
    }
  }
}

TEST_P(MetricsParity, FrechetDistance) {
  const FeatureStats a{c_.t.at("mu_a"), c_.t.at("sigma_a")};
  const FeatureStats b{c_.t.at("mu_b"), c_.t.at("sigma_b")};
  FrechetInfo info;
  const double fid = frechet_distance(b, a, {}, &info);
  expect_rel("FID (stored stats) vs fid_accurate", fid, c_.value("fid_accurate"), kFidRtol);
  expect_rel("FID (stored stats) vs ADM's sqrtm value", fid, c_.value("fid"), kFidRtol);
  EXPECT_FALSE(info.eps_used);
  std::printf("    eps retry %s, most negative clamped eigenvalue %.3e\n",
              info.eps_used ? "used" : "not used", info.min_eigenvalue);
  expect_rel("FID (reference and sample swapped)", frechet_distance(a, b),
             c_.value("fid_accurate"), kFidRtol);
  const double fid_feats = frechet_distance(compute_feature_stats(c_.t.at("feats_b")),
                                            compute_feature_stats(c_.t.at("feats_a")));
  expect_rel("FID (stats from feats)", fid_feats, c_.value("fid_accurate"), kFidRtol);
  const double fid_f32 =
      frechet_distance(compute_feature_stats(c_.t.at("feats_b").to(torch::kFloat)),
                       compute_feature_stats(c_.t.at("feats_a").to(torch::kFloat)));
  expect_rel("FID (stats from float32 feats)", fid_f32, c_.value("fid_accurate"), 1e-5);
}

TEST_P(MetricsParity, PrecisionRecallAndRadii) {
  const torch::Tensor fa = c_.t.at("feats_a"), fb = c_.t.at("feats_b");
  const int64_t na = fa.size(0), nb = fb.size(0);
  const int64_t k = c_.config["parameters"].value("nhood_size_k", 3);
  for (torch::ScalarType dtype : {torch::kFloat, torch::kDouble}) {
    for (int64_t block : {int64_t{10000}, int64_t{64}}) {
      ManifoldOptions o;
      o.k = k;
      o.dtype = dtype;
      o.row_block = block;
      o.col_block = block == 10000 ? block : block - 27;
      const std::string tag = str_cat(c10::toString(dtype), ", blocks ", o.row_block, "x",
                                      o.col_block);
      const PrecisionRecall pr = precision_recall(fa, fb, o);
      std::printf("    %-44s precision %.6f (%lld / %lld)  recall %.6f (%lld / %lld)\n",
                  tag.c_str(), pr.precision, (long long)count_of(pr.precision, nb),
                  (long long)nb, pr.recall, (long long)count_of(pr.recall, na), (long long)na);
      EXPECT_EQ(count_of(pr.precision, nb), count_of(c_.value("precision_exact"), nb)) << tag;
      EXPECT_EQ(count_of(pr.recall, na), count_of(c_.value("recall_exact"), na)) << tag;
      EXPECT_EQ(pr.precision, c_.value("precision_exact")) << tag;
      EXPECT_EQ(pr.recall, c_.value("recall_exact")) << tag;

      const double rtol = dtype == torch::kDouble ? kRadii64Rtol : kRadii32Rtol;
      for (const char* set : {"a", "b"}) {
        const torch::Tensor r = knn_radii(std::string(set) == "a" ? fa : fb, o);
        EXPECT_EQ(r.scalar_type(), dtype);
        test::expect_close(str_cat("radii_", set, " (", tag, ")"), r,
                           c_.t.at(str_cat("radii_", set, "_exact")), 0.0, false, rtol);
      }
    }
  }
  std::printf("    ADM's float16 precision/recall: %.6f / %.6f\n", c_.value("precision"),
              c_.value("recall"));
}

TEST_P(MetricsParity, InceptionScore) {
  const torch::Tensor logits = c_.t.at("logits"), probs = c_.t.at("probs");
  const int64_t split = c_.config["parameters"].value("is_split_size", 5000);
  const int64_t split_short =
      c_.config["parameters"].value("is_split_size_for_inception_score_split128", 128);
  expect_rel(str_cat("IS (logits, split ", split, ")"), inception_score(logits, split),
             c_.value("inception_score"), kIsRtol);
  expect_rel(str_cat("IS (probs, split ", split, ")"), inception_score_from_probs(probs, split),
             c_.value("inception_score"), kIsRtol);
  expect_rel(str_cat("IS (logits, split ", split_short, ")"),
             inception_score(logits, split_short), c_.value("inception_score_split128"),
             kIsRtol);
  expect_rel(str_cat("IS (probs, split ", split_short, ")"),
             inception_score_from_probs(probs, split_short),
             c_.value("inception_score_split128"), kIsRtol);
  expect_rel("IS (float32 logits)", inception_score(logits.to(torch::kFloat), split),
             c_.value("inception_score"), 1e-6);
}

std::vector<std::string> eval_cases() {
  auto cases = test::fixture_cases("eval", {"config.json"});
  if (cases.empty()) cases.push_back("NO_FIXTURES_FOUND");
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, MetricsParity, ::testing::ValuesIn(eval_cases()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace aim::eval
