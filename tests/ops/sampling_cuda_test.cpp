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
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "aim/ops/dispatch.h"
#include "aim/ops/sampling.h"
#include "aim/sample/generate.h"
#include "test_util.h"
#ifdef AIM_WITH_CUDA
#include "ops/sampling_cuda.h"
#endif

namespace aim {
namespace {

// ---- oracle begin
/// Distance to a decision boundary within which the kernel may pick the neighbouring token:
/// its fixed-point weights are within 2^-33 of the fp64 probabilities (kernels/
/// sample_tokens_kernel.cuh), the reference's own sums within ~V 1e-16.
constexpr double kBoundaryTolerance = 1e-9;

/// The filtered distribution of one row in fp64: tokens in draw order (rank order under
/// top-k, vocabulary order otherwise) with their weights exp(x - max), removed tokens weight 0.
struct OracleFilter {
  std::vector<int64_t> order;
  std::vector<double> weight;
  double cut_margin = std::numeric_limits<double>::infinity();  ///< min |cum - (1 - top_p)|
  bool tie_ambiguous = false;  ///< torch may order tied logits here differently from the rank
};

/// g: the row's guided fp32 logits [V]. The definition of ref::sample_tokens with ties ranked
/// by lower index (value descending, then index ascending); top_k != 1.
inline OracleFilter oracle_filter(const float* g, int64_t vocab, double temperature,
                                  int64_t top_k, double top_p) {
  OracleFilter f;
  std::vector<float> x(g, g + vocab);
  if (temperature != 1.0) {
    const float t = static_cast<float>(temperature);  // ATen's CPU division by a scalar
    for (auto& v : x) v = v / t;
  }
  std::vector<int64_t> rank(vocab);
  std::iota(rank.begin(), rank.end(), 0);
  std::stable_sort(rank.begin(), rank.end(), [&](int64_t a, int64_t b) { return x[a] > x[b]; });
  const bool top_k_on = top_k > 0 && top_k < vocab;
  const int64_t n = top_k_on ? top_k : vocab;
  if (top_k_on && x[rank[n - 1]] == x[rank[n]]) f.tie_ambiguous = true;  // the k-th is tied
  const double max_x = x[rank[0]];
  std::vector<double> e(vocab, 0.0);
  for (int64_t i = 0; i < n; ++i) e[rank[i]] = std::exp(static_cast<double>(x[rank[i]]) - max_x);
  if (top_p < 1.0) {
    double total = 0;
    for (int64_t i = 0; i < n; ++i) total += e[rank[i]];
    double cum = 0;
    for (int64_t i = n - 1; i >= 1; --i) {  // ascending probability; the first never goes
      cum += e[rank[i]] / total;
      f.cut_margin = std::min(f.cut_margin, std::abs(cum - (1.0 - top_p)));
      if (cum > 1.0 - top_p) {
        if (i + 1 < n && x[rank[i]] == x[rank[i + 1]]) f.tie_ambiguous = true;  // a split tie
        break;
      }
      e[rank[i]] = 0.0;
    }
  }
  if (top_k_on) {
    f.order.assign(rank.begin(), rank.begin() + n);
    for (int64_t i = 0; i + 1 < n; ++i) {
      if (e[rank[i + 1]] > 0 && x[rank[i]] == x[rank[i + 1]]) f.tie_ambiguous = true;
    }
  } else {
    f.order.resize(vocab);
    std::iota(f.order.begin(), f.order.end(), 0);
  }
  f.weight.reserve(f.order.size());
  for (auto j : f.order) f.weight.push_back(e[j]);
  return f;
}

struct OracleDraw {
  int64_t token = -1;
  double margin = std::numeric_limits<double>::infinity();  ///< of u and of the top-p cut
  bool tie_ambiguous = false;
};

/// The token for uniform u: the first in draw order whose cumulative weight exceeds u * total.
inline OracleDraw oracle_draw(const float* g, int64_t vocab, double temperature, int64_t top_k,
                              double top_p, double u) {
  OracleDraw d;
  if (top_k == 1) {  // argmax, lowest index on ties
    d.token = std::max_element(g, g + vocab) - g;
    return d;
  }
  const OracleFilter f = oracle_filter(g, vocab, temperature, top_k, top_p);
  const double total = std::accumulate(f.weight.begin(), f.weight.end(), 0.0);
  double cum = 0, u_margin = std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < f.order.size(); ++i) {
    if (f.weight[i] == 0) continue;
    cum += f.weight[i];
    u_margin = std::min(u_margin, std::abs(cum / total - u));
    if (d.token < 0 && cum > u * total) d.token = f.order[i];
  }
  d.margin = std::min(u_margin, f.cut_margin);
  d.tie_ambiguous = f.tie_ambiguous;
  return d;
}
// ---- oracle end

/// The guided fp32 logits the definition samples from, on the CPU, contiguous.
torch::Tensor guided_cpu(const torch::Tensor& cond, const torch::Tensor& uncond, double cfg) {
  auto g = cond.to(torch::kCPU, torch::kFloat);
  if (uncond.defined()) g = ops::cfg_combine(g, uncond.to(torch::kCPU, torch::kFloat), cfg);
  return g.contiguous();
}

struct Settings {
  double temperature;
  int64_t top_k;
  double top_p;
};
std::vector<Settings> all_settings() {
  std::vector<Settings> out;
  for (double t : {0.7, 1.0, 1.3})
    for (int64_t k : {0, 1, 2, 50, 600})
      for (double p : {1.0, 0.98, 0.5}) out.push_back({t, k, p});
  return out;
}
std::string describe(const Settings& s) {
  char buf[96];
  std::snprintf(buf, sizeof(buf), "temperature %.1f top_k %lld top_p %.2f", s.temperature,
                static_cast<long long>(s.top_k), s.top_p);
  return buf;
}

/// Realistic logits (std 2) and an unconditional half near them; uncond undefined without
/// guidance.
std::pair<torch::Tensor, torch::Tensor> make_logits(int64_t rows, int64_t vocab,
                                                    torch::ScalarType dtype, bool guided,
                                                    torch::Device device) {
  auto cond = torch::randn({rows, vocab}) * 2.0;
  torch::Tensor uncond;
  if (guided) uncond = (cond * 0.6 + torch::randn({rows, vocab})).to(device, dtype);
  return {cond.to(device, dtype), uncond};
}

/// Tally of one comparison of tokens with the oracle and the definition.
struct Tally {
  int64_t rows = 0, strict_rows = 0, near_boundary = 0, tie_rows = 0;
  int64_t oracle_mismatch = 0, reference_mismatch = 0;
  std::string first_failure;
};

/// tokens (the kernel's, or with `reference_tokens` the reference's own) against the oracle on
/// every row (the reference: on rows where ties do not decide) and against `expected` (the
/// reference) on rows where ties do not decide.
void tally_rows(const torch::Tensor& tokens, const torch::Tensor& expected, const torch::Tensor& g,
                const torch::Tensor& ids, uint64_t seed, int64_t step, const Settings& s,
                Tally& tally, const std::string& tag, bool reference_tokens = false) {
  const auto tok = tokens.to(torch::kCPU).contiguous();
  const auto exp = expected.to(torch::kCPU).contiguous();
  const auto id = ids.to(torch::kCPU).contiguous();
  const int64_t rows = g.size(0), vocab = g.size(1);
  for (int64_t b = 0; b < rows; ++b) {
    const int64_t t = tok.data_ptr<int64_t>()[b], e = exp.data_ptr<int64_t>()[b];
    const double u = sample_uniform(seed, id.data_ptr<int64_t>()[b], step);
    const OracleDraw d =
        oracle_draw(g.data_ptr<float>() + b * vocab, vocab, s.temperature, s.top_k, s.top_p, u);
    const bool near = d.margin < kBoundaryTolerance;
    ++tally.rows;
    tally.tie_rows += d.tie_ambiguous;
    auto fail = [&](const char* what, int64_t want) {
      if (!tally.first_failure.empty()) return;
      char buf[256];
      std::snprintf(buf, sizeof(buf), "%s row %lld: token %lld, %s %lld (u %.17g, margin %.3g)",
                    tag.c_str(), static_cast<long long>(b), static_cast<long long>(t), what,
                    static_cast<long long>(want), u, d.margin);
      tally.first_failure = buf;
    };
    if (t < 0 || t >= vocab) {
      ++tally.oracle_mismatch;
      fail("outside [0, V); oracle", d.token);
      continue;
    }
    if (t != d.token && !(reference_tokens && d.tie_ambiguous)) {
      if (near) {
        ++tally.near_boundary;
      } else {
        ++tally.oracle_mismatch;
        fail("oracle", d.token);
      }
    }
    if (!d.tie_ambiguous) {
      ++tally.strict_rows;
      if (t != e && !near) {
        ++tally.reference_mismatch;
        fail("reference", e);
      }
    }
  }
}

void expect_tally(const Tally& t, const std::string& name) {
  std::printf("    %-40s %6lld rows: %6lld checked against the reference, %5lld with tied "
              "logits deciding, %lld within %.0e of a boundary\n",
              name.c_str(), static_cast<long long>(t.rows), static_cast<long long>(t.strict_rows),
              static_cast<long long>(t.tie_rows), static_cast<long long>(t.near_boundary),
              kBoundaryTolerance);
  EXPECT_EQ(t.oracle_mismatch, 0) << name << ": " << t.first_failure;
  EXPECT_EQ(t.reference_mismatch, 0) << name << ": " << t.first_failure;
  EXPECT_GT(t.strict_rows, 0) << name << ": no row was compared with the reference";
}

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

struct GridCase {
  torch::ScalarType dtype;
  bool guided;
};

class SampleTokensCudaGrid : public test::CudaKernelTest<::testing::TestWithParam<GridCase>> {};

TEST_P(SampleTokensCudaGrid, TokensEqualTheDefinition) {
  const auto c = GetParam();
  torch::manual_seed(c.guided ? 21 : 20);
  const auto dev = torch::Device(torch::kCUDA);
  const std::string name =
      std::string(c.dtype == torch::kBFloat16 ? "bf16" : "fp32") + (c.guided ? " cfg" : "");
  Tally tally;
  int64_t call = 0;
  for (int64_t rows : {1, 7, 64}) {
    for (int64_t vocab : {16384, 1000, 33}) {
      auto [cond, uncond] = make_logits(rows, vocab, c.dtype, c.guided, dev);
      const double cfg = c.guided ? (vocab == 1000 ? 1.5 : 4.0) : 1.0;
      const auto g = guided_cpu(cond, uncond, cfg);
      const auto cond_cpu = cond.cpu();
      const auto uncond_cpu = c.guided ? uncond.cpu() : torch::Tensor();
      for (const auto& s : all_settings()) {
        const uint64_t seed = 7919 * ++call;
        const int64_t step = call % 256;
        auto ids = torch::randint(0, 1 << 30, {rows}, torch::dtype(torch::kLong).device(dev));
#ifdef AIM_WITH_CUDA
        ASSERT_TRUE(ops::cuda::sample_tokens_keyed_supported(cond, uncond, s.temperature, s.top_k,
                                                             s.top_p))
            << "the kernel must take every case of the grid";
#endif
        auto got = ops::sample_tokens_keyed(cond, uncond, cfg, s.temperature, s.top_k, s.top_p,
                                            seed, ids, step);
        ASSERT_TRUE(got.is_cuda());
        auto expect = ops::sample_tokens_keyed(cond_cpu, uncond_cpu, cfg, s.temperature, s.top_k,
                                               s.top_p, seed, ids.cpu(), step);
        tally_rows(got, expect, g, ids, seed, step, s, tally,
                   "B" + std::to_string(rows) + " V" + std::to_string(vocab) + " " + describe(s));
        if (s.top_k == 1) {
          EXPECT_TRUE(torch::equal(got.cpu(), expect)) << "greedy B" << rows << " V" << vocab;
        }
      }
    }
  }
  expect_tally(tally, name);
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
