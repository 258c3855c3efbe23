// ops::sample_tokens_keyed: on the CPU it is its definition (fp32 cfg_combine, keyed uniforms,
// ref::sample_tokens), in CI. On a GPU, the fused kernel against that definition and against
// an fp64 oracle with an explicit tie rule: tokens must be equal except where u (or the top-p
// cut) lies within kBoundaryTolerance of a decision boundary, which is checked row by row, and,
// against the reference only, where torch's unspecified order of tied logits decides. Also:
// the device uniforms equal sample_uniform bit for bit, the step read from the device equals
// the scalar step, and 200k draws of one row pass a chi-square test against the filtered
// softmax. Outputs are poisoned before every launch.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "aim/ops/dispatch.h"
#include "aim/ops/sampling.h"
#include "aim/sample/generate.h"
#include "ops/sampling_oracle.h"
#include "test_util.h"
#ifdef AIM_WITH_CUDA
#include "ops/sampling_cuda.h"
#endif

namespace aim {
namespace {

using test::all_settings;
using test::describe;
using test::expect_tally;
using test::GridCase;
using test::guided_cpu;
using test::kBoundaryTolerance;
using test::make_logits;
using test::oracle_filter;
using test::OracleFilter;
using test::Settings;
using test::Tally;
using test::tally_rows;

// ---------------------------------------------------------------- CPU (CI)

TEST(SampleTokensKeyed, UniformIsTheRecordedHash) {
  // Values of the hash as first recorded (src/sample/generate.cpp before it moved to kernels/).
  struct Golden {
    uint64_t seed;
    int64_t sample, step;
    double u;
  };
  for (const auto& g : {Golden{0ull, 0, 0, 0x1.7c0bd4c779f84p-1},
                        Golden{1234ull, 7, 255, 0x1.c827f7c61b17p-5},
                        Golden{~0ull, 49999, 1, 0x1.b95a0411c40afp-1}}) {
    EXPECT_EQ(sample_uniform(g.seed, g.sample, g.step), g.u);
    EXPECT_EQ(ops::keyed_uniform(g.seed, g.sample, g.step), g.u);
  }
}

// The keyed uniforms as a generator: uniform along the sample axis (the images of one step) and
// along the step axis (one image's tokens), and neighbours in either axis uncorrelated (an FID's
// 50,000 images x 256 tokens draw from them). Chi-square over 64 bins at 0.1% (critical value
// 104.0 for 63 degrees of freedom), and correlations within 4 standard errors of 0.
TEST(SampleTokensKeyed, UniformsAreUniformAndIndependentAlongBothAxes) {
  const int64_t samples = 20000, steps = 256, bins = 64;
  auto check = [&](const std::string& what, const std::function<double(int64_t)>& u, int64_t n) {
    std::vector<int64_t> count(bins, 0);
    double sxy = 0, sx = 0, sxx = 0;
    double prev = u(0);
    for (int64_t i = 0; i < n; ++i) {
      const double v = i == 0 ? prev : u(i);
      ASSERT_GE(v, 0.0) << what;
      ASSERT_LT(v, 1.0) << what;
      ++count[static_cast<size_t>(v * bins)];
      if (i > 0) sxy += (prev - 0.5) * (v - 0.5);
      sx += v - 0.5;
      sxx += (v - 0.5) * (v - 0.5);
      prev = v;
    }
    double chi2 = 0;
    const double e = static_cast<double>(n) / bins;
    for (const auto c : count) chi2 += (c - e) * (c - e) / e;
    const double corr = (sxy / (n - 1)) / (sxx / n);
    std::printf("    %-44s chi2 %.1f (63 dof), lag-1 correlation %+.4f\n", what.c_str(), chi2, corr);
    EXPECT_LT(chi2, 104.0) << what;
    EXPECT_LT(std::abs(corr), 4.0 / std::sqrt(static_cast<double>(n))) << what;
    EXPECT_LT(std::abs(sx / n), 4.0 * std::sqrt(1.0 / 12.0 / n)) << what;
  };
  for (const uint64_t seed : {0ull, 1ull, 0x9e3779b97f4a7c15ull}) {
    for (const int64_t step : {int64_t{0}, int64_t{1}, int64_t{255}})
      check(str_cat("seed ", seed, ", step ", step, ", over samples"),
            [&](int64_t i) { return ops::keyed_uniform(seed, i, step); }, samples);
    for (const int64_t sample : {int64_t{0}, int64_t{49999}, int64_t{123456789}}) {
      // One image's 256 tokens are few: its steps are pooled over 80 consecutive images.
      check(str_cat("seed ", seed, ", sample ", sample, ".., over steps"),
            [&](int64_t i) { return ops::keyed_uniform(seed, sample + i / steps, i % steps); }, 80 * steps);
    }
  }
}

TEST(SampleTokensKeyed, CpuIsTheComposition) {
  torch::manual_seed(3);
  const uint64_t seed = 99;
  const int64_t step = 17;
  auto ids = torch::tensor({5, 0, 123456789, 42, 7}, torch::kLong);
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    for (bool guided : {false, true}) {
      auto [cond, uncond] = make_logits(5, 300, dtype, guided, torch::kCPU);
      const double cfg = guided ? 4.0 : 1.0;
      auto uniforms = torch::empty({5}, torch::kDouble);
      for (int64_t b = 0; b < 5; ++b) {
        uniforms[b] = sample_uniform(seed, ids[b].item<int64_t>(), step);
      }
      auto logits = cond.to(torch::kFloat);
      if (guided) logits = ops::cfg_combine(logits, uncond.to(torch::kFloat), cfg);
      for (const auto& s : all_settings()) {
        auto expect = ops::ref::sample_tokens(logits, s.temperature, s.top_k, s.top_p, uniforms);
        auto got = ops::sample_tokens_keyed(cond, uncond, cfg, s.temperature, s.top_k, s.top_p,
                                            seed, ids, step);
        EXPECT_TRUE(torch::equal(got, expect)) << describe(s);
        auto at_step = ops::sample_tokens_keyed(cond, uncond, cfg, s.temperature, s.top_k,
                                                s.top_p, seed, ids, torch::tensor(step));
        EXPECT_TRUE(torch::equal(at_step, expect)) << describe(s) << ", step as a tensor";
      }
    }
  }
  auto cond = torch::randn({5, 300});
  EXPECT_THROW(ops::sample_tokens_keyed(cond, {}, 1.0, 1.0, 0, 1.0, seed, ids.narrow(0, 0, 4), 0),
               c10::Error);
  EXPECT_THROW(ops::sample_tokens_keyed(cond, cond.narrow(1, 0, 200), 2.0, 1.0, 0, 1.0, seed, ids, 0),
               c10::Error);
  EXPECT_THROW(ops::sample_tokens_keyed(cond, {}, 1.0, 1.0, 0, 1.5, seed, ids, 0), c10::Error);
  EXPECT_THROW(ops::sample_tokens_keyed(cond, {}, 1.0, 0.0, 0, 1.0, seed, ids, 0), c10::Error);
}

// The oracle the GPU tests trust equals the reference wherever ties do not decide.
TEST(SampleTokensKeyed, OracleIsTheReference) {
  torch::manual_seed(11);
  Tally tally;
  int64_t call = 0;
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    for (bool guided : {false, true}) {
      for (int64_t vocab : {1000, 33}) {
        auto [cond, uncond] = make_logits(7, vocab, dtype, guided, torch::kCPU);
        const double cfg = guided ? 1.5 : 1.0;
        auto ids = torch::randint(0, 1 << 20, {7}, torch::kLong);
        const auto g = guided_cpu(cond, uncond, cfg);
        for (const auto& s : all_settings()) {
          const uint64_t seed = 1000 + call++;
          auto expect = ops::sample_tokens_keyed(cond, uncond, cfg, s.temperature, s.top_k,
                                                 s.top_p, seed, ids, 3);
          // The reference in place of the kernel: every checked row must agree.
          tally_rows(expect, expect, g, ids, seed, 3, s, tally, describe(s), true);
        }
      }
    }
  }
  expect_tally(tally, "oracle vs reference (CPU)");
}

// ---------------------------------------------------------------- CUDA kernel

class SampleTokensCuda : public test::CudaKernelTest<::testing::Test> {};

class SampleTokensCudaGrid : public test::CudaKernelTest<::testing::TestWithParam<GridCase>> {};

TEST_P(SampleTokensCudaGrid, TokensEqualTheDefinition) {
  test::check_sample_grid(
      GetParam(), torch::kCUDA, {1, 7, 64},
      [](const torch::Tensor& cond, const torch::Tensor& uncond, double cfg, double temperature,
         int64_t top_k, double top_p, uint64_t seed, const torch::Tensor& ids, int64_t step) {
        return ops::sample_tokens_keyed(cond, uncond, cfg, temperature, top_k, top_p, seed, ids,
                                        step);
      },
      [](const torch::Tensor& cond, const torch::Tensor& uncond, const Settings& s) {
#ifdef AIM_WITH_CUDA
        return ops::cuda::sample_tokens_keyed_supported(cond, uncond, s.temperature, s.top_k,
                                                        s.top_p);
#else
        return false;
#endif
      });
}

INSTANTIATE_TEST_SUITE_P(Kernel, SampleTokensCudaGrid,
                         ::testing::Values(GridCase{torch::kFloat, false},
                                           GridCase{torch::kFloat, true},
                                           GridCase{torch::kBFloat16, false},
                                           GridCase{torch::kBFloat16, true}),
                         [](const auto& info) {
                           return std::string(info.param.dtype == torch::kBFloat16 ? "bf16"
                                                                                  : "fp32") +
                                  (info.param.guided ? "_cfg" : "_plain");
                         });

#ifdef AIM_WITH_CUDA
TEST_F(SampleTokensCuda, DeviceUniformIsSampleUniform) {
  const auto dev = torch::Device(torch::kCUDA);
  // Small and large sample ids, negative ones too: the hash takes any int64.
  std::vector<int64_t> id(4096);
  std::mt19937_64 rng(5);
  for (size_t b = 0; b < id.size(); ++b) id[b] = b < 2048 ? static_cast<int64_t>(b) : static_cast<int64_t>(rng());
  auto ids = torch::tensor(id, torch::kLong);
  const auto ids_dev = ids.to(dev);
  auto cond = torch::randn({ids.size(0), 2}, dev);
  int64_t checked = 0, differ = 0;
  for (uint64_t seed : {0ull, 1ull, 0xdeadbeefull, (1ull << 63) + 12345, ~0ull}) {
    for (int64_t step : {int64_t{0}, int64_t{1}, int64_t{255}, int64_t{256}, int64_t{1} << 20,
                         (int64_t{1} << 40) + 3}) {
      auto uniforms = torch::empty({ids.size(0)}, torch::dtype(torch::kDouble).device(dev));
      ops::cuda::sample_tokens_keyed(cond, {}, 1.0, 1.0, 0, 1.0, seed, ids_dev, step, {}, uniforms);
      const auto u = uniforms.cpu();
      for (int64_t b = 0; b < ids.size(0); ++b) {
        const double want = sample_uniform(seed, id[b], step);
        const double have = u.data_ptr<double>()[b];
        differ += std::memcmp(&want, &have, sizeof(double)) != 0;
        ++checked;
      }
    }
  }
  std::printf("    %lld (seed, sample, step) triples, %lld differ\n",
              static_cast<long long>(checked), static_cast<long long>(differ));
  EXPECT_EQ(differ, 0);
}

TEST_F(SampleTokensCuda, StepOnTheDeviceEqualsTheScalar) {
  const auto dev = torch::Device(torch::kCUDA);
  torch::manual_seed(6);
  auto [cond, uncond] = make_logits(16, 16384, torch::kBFloat16, true, dev);
  auto ids = torch::arange(100, 116, torch::dtype(torch::kLong).device(dev));
  auto step = torch::zeros({}, torch::dtype(torch::kLong).device(dev));
  for (const Settings& s : {Settings{1.0, 0, 1.0}, Settings{1.0, 50, 0.9}, Settings{0.8, 0, 0.95}}) {
    for (int64_t t : {0, 1, 200}) {
      step.fill_(t);  // a device-side counter, as a replayed CUDA graph would read it
      auto a = ops::sample_tokens_keyed(cond, uncond, 4.0, s.temperature, s.top_k, s.top_p, 3,
                                        ids, step);
      auto b = ops::sample_tokens_keyed(cond, uncond, 4.0, s.temperature, s.top_k, s.top_p, 3,
                                        ids, t);
      EXPECT_TRUE(torch::equal(a, b)) << describe(s) << " step " << t;
    }
  }
}

TEST_F(SampleTokensCuda, BroadcastRowDrawsTheFilteredSoftmax) {
  // One row drawn 200000 times (sample ids 0..N-1, one seed), top_k 50, top_p 0.9: Pearson's
  // chi-square over the kept tokens at significance 1e-3, critical value by Wilson-Hilferty.
  const auto dev = torch::Device(torch::kCUDA);
  torch::manual_seed(8);
  const int64_t vocab = 1000, draws = 200000, top_k = 50;
  const double top_p = 0.9;
  auto row = torch::randn({1, vocab});
  auto ids = torch::arange(draws, torch::dtype(torch::kLong).device(dev));
  auto tokens = ops::sample_tokens_keyed(row.to(dev).expand({draws, vocab}), {}, 1.0, 1.0, top_k,
                                         top_p, 20240901, ids, 5);
  const auto counts = torch::bincount(tokens.cpu(), {}, vocab).to(torch::kDouble);
  const OracleFilter f = oracle_filter(row.data_ptr<float>(), vocab, 1.0, top_k, top_p);
  const double total = std::accumulate(f.weight.begin(), f.weight.end(), 0.0);
  std::vector<double> expected(vocab, 0.0);
  for (size_t i = 0; i < f.order.size(); ++i) expected[f.order[i]] = draws * f.weight[i] / total;
  double chi2 = 0, min_expected = std::numeric_limits<double>::infinity();
  int64_t kept = 0, drawn_removed = 0;
  for (int64_t j = 0; j < vocab; ++j) {
    const double o = counts[j].item<double>();
    if (expected[j] == 0) {
      drawn_removed += o > 0;
      continue;
    }
    ++kept;
    min_expected = std::min(min_expected, expected[j]);
    chi2 += (o - expected[j]) * (o - expected[j]) / expected[j];
  }
  const double df = static_cast<double>(kept - 1), z = 3.090232306167813;  // z of 1 - 1e-3
  const double h = 2.0 / (9.0 * df);
  const double critical = df * std::pow(1.0 - h + z * std::sqrt(h), 3.0);
  std::printf("    %lld kept tokens, min expected count %.0f: chi-square %.1f, critical %.1f "
              "(df %.0f, alpha 1e-3)\n",
              static_cast<long long>(kept), min_expected, chi2, critical, df);
  ASSERT_GE(kept, 2);
  ASSERT_GE(min_expected, 5.0) << "chi-square needs expected counts >= 5";
  EXPECT_EQ(drawn_removed, 0) << "a filtered token was drawn";
  EXPECT_LT(chi2, critical);
}
#endif

}  // namespace
}  // namespace aim
