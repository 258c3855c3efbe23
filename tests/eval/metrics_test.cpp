// Properties of the evaluator metrics beyond the fixture: singular covariances, self-distance,
// block-size independence, Inception Score limits, and the errors for bad inputs.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>

#include "aim/eval/metrics.h"
#include "test_util.h"

namespace aim::eval {
namespace {

/// Correlated Gaussian-ish features [n, d]: a random mixing of independent columns plus an offset.
torch::Tensor features(int64_t n, int64_t d, int64_t seed, double shift = 0.0) {
  torch::manual_seed(seed);
  const torch::Tensor z = torch::randn({n, d}, torch::kDouble);
  const torch::Tensor mix = torch::randn({d, d}, torch::kDouble) / std::sqrt(double(d)) +
                            torch::eye(d, torch::kDouble);
  return torch::mm(z, mix) + shift + 0.3 * torch::arange(d, torch::kDouble) / d;
}

/// FID from the centred data matrices instead of the covariances: with s = A A^T,
/// A = X_c^T / sqrt(n - 1), tr sqrt(s1 s2) is the sum of singular values of A1^T A2, which
/// needs no square root of a singular matrix.
double fid_from_data(const torch::Tensor& x1, const torch::Tensor& x2) {
  const auto centred = [](const torch::Tensor& x) {
    return (x - x.mean(0)) / std::sqrt(double(x.size(0) - 1));
  };
  const torch::Tensor a1 = centred(x1), a2 = centred(x2);  // [n, D]
  const torch::Tensor diff = x1.mean(0) - x2.mean(0);
  const double nuclear = torch::linalg_svdvals(torch::mm(a1, a2.t())).sum().item<double>();
  return diff.dot(diff).item<double>() + (a1 * a1).sum().item<double>() +
         (a2 * a2).sum().item<double>() - 2 * nuclear;
}

void expect_rel(const std::string& name, double actual, double expected, double rtol) {
  const double rel = std::abs(actual - expected) / std::max(std::abs(expected), 1e-300);
  std::printf("    %-52s %.15g vs %.15g  rel %.2e\n", name.c_str(), actual, expected, rel);
  EXPECT_LE(rel, rtol) << name;
}

TEST(MetricsTest, StatsMatchDirectFloat64Formula) {
  const torch::Tensor x = features(1000, 48, 1, 50.0).to(torch::kFloat);  // large mean
  const torch::Tensor x64 = x.to(torch::kDouble);
  const torch::Tensor mu = x64.mean(0);
  const torch::Tensor xc = x64 - mu;
  const torch::Tensor sigma = torch::mm(xc.t(), xc) / 999.0;
  for (int64_t block : {int64_t{1}, int64_t{3}, int64_t{999}, int64_t{1000}, int64_t{5000}}) {
    const FeatureStats s = compute_feature_stats(x, block);
    EXPECT_EQ(s.mu.scalar_type(), torch::kDouble);
    EXPECT_TRUE(s.mu.device().is_cpu());
    test::expect_close(str_cat("mu (block ", block, ")"), s.mu, mu, 1e-13);
    test::expect_close(str_cat("sigma (block ", block, ")"), s.sigma, sigma, 1e-12);
  }
  EXPECT_NE(test::error_of([&] { compute_feature_stats(x.slice(0, 0, 1)); })
                .find("at least 2 rows"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { compute_feature_stats(x.reshape({-1})); }).find("[N, D]"),
            std::string::npos);
}

// Sums added from parts (as ranks all-reduce them) give the statistics of the whole; the
// uncentred covariance loses digits with the mean's size (here mean 1, spread ~0.3, as pool3).
TEST(MetricsTest, FeatureSumsOfPartsGiveTheStatisticsOfTheWhole) {
  const torch::Tensor x = (features(700, 48, 2, 1.0) * 0.3 + 1.0).to(torch::kFloat);
  const FeatureStats whole = compute_feature_stats(x);
  FeatureSums a(48), b(48);
  a.add(x.slice(0, 0, 250));
  b.add(x.slice(0, 250, 600).to(torch::kDouble));
  b.add(x.slice(0, 600, 700));
  for (auto t : {&FeatureSums::sum, &FeatureSums::outer, &FeatureSums::count}) a.*t += b.*t;
  EXPECT_EQ(a.rows(), 700);
  const FeatureStats s = a.stats();
  test::expect_close("mu from sums", s.mu, whole.mu, 1e-13);
  test::expect_close("sigma from sums", s.sigma, whole.sigma, 1e-11);
  EXPECT_LT(std::abs(frechet_distance(s, whole)), 1e-9 * whole.sigma.trace().item<double>());
  FeatureSums one(48);
  one.add(x.slice(0, 0, 1));
  EXPECT_NE(test::error_of([&] { one.stats(); }).find("at least 2 rows"), std::string::npos);
  EXPECT_NE(test::error_of([&] { one.add(x.slice(1, 0, 8)); }).find("rows of 8 features, expected 48"),
            std::string::npos);
}

TEST(MetricsTest, RankDeficientCovarianceGivesFiniteAccurateFid) {
  // Fewer samples than dims, and a constant ("dead") column in both sets.
  torch::Tensor x1 = features(40, 64, 2), x2 = features(50, 64, 3, 0.2);
  x1.select(1, 5).fill_(1.5);
  x2.select(1, 5).fill_(1.5);
  x2.select(1, 9).fill_(-0.5);
  FrechetInfo info;
  const double fid =
      frechet_distance(compute_feature_stats(x1), compute_feature_stats(x2), {}, &info);
  const double ref = fid_from_data(x1, x2);
  ASSERT_TRUE(std::isfinite(fid));
  expect_rel("FID, 40 and 50 samples in 64 dims, dead columns", fid, ref, 1e-9);
  std::printf("    eps retry %s, most negative clamped eigenvalue %.3e\n",
              info.eps_used ? "used" : "not used", info.min_eigenvalue);
  EXPECT_FALSE(info.eps_used);
}

TEST(MetricsTest, FidOfASetWithItselfIsZero) {
  for (int64_t n : {int64_t{30}, int64_t{500}}) {  // singular and full-rank covariance
    const FeatureStats s = compute_feature_stats(features(n, 64, 4));
    const double fid = frechet_distance(s, s);
    const double scale = s.sigma.trace().item<double>();
    std::printf("    n = %lld: FID(s, s) = %.3e (tr sigma %.3f)\n", (long long)n, fid, scale);
    EXPECT_LE(std::abs(fid), 1e-11 * scale) << "n " << n;
  }
}

TEST(MetricsTest, FrechetErrors) {
  const FeatureStats s64 = compute_feature_stats(features(100, 64, 5));
  const FeatureStats s32 = compute_feature_stats(features(100, 32, 6));
  const std::string dims = test::error_of([&] { frechet_distance(s64, s32); });
  EXPECT_NE(dims.find("[64]"), std::string::npos) << dims;
  EXPECT_NE(dims.find("[32]"), std::string::npos) << dims;

  FeatureStats bad_shape{s64.mu, s64.sigma.slice(0, 0, 63)};
  EXPECT_NE(test::error_of([&] { frechet_distance(bad_shape, s64); }).find("sample sigma"),
            std::string::npos);

  FeatureStats nan{s64.mu.clone(), s64.sigma.clone()};
  nan.sigma[3][3] = std::nan("");
  EXPECT_NE(test::error_of([&] { frechet_distance(s64, nan); }).find("reference sigma has non-finite"),
            std::string::npos);

  // A "covariance" with a clearly negative eigenvalue is not one.
  FeatureStats not_psd{s64.mu, s64.sigma - 2 * torch::eye(64, torch::kDouble) *
                                                s64.sigma.diagonal().max().item<double>()};
  const std::string psd = test::error_of([&] { frechet_distance(not_psd, s64); });
  EXPECT_NE(psd.find("not positive semi-definite"), std::string::npos) << psd;
}

/// Random sets where many membership decisions are non-trivial.
void check_block_independence(torch::Device device) {
  const torch::Tensor a = features(150, 16, 7).to(device, torch::kFloat);
  const torch::Tensor b = features(110, 16, 8, 0.3).to(device, torch::kFloat);
  ManifoldOptions one;
  one.dtype = torch::kDouble;
  const PrecisionRecall whole = precision_recall(a, b, one);
  const torch::Tensor radii = knn_radii(a, one);
  EXPECT_EQ(radii.device(), a.device());
  std::printf("    one block: precision %.4f recall %.4f\n", whole.precision, whole.recall);
  EXPECT_GT(whole.precision, 0.05);
  EXPECT_LT(whole.precision, 0.999);
  const std::vector<std::pair<int64_t, int64_t>> blocks{{7, 5}, {1, 150}, {150, 1}, {64, 33}};
  for (const auto& [rows, cols] : blocks) {
    for (torch::ScalarType dtype : {torch::kDouble, torch::kFloat}) {
      ManifoldOptions o;
      o.row_block = rows;
      o.col_block = cols;
      o.dtype = dtype;
      ManifoldOptions ref = one;
      ref.dtype = dtype;
      const PrecisionRecall pr = precision_recall(a, b, o);
      const PrecisionRecall pr1 = precision_recall(a, b, ref);
      EXPECT_EQ(pr.precision, pr1.precision) << rows << "x" << cols << " " << dtype;
      EXPECT_EQ(pr.recall, pr1.recall) << rows << "x" << cols << " " << dtype;
      test::expect_close(str_cat("radii, blocks ", rows, "x", cols, " ", c10::toString(dtype)),
                         knn_radii(a, o), knn_radii(a, ref), 0.0, false,
                         dtype == torch::kDouble ? 1e-12 : 1e-5);
    }
  }
}

TEST(MetricsTest, BlockSizesDoNotChangePrecisionRecall) {
  check_block_independence(torch::kCPU);
}

TEST(MetricsTest, PrecisionRecallCudaMatchesCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible: CUDA case skipped";
  check_block_independence(torch::kCUDA);
  const torch::Tensor a = features(700, 64, 9).to(torch::kFloat);
  const torch::Tensor b = features(600, 64, 10, 0.2).to(torch::kFloat);
  for (torch::ScalarType dtype : {torch::kFloat, torch::kDouble}) {
    ManifoldOptions o;
    o.dtype = dtype;
    o.row_block = 256;
    o.col_block = 200;
    const PrecisionRecall cpu = precision_recall(a, b, o);
    const PrecisionRecall gpu = precision_recall(a.cuda(), b.cuda(), o);
    std::printf("    %s: cpu %.4f/%.4f cuda %.4f/%.4f\n", c10::toString(dtype), cpu.precision,
                cpu.recall, gpu.precision, gpu.recall);
    EXPECT_EQ(cpu.precision, gpu.precision);
    EXPECT_EQ(cpu.recall, gpu.recall);
    test::expect_close(str_cat("radii cuda vs cpu ", c10::toString(dtype)), knn_radii(b.cuda(), o),
                       knn_radii(b, o), 0.0, false, dtype == torch::kDouble ? 1e-12 : 1e-5);
  }
}

TEST(MetricsTest, PrecisionRecallOfIdenticalSetsIsOne) {
  const torch::Tensor a = features(80, 8, 11);
  const PrecisionRecall pr = precision_recall(a, a);
  EXPECT_EQ(pr.precision, 1.0);
  EXPECT_EQ(pr.recall, 1.0);
}

TEST(MetricsTest, PrecisionRecallErrors) {
  const torch::Tensor a = features(20, 8, 12), b = features(20, 8, 13);
  const std::string few = test::error_of([&] { precision_recall(a, b.slice(0, 0, 3)); });
  EXPECT_NE(few.find("sample features has 3 rows"), std::string::npos) << few;
  EXPECT_NE(few.find("k + 1 = 4"), std::string::npos) << few;
  ManifoldOptions k5;
  k5.k = 5;
  const std::string few_ref = test::error_of([&] { knn_radii(a.slice(0, 0, 5), k5); });
  EXPECT_NE(few_ref.find("has 5 rows"), std::string::npos) << few_ref;
  EXPECT_NE(few_ref.find("k + 1 = 6"), std::string::npos) << few_ref;
  const std::string dims = test::error_of([&] { precision_recall(a, features(20, 6, 14)); });
  EXPECT_NE(dims.find("reference features have 8 dims, sample features 6"), std::string::npos)
      << dims;
  ManifoldOptions half;
  half.dtype = torch::kHalf;
  EXPECT_NE(test::error_of([&] { precision_recall(a, b, half); }).find("Float or Double"),
            std::string::npos);
  torch::Tensor inf = b.clone();
  inf[2][2] = std::numeric_limits<double>::infinity();
  EXPECT_NE(test::error_of([&] { precision_recall(a, inf); }).find("non-finite"),
            std::string::npos);
}

TEST(MetricsTest, InceptionScoreLimits) {
  // Uniform predictions: every p_i equals the marginal, KL = 0, IS = 1.
  EXPECT_NEAR(inception_score(torch::zeros({100, 1008}), 5000), 1.0, 1e-12);
  EXPECT_NEAR(inception_score_from_probs(torch::full({37, 1008}, 1.0 / 1008), 10), 1.0, 1e-12);
  // Confident and evenly spread over 10 classes: IS = 10, with 0 * log 0 = 0 elsewhere.
  const torch::Tensor labels = torch::arange(200) % 10;
  const torch::Tensor one_hot = torch::one_hot(labels, 1008).to(torch::kDouble);
  EXPECT_NEAR(inception_score_from_probs(one_hot, 5000), 10.0, 1e-12);
  EXPECT_NEAR(inception_score_from_probs(one_hot, 50), 10.0, 1e-12);  // 4 splits of 50
  // Nearly one-hot logits: probabilities underflow to 0, the score stays finite.
  EXPECT_NEAR(inception_score(one_hot * 2000.0, 5000), 10.0, 1e-9);
  // Splits: one row per split gives KL = 0 in each.
  EXPECT_NEAR(inception_score(torch::randn({9, 20}), 1), 1.0, 1e-12);

  EXPECT_NE(test::error_of([] { inception_score(torch::zeros({4, 10}), 0); }).find("split_size"),
            std::string::npos);
  EXPECT_NE(test::error_of([] { inception_score_from_probs(torch::ones({4, 10}), 5); })
                .find("sum to 1"),
            std::string::npos);
}

}  // namespace
}  // namespace aim::eval
