#pragma once
// The sample-quality metrics of OpenAI's ADM evaluator (guided-diffusion evaluations/evaluator.py),
// computed from Inception activations: FID and sFID (Frechet distance of Gaussian statistics),
// Inception Score, and k-NN precision/recall. tests/fixtures/eval/README.md gives the formulas.
//
// Numerics, and where they deliberately differ from ADM:
// - Statistics and the Frechet distance are float64 throughout (ADM: float32 activations, a
//   float32 mean, float64 covariance). tr sqrt(s1 s2) comes from two symmetric
//   eigendecompositions instead of scipy's sqrtm of the non-symmetric product: same value in
//   exact arithmetic (1e-14 relative on well-conditioned data), and well defined when a
//   covariance is singular (fewer samples than dims, dead feature columns).
// - Inception Score softmaxes in float64 with 0 * log 0 taken as 0 (ADM: float32, and NaN).
// - Precision/recall distances are float32 (or float64) on the features' device, TF32 off;
//   ADM uses float16 distances with a float32 fallback, which moves the result by a few samples
//   per thousand. Both sets are shifted by the reference mean first: distances do not change,
//   the float32 cancellation in |x|^2 - 2 x.y + |y|^2 does.
#include <torch/types.h>

#include <cstdint>

namespace aim::eval {

/// Gaussian statistics of activations: mu [D] and sigma [D, D], float64 on the CPU.
struct FeatureStats {
  torch::Tensor mu;     // [D] float64
  torch::Tensor sigma;  // [D, D] float64
};

/// mu = mean over rows, sigma = covariance with N - 1 (np.cov(acts, rowvar=False)), both in
/// float64 whatever the dtype and device of `acts` [N, D] (N >= 2). Rows are converted to float64
/// `block_rows` at a time and merged with Chan's pairwise update (each block centred on its own
/// mean), so 50,000 x 2048 float32 activations never have a float64 copy in memory.
FeatureStats compute_feature_stats(const torch::Tensor& acts, int64_t block_rows = 4096);

/// Sums of activations from which statistics follow, for activations spread over processes:
/// each adds its rows, the sums are added across processes (all-reduce), then stats(). float64
/// on the CPU. The covariance comes from sum x x^T - N mu mu^T, which loses about as many digits
/// as (|mu|^2 + var) / var (a few for Inception pool3 features) against compute_feature_stats.
struct FeatureSums {
  torch::Tensor sum;    ///< [D] float64
  torch::Tensor outer;  ///< [D, D] float64: sum of x x^T
  torch::Tensor count;  ///< [] float64: rows added (a tensor, to be all-reduced with the sums)
  explicit FeatureSums(int64_t dim);
  /// Adds rows [N, D] (any float dtype and device).
  void add(const torch::Tensor& acts);
  int64_t rows() const;
  /// mu and the covariance with N - 1 (N >= 2), as compute_feature_stats.
  FeatureStats stats() const;
};

/// Safeguards of frechet_distance (ADM's values by default).
struct FrechetOptions {
  /// Added to both diagonals (only for the square-root term) when the first attempt gives
  /// anything non-finite, as ADM retries sqrtm((s1 + eps I)(s2 + eps I)).
  double eps = 1e-6;
  /// ADM raises when an imaginary part of diag(sqrtm(s1 s2)) exceeds 1e-3. Here the square
  /// roots are taken of eigenvalues that are >= 0 for covariance matrices; an eigenvalue
  /// lambda < 0 is rounding when sqrt(-lambda) <= imag_atol (it is then taken as 0) and
  /// otherwise means a matrix is not a covariance (not positive semi-definite: corrupted or
  /// mismatched statistics), which is an aim::Error naming the eigenvalue.
  double imag_atol = 1e-3;
};

/// What frechet_distance had to do, for callers that report it.
struct FrechetInfo {
  bool eps_used = false;          ///< the eps offset retry ran
  double min_eigenvalue = 0.0;    ///< most negative eigenvalue clamped to 0 (0 when none)
};

/// Frechet distance ||mu1 - mu2||^2 + tr(s1) + tr(s2) - 2 tr sqrt(s1 s2) of `sample` (mu1, s1)
/// and `ref` (mu2, s2), as ADM's main() calls it (sample_stats.frechet_distance(ref_stats));
/// the value is symmetric anyway. tr sqrt(s1 s2) = sum_i sqrt(lambda_i) with lambda the
/// eigenvalues of s1^{1/2} s2 s1^{1/2}, each matrix symmetrised, in float64 on the CPU;
/// eigenvalues within the solver's rounding of 0 (|lambda| <= D eps max|lambda|) count as 0, so
/// singular covariances keep the accuracy of regular ones. FID
/// uses 2048-dim pool3 statistics, sFID 2023-dim spatial ones. Mismatched dims and non-finite
/// statistics are an aim::Error.
double frechet_distance(const FeatureStats& sample, const FeatureStats& ref,
                        const FrechetOptions& options = {}, FrechetInfo* info = nullptr);

/// ADM's Inception Score from logits [N, C] (pool3 @ W without the fc bias, C = 1008): rows in
/// consecutive splits of `split_size` (the last one shorter, no shuffling), per split
/// exp(mean_i KL(p_i || mean_j p_j)), then the mean over splits. The softmax is float64
/// (log-softmax, so log p is finite even where p underflows to 0).
double inception_score(const torch::Tensor& logits, int64_t split_size = 5000);

/// The same from probabilities [N, C] whose rows sum to 1. A zero probability contributes
/// 0 * log 0 = 0 (its limit) where ADM would give NaN.
double inception_score_from_probs(const torch::Tensor& probs, int64_t split_size = 5000);

/// Options of the k-NN manifold estimate (ADM's ManifoldEstimator with nhood_sizes = (3,)).
struct ManifoldOptions {
  /// Neighbourhood size: a point's radius is its squared distance to the k-th nearest other
  /// point (the (k+1)-th smallest of its row, which holds the point itself at distance 0).
  int64_t k = 3;
  /// Rows and columns of one distance block (ADM: 10,000 each); 10,000^2 float32 is 400 MB.
  int64_t row_block = 10000;
  int64_t col_block = 10000;
  /// Distance arithmetic: torch::kFloat (default) or torch::kDouble.
  torch::ScalarType dtype = torch::kFloat;
};

/// k-NN radii of `feats` [N, D] (N >= k + 1): squared distances, the (k+1)-th smallest value of
/// each row of the N x N distance matrix (np.partition index k), computed block by block on
/// the features' device in options.dtype with TF32 off. Returns [N] of options.dtype on that
/// device.
torch::Tensor knn_radii(const torch::Tensor& feats, const ManifoldOptions& options = {});

/// Precision (share of samples inside the reference manifold) and recall (share of references
/// inside the sample manifold).
struct PrecisionRecall {
  double precision = 0.0;
  double recall = 0.0;
};

/// ADM's compute_prec_recall(ref, sample): b_j counts for precision when some a_i has
/// d(a_i, b_j) <= r_A(i); a_i counts for recall when some b_j has d(a_i, b_j) <= r_B(j), with
/// d the squared distance and r the knn_radii of each set. `ref_feats` [Na, D] and
/// `sample_feats` [Nb, D] live on one device (CUDA for 10,000 x 50,000 sets); distances are
/// formed row_block x col_block at a time, never whole. Fewer than k + 1 rows in a set,
/// different D or devices, or non-finite features are an aim::Error.
PrecisionRecall precision_recall(const torch::Tensor& ref_feats, const torch::Tensor& sample_feats,
                                 const ManifoldOptions& options = {});

}  // namespace aim::eval
