// FID/sFID, Inception Score and k-NN precision/recall as ADM's evaluator defines them; the
// header lists where the arithmetic differs from ADM's and why.
#include "aim/eval/metrics.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "aim/core/error.h"

namespace aim::eval {
namespace {

std::string dtype_name(torch::ScalarType t) { return c10::toString(t); }

void check_activations(const torch::Tensor& x, const char* fn, const char* what) {
  AIM_CHECK(x.defined(), fn, ": ", what, " is an undefined tensor");
  AIM_CHECK(x.dim() == 2, fn, ": ", what, " must be [N, D], found shape ", x.sizes());
  AIM_CHECK(at::isFloatingType(x.scalar_type()), fn, ": ", what,
            " must be a floating-point tensor, found ", dtype_name(x.scalar_type()));
}

// ------------------------------------------------------------------------- statistics

void check_stats(const FeatureStats& s, const char* which) {
  AIM_CHECK(s.mu.defined() && s.sigma.defined(), "frechet_distance: ", which,
            " statistics are empty (mu or sigma undefined)");
  AIM_CHECK(s.mu.dim() == 1, "frechet_distance: ", which, " mu must be [D], found shape ",
            s.mu.sizes());
  const int64_t d = s.mu.size(0);
  AIM_CHECK(s.sigma.dim() == 2 && s.sigma.size(0) == d && s.sigma.size(1) == d,
            "frechet_distance: ", which, " sigma must be [", d, ", ", d, "] to match mu [", d,
            "], found shape ", s.sigma.sizes());
  AIM_CHECK(torch::isfinite(s.mu).all().item<bool>(), "frechet_distance: ", which,
            " mu has non-finite entries");
  AIM_CHECK(torch::isfinite(s.sigma).all().item<bool>(), "frechet_distance: ", which,
            " sigma has non-finite entries");
}

/// Takes the square root of eigenvalues `w` that should be >= 0. Significantly negative ones
/// are an error (see FrechetOptions::imag_atol). Those within the eigensolver's rounding of 0
/// (|w| <= n eps max|w|) become exactly 0: sqrt turns rounding noise of 1e-16 into 1e-8 per
/// zero eigenvalue, which would dominate the error of rank-deficient covariances.
torch::Tensor sqrt_nonnegative(const torch::Tensor& w, const char* what, double imag_atol,
                               FrechetInfo* info) {
  const double lo = w.min().item<double>();
  if (lo < 0) {
    AIM_CHECK(std::sqrt(-lo) <= imag_atol, "frechet_distance: ", what, " has eigenvalue ", lo,
              " < 0 whose square root would have an imaginary part ", std::sqrt(-lo), " > ",
              imag_atol, ": the statistics are not covariance matrices (not positive "
              "semi-definite); check how sigma was computed or stored");
    if (info) info->min_eigenvalue = std::min(info->min_eigenvalue, lo);
  }
  const double noise = static_cast<double>(w.size(0)) * std::numeric_limits<double>::epsilon() *
                       w.abs().max().item<double>();
  return torch::where(w > noise, w, torch::zeros_like(w)).sqrt();
}

/// tr sqrt(s1 s2) = sum sqrt(eig(s1^{1/2} s2 s1^{1/2})) with symmetric eigendecompositions;
/// NaN when LAPACK fails or something is non-finite.
double trace_sqrt_product(const torch::Tensor& s1, const torch::Tensor& s2, double imag_atol,
                          FrechetInfo* info) {
  torch::Tensor w1, v1, lambda;
  try {
    std::tie(w1, v1) = torch::linalg_eigh(s1);
    const torch::Tensor root1 =
        torch::mm(v1 * sqrt_nonnegative(w1, "the sample sigma", imag_atol, info).unsqueeze(0),
                  v1.t());
    torch::Tensor m = torch::mm(torch::mm(root1, s2), root1);
    m = (m + m.t()) * 0.5;
    lambda = torch::linalg_eigvalsh(m);
  } catch (const c10::Error&) {
    return std::nan("");
  }
  if (!torch::isfinite(lambda).all().item<bool>()) return std::nan("");
  return sqrt_nonnegative(lambda, "sigma_sample^1/2 sigma_ref sigma_sample^1/2", imag_atol, info)
      .sum()
      .item<double>();
}

// ------------------------------------------------------------------------- precision/recall

/// Leaves TF32 off for float32 matmuls in this scope (thread-local, restores on exit).
struct ExactMatmulScope {
  at::NoTF32Guard no_tf32;
};

void check_manifold_options(const ManifoldOptions& o, const char* fn) {
  AIM_CHECK(o.k >= 1, fn, ": k must be >= 1, found ", o.k);
  AIM_CHECK(o.row_block >= 1 && o.col_block >= 1, fn,
            ": row_block and col_block must be >= 1, found ", o.row_block, " and ", o.col_block);
  AIM_CHECK(o.dtype == torch::kFloat || o.dtype == torch::kDouble, fn,
            ": dtype must be Float or Double, found ", dtype_name(o.dtype));
}

void check_manifold_set(const torch::Tensor& x, int64_t k, const char* fn, const char* what) {
  check_activations(x, fn, what);
  AIM_CHECK(x.size(0) >= k + 1, fn, ": ", what, " has ", x.size(0), " rows; k = ", k,
            " needs at least k + 1 = ", k + 1, " (each radius is the distance to the k-th "
            "nearest other point)");
  AIM_CHECK(torch::isfinite(x).all().item<bool>(), fn, ": ", what, " has non-finite entries");
}

/// A set shifted by `shift` [D] (float64) in the distance dtype, with its squared row norms.
struct ShiftedSet {
  torch::Tensor x;   // [N, D]
  torch::Tensor sq;  // [N]
};

ShiftedSet shifted_set(const torch::Tensor& feats, const torch::Tensor& shift,
                       torch::ScalarType dtype) {
  ShiftedSet s;
  s.x = feats.to(dtype) - shift.to(feats.device(), dtype);
  s.sq = (s.x * s.x).sum(1);
  return s;
}

/// Squared distances [rb, cb] between rows [r0, r1) of `a` and rows [c0, c1) of `b`:
/// |u|^2 - 2 u.v + |v|^2, clamped at 0 as ADM does.
torch::Tensor distance_block(const ShiftedSet& a, int64_t r0, int64_t r1, const ShiftedSet& b,
                             int64_t c0, int64_t c1) {
  torch::Tensor d = torch::addmm(a.sq.slice(0, r0, r1).unsqueeze(1), a.x.slice(0, r0, r1),
                                 b.x.slice(0, c0, c1).t(), /*beta=*/1, /*alpha=*/-2);
  return d.add_(b.sq.slice(0, c0, c1).unsqueeze(0)).clamp_min_(0);
}

/// Radii of a shifted set: per row the (k+1)-th smallest distance, kept as a running
/// [rb, k+1] list of the smallest values over column blocks.
torch::Tensor radii_of(const ShiftedSet& s, const ManifoldOptions& o) {
  const int64_t n = s.x.size(0);
  torch::Tensor radii = torch::empty({n}, s.x.options());
  for (int64_t r0 = 0; r0 < n; r0 += o.row_block) {
    const int64_t r1 = std::min(n, r0 + o.row_block);
    torch::Tensor best;  // [rb, <= k+1]
    for (int64_t c0 = 0; c0 < n; c0 += o.col_block) {
      const int64_t c1 = std::min(n, c0 + o.col_block);
      torch::Tensor d = distance_block(s, r0, r1, s, c0, c1);
      // A point's distance to itself is 0 exactly (the expansion leaves rounding there).
      if (r0 < c1 && c0 < r1) d.diagonal(r0 - c0).zero_();
      const int64_t take = std::min(o.k + 1, c1 - c0);
      torch::Tensor cand = std::get<0>(d.topk(take, 1, /*largest=*/false, /*sorted=*/false));
      best = best.defined() ? torch::cat({best, cand}, 1) : cand;
      if (best.size(1) > o.k + 1)
        best = std::get<0>(best.topk(o.k + 1, 1, /*largest=*/false, /*sorted=*/false));
    }
    radii.slice(0, r0, r1).copy_(std::get<0>(best.max(1)));
  }
  return radii;
}

}  // namespace

// ----------------------------------------------------------------------------- API

FeatureSums::FeatureSums(int64_t dim)
    : sum(torch::zeros({dim}, torch::kDouble)),
      outer(torch::zeros({dim, dim}, torch::kDouble)),
      count(torch::zeros({}, torch::kDouble)) {}

void FeatureSums::add(const torch::Tensor& acts) {
  check_activations(acts, "FeatureSums::add", "activations");
  AIM_CHECK(acts.size(1) == sum.size(0), "FeatureSums::add: rows of ", acts.size(1), " features, expected ",
            sum.size(0));
  torch::NoGradGuard no_grad;
  const auto x = acts.to(torch::kCPU, torch::kDouble);
  sum += x.sum(0);
  outer.addmm_(x.t(), x);
  count += static_cast<double>(x.size(0));
}

int64_t FeatureSums::rows() const { return static_cast<int64_t>(count.item<double>()); }

FeatureStats FeatureSums::stats() const {
  const int64_t n = rows();
  AIM_CHECK(n >= 2, "FeatureSums::stats: need at least 2 rows for a covariance, found ", n);
  FeatureStats s;
  s.mu = sum / static_cast<double>(n);
  s.sigma = (outer - static_cast<double>(n) * torch::outer(s.mu, s.mu)) / static_cast<double>(n - 1);
  s.sigma = 0.5 * (s.sigma + s.sigma.t());
  return s;
}

FeatureStats compute_feature_stats(const torch::Tensor& acts, int64_t block_rows) {
  check_activations(acts, "compute_feature_stats", "activations");
  const int64_t n = acts.size(0), d = acts.size(1);
  AIM_CHECK(n >= 2, "compute_feature_stats: need at least 2 rows for a covariance, found ", n);
  AIM_CHECK(block_rows >= 1, "compute_feature_stats: block_rows must be >= 1, found ",
            block_rows);
  torch::NoGradGuard no_grad;
  torch::Tensor mean, m2;  // running mean [D] and sum of centred outer products [D, D]
  int64_t seen = 0;
  for (int64_t r0 = 0; r0 < n; r0 += block_rows) {
    const int64_t r1 = std::min(n, r0 + block_rows);
    const torch::Tensor x = acts.slice(0, r0, r1).to(torch::kDouble);  // [b, D]
    const int64_t nb = r1 - r0;
    const torch::Tensor mb = x.mean(0);
    const torch::Tensor xc = x - mb;
    const torch::Tensor m2b = torch::mm(xc.t(), xc);
    if (seen == 0) {
      mean = mb;
      m2 = m2b;
    } else {
      // Chan et al.: merging two centred partial sums needs only the difference of means.
      const torch::Tensor delta = mb - mean;
      const double total = static_cast<double>(seen + nb);
      m2 = m2 + m2b + torch::outer(delta, delta) * (static_cast<double>(seen) * nb / total);
      mean = mean + delta * (nb / total);
    }
    seen += nb;
  }
  TORCH_INTERNAL_ASSERT(mean.size(0) == d);
  torch::Tensor sigma = m2 / static_cast<double>(n - 1);
  sigma = (sigma + sigma.t()) * 0.5;
  return {mean.cpu(), sigma.cpu()};
}

double frechet_distance(const FeatureStats& sample, const FeatureStats& ref,
                        const FrechetOptions& options, FrechetInfo* info) {
  AIM_CHECK(sample.mu.defined() && ref.mu.defined(),
            "frechet_distance: sample or reference statistics are empty");
  AIM_CHECK(sample.mu.dim() == 1 && ref.mu.dim() == 1 && sample.mu.size(0) == ref.mu.size(0),
            "frechet_distance: sample statistics have mu of shape ", sample.mu.sizes(),
            ", reference statistics ", ref.mu.sizes(),
            "; both must come from the same feature (FID: pool3, 2048 dims; sFID: spatial, "
            "2023 dims)");
  check_stats(sample, "sample");
  check_stats(ref, "reference");
  AIM_CHECK(options.eps >= 0 && options.imag_atol >= 0,
            "frechet_distance: eps and imag_atol must be >= 0, found ", options.eps, " and ",
            options.imag_atol);
  torch::NoGradGuard no_grad;
  if (info) *info = FrechetInfo{};
  const auto f64 = [](const torch::Tensor& t) { return t.to(torch::kCPU, torch::kDouble); };
  const torch::Tensor mu1 = f64(sample.mu), mu2 = f64(ref.mu);
  torch::Tensor s1 = f64(sample.sigma), s2 = f64(ref.sigma);
  s1 = (s1 + s1.t()) * 0.5;
  s2 = (s2 + s2.t()) * 0.5;

  double tr_covmean = trace_sqrt_product(s1, s2, options.imag_atol, info);
  if (!std::isfinite(tr_covmean)) {
    const torch::Tensor offset = torch::eye(s1.size(0), s1.options()) * options.eps;
    if (info) info->eps_used = true;
    tr_covmean = trace_sqrt_product(s1 + offset, s2 + offset, options.imag_atol, info);
    AIM_CHECK(std::isfinite(tr_covmean), "frechet_distance: tr sqrt(sigma_sample sigma_ref) ",
              "is not finite even with ", options.eps, " added to the diagonals (",
              s1.size(0), " dims); the eigendecomposition failed");
  }
  const torch::Tensor diff = mu1 - mu2;
  return diff.dot(diff).item<double>() + s1.trace().item<double>() +
         s2.trace().item<double>() - 2.0 * tr_covmean;
}

namespace {

/// IS from log-probabilities (float64, [N, C]); p = exp(logp).
double inception_score_log(const torch::Tensor& logp_all, int64_t split_size, const char* fn) {
  AIM_CHECK(split_size >= 1, fn, ": split_size must be >= 1, found ", split_size);
  const int64_t n = logp_all.size(0);
  double sum = 0.0;
  int64_t splits = 0;
  for (int64_t r0 = 0; r0 < n; r0 += split_size) {
    const int64_t r1 = std::min(n, r0 + split_size);
    const torch::Tensor logp = logp_all.slice(0, r0, r1);  // [s, C]
    const torch::Tensor p = logp.exp();
    const torch::Tensor log_pbar = p.mean(0, /*keepdim=*/true).log();  // [1, C]
    // 0 * log 0 = 0: a class with p = 0 adds nothing (where() also hides 0 * (-inf + inf)).
    const torch::Tensor terms = torch::where(p > 0, p * (logp - log_pbar), torch::zeros_like(p));
    sum += std::exp(terms.sum(1).mean().item<double>());
    ++splits;
  }
  return sum / static_cast<double>(splits);
}

void check_scores_input(const torch::Tensor& x, const char* fn, const char* what) {
  check_activations(x, fn, what);
  AIM_CHECK(x.size(0) >= 1 && x.size(1) >= 1, fn, ": ", what,
            " must have at least one row and one class, found shape ", x.sizes());
}

}  // namespace

double inception_score(const torch::Tensor& logits, int64_t split_size) {
  check_scores_input(logits, "inception_score", "logits");
  torch::NoGradGuard no_grad;
  const torch::Tensor x = logits.to(torch::kCPU, torch::kDouble);
  AIM_CHECK(torch::isfinite(x).all().item<bool>(), "inception_score: logits have non-finite ",
            "entries");
  return inception_score_log(torch::log_softmax(x, 1), split_size, "inception_score");
}

double inception_score_from_probs(const torch::Tensor& probs, int64_t split_size) {
  constexpr const char* fn = "inception_score_from_probs";
  check_scores_input(probs, fn, "probs");
  torch::NoGradGuard no_grad;
  const torch::Tensor p = probs.to(torch::kCPU, torch::kDouble);
  AIM_CHECK(torch::isfinite(p).all().item<bool>() && (p >= 0).all().item<bool>(), fn,
            ": probabilities must be finite and >= 0");
  const double worst = (p.sum(1) - 1).abs().max().item<double>();
  AIM_CHECK(worst <= 1e-3, fn, ": rows must sum to 1, found a row off by ", worst,
            " (pass logits to inception_score instead)");
  return inception_score_log(p.log(), split_size, fn);
}

torch::Tensor knn_radii(const torch::Tensor& feats, const ManifoldOptions& options) {
  check_manifold_options(options, "knn_radii");
  check_manifold_set(feats, options.k, "knn_radii", "features");
  torch::NoGradGuard no_grad;
  ExactMatmulScope exact;
  const torch::Tensor shift = feats.mean(0, /*keepdim=*/false, torch::kDouble);
  return radii_of(shifted_set(feats, shift, options.dtype), options);
}

PrecisionRecall precision_recall(const torch::Tensor& ref_feats, const torch::Tensor& sample_feats,
                                 const ManifoldOptions& options) {
  constexpr const char* fn = "precision_recall";
  check_manifold_options(options, fn);
  check_manifold_set(ref_feats, options.k, fn, "reference features");
  check_manifold_set(sample_feats, options.k, fn, "sample features");
  AIM_CHECK(ref_feats.size(1) == sample_feats.size(1), fn, ": reference features have ",
            ref_feats.size(1), " dims, sample features ", sample_feats.size(1));
  AIM_CHECK(ref_feats.device() == sample_feats.device(), fn, ": reference features are on ",
            ref_feats.device(), ", sample features on ", sample_feats.device(),
            "; move both to one device");
  torch::NoGradGuard no_grad;
  ExactMatmulScope exact;
  const torch::Tensor shift = ref_feats.mean(0, /*keepdim=*/false, torch::kDouble);
  const ShiftedSet a = shifted_set(ref_feats, shift, options.dtype);
  const ShiftedSet b = shifted_set(sample_feats, shift, options.dtype);
  const torch::Tensor radii_a = radii_of(a, options);  // [Na]
  const torch::Tensor radii_b = radii_of(b, options);  // [Nb]

  const int64_t na = a.x.size(0), nb = b.x.size(0);
  const auto flags = torch::TensorOptions().dtype(torch::kBool).device(a.x.device());
  torch::Tensor b_in_a = torch::zeros({nb}, flags);  // precision
  torch::Tensor a_in_b = torch::zeros({na}, flags);  // recall
  for (int64_t r0 = 0; r0 < na; r0 += options.row_block) {
    const int64_t r1 = std::min(na, r0 + options.row_block);
    const torch::Tensor ra = radii_a.slice(0, r0, r1).unsqueeze(1);  // [rb, 1]
    for (int64_t c0 = 0; c0 < nb; c0 += options.col_block) {
      const int64_t c1 = std::min(nb, c0 + options.col_block);
      const torch::Tensor d = distance_block(a, r0, r1, b, c0, c1);  // [rb, cb]
      b_in_a.slice(0, c0, c1).logical_or_((d <= ra).any(0));
      a_in_b.slice(0, r0, r1).logical_or_((d <= radii_b.slice(0, c0, c1).unsqueeze(0)).any(1));
    }
  }
  PrecisionRecall out;
  out.precision = static_cast<double>(b_in_a.sum().item<int64_t>()) / static_cast<double>(nb);
  out.recall = static_cast<double>(a_in_b.sum().item<int64_t>()) / static_cast<double>(na);
  return out;
}

}  // namespace aim::eval
