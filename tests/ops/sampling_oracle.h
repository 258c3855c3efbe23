#pragma once
// The fp64 oracle of the fused sampling kernel, shared by the CUDA kernel tests and the
// emulated-kernel tests: the filtered distribution of a row with an explicit tie rule, the
// token a uniform draws, and the row-by-row tally of a kernel's tokens against the oracle and
// the reference (ops::sample_tokens_keyed on the CPU).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "aim/ops/sampling.h"
#include "aim/sample/generate.h"

namespace aim::test {

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

/// The guided fp32 logits the definition samples from, on the CPU, contiguous.
inline torch::Tensor guided_cpu(const torch::Tensor& cond, const torch::Tensor& uncond, double cfg) {
  auto g = cond.to(torch::kCPU, torch::kFloat);
  if (uncond.defined()) g = ops::cfg_combine(g, uncond.to(torch::kCPU, torch::kFloat), cfg);
  return g.contiguous();
}

struct Settings {
  double temperature;
  int64_t top_k;
  double top_p;
};
inline std::vector<Settings> all_settings() {
  std::vector<Settings> out;
  for (double t : {0.7, 1.0, 1.3})
    for (int64_t k : {0, 1, 2, 50, 600})
      for (double p : {1.0, 0.98, 0.5}) out.push_back({t, k, p});
  return out;
}
inline std::string describe(const Settings& s) {
  char buf[96];
  std::snprintf(buf, sizeof(buf), "temperature %.1f top_k %lld top_p %.2f", s.temperature,
                static_cast<long long>(s.top_k), s.top_p);
  return buf;
}

/// Realistic logits (std 2) and an unconditional half near them; uncond undefined without
/// guidance.
inline std::pair<torch::Tensor, torch::Tensor> make_logits(int64_t rows, int64_t vocab,
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
inline void tally_rows(const torch::Tensor& tokens, const torch::Tensor& expected, const torch::Tensor& g,
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

inline void expect_tally(const Tally& t, const std::string& name) {
  std::printf("    %-40s %6lld rows: %6lld checked against the reference, %5lld with tied "
              "logits deciding, %lld within %.0e of a boundary\n",
              name.c_str(), static_cast<long long>(t.rows), static_cast<long long>(t.strict_rows),
              static_cast<long long>(t.tie_rows), static_cast<long long>(t.near_boundary),
              kBoundaryTolerance);
  EXPECT_EQ(t.oracle_mismatch, 0) << name << ": " << t.first_failure;
  EXPECT_EQ(t.reference_mismatch, 0) << name << ": " << t.first_failure;
  EXPECT_GT(t.strict_rows, 0) << name << ": no row was compared with the reference";
}

// ---------------------------------------------------------------- the grid check

struct GridCase {
  torch::ScalarType dtype;
  bool guided;
};

/// The op under test: ops::sample_tokens_keyed's signature (scalar step).
using SampleTokensFn = std::function<torch::Tensor(
    const torch::Tensor& cond, const torch::Tensor& uncond, double cfg, double temperature,
    int64_t top_k, double top_p, uint64_t seed, const torch::Tensor& sample_ids, int64_t step)>;
/// Whether the kernel takes a case; the grid must lie entirely within it.
using SampleSupportedFn = std::function<bool(const torch::Tensor& cond,
                                             const torch::Tensor& uncond, const Settings& s)>;

/// The kernel tests' grid: logits of `c`'s dtype (guided or not) on `dev` for each row count of
/// `row_counts` and vocabularies 16384 (AiM's), 1000 and 33, every setting of all_settings(),
/// one seed and step per call. `sample`'s tokens are tallied against the oracle and the CPU
/// reference (ops::sample_tokens_keyed); greedy rows must equal the reference exactly.
inline void check_sample_grid(const GridCase& c, torch::Device dev,
                              const std::vector<int64_t>& row_counts,
                              const SampleTokensFn& sample, const SampleSupportedFn& supported) {
  torch::manual_seed(c.guided ? 21 : 20);
  const std::string name =
      std::string(c.dtype == torch::kBFloat16 ? "bf16" : "fp32") + (c.guided ? " cfg" : "");
  Tally tally;
  int64_t call = 0;
  for (int64_t rows : row_counts) {
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
        ASSERT_TRUE(supported(cond, uncond, s)) << "the kernel must take every case of the grid";
        auto got = sample(cond, uncond, cfg, s.temperature, s.top_k, s.top_p, seed, ids, step);
        ASSERT_EQ(got.device().type(), dev.type());
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

}  // namespace aim::test
