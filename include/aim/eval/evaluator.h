#pragma once
// ADM's sample evaluation end to end (guided-diffusion evaluations/evaluator.py): two image
// batches in, Inception features out (cached beside each input), then Inception Score, FID,
// sFID, precision and recall. `aim eval` is a thin layer over evaluate().
//
// Inputs are ADM .npz batches (`arr_0` uint8 [N, H, W, 3], stored or deflated; a reference batch
// may also hold `mu`/`sigma` and `mu_s`/`sigma_s`, the statistics its FID and sFID use) or
// folders of images (PNG, JPEG, ...; searched recursively, sorted by path, one size).
//
// As in ADM's main():
//   IS         from the samples' unbiased logits, splits of is_split_size;
//   FID, sFID  sample statistics against reference statistics: for each batch, the stored
//              mu/sigma (mu_s/sigma_s) when the .npz has them, else computed from its images;
//   P, R       ADM's compute_prec_recall(ref pool3, sample pool3) with k = 3, over all
//              images of both batches (the reference's 10,000, the samples' 50,000).
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "aim/eval/inception.h"
#include "aim/eval/metrics.h"

namespace aim::eval {

/// Images of one batch, read in row ranges without holding the batch in memory.
class ImageBatchSource {
 public:
  /// Opens an .npz (checks `arr_0` is uint8 [N, H, W, 3]) or lists an image folder (decodes the
  /// first image for the size). Errors name the file, member or image and what was found.
  explicit ImageBatchSource(const std::string& path);
  ~ImageBatchSource();
  ImageBatchSource(ImageBatchSource&&) noexcept;
  ImageBatchSource& operator=(ImageBatchSource&&) noexcept;

  const std::string& path() const { return path_; }
  bool is_npz() const { return is_npz_; }
  int64_t size() const { return size_; }  ///< N
  int64_t height() const { return height_; }
  int64_t width() const { return width_; }

  /// Images [start, start + count) as [count, H, W, 3] uint8 on the CPU. A folder image of
  /// another size is an error naming it. Not safe to call from two threads at once.
  torch::Tensor read(int64_t start, int64_t count);

  /// Whether the .npz stores `mu` and `sigma` (FID) / `mu_s` and `sigma_s` (sFID) statistics.
  bool has_stored_stats() const { return stored_.mu.defined(); }
  bool has_stored_spatial_stats() const { return stored_spatial_.mu.defined(); }
  /// Those statistics in float64 (undefined tensors when absent).
  const FeatureStats& stored_stats() const { return stored_; }
  const FeatureStats& stored_spatial_stats() const { return stored_spatial_; }

  /// What identifies the content for the feature cache: size and modification time of the
  /// .npz, or the relative names, sizes and times of a folder's images.
  std::string signature() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_;
  bool is_npz_ = false;
  int64_t size_ = 0, height_ = 0, width_ = 0;
  FeatureStats stored_, stored_spatial_;
};

/// The Inception outputs the metrics need, float32 on the CPU, rows in image order.
struct BatchFeatures {
  torch::Tensor pool3;            ///< [N, 2048]: FID, precision/recall
  torch::Tensor spatial;          ///< [N, 2023]: sFID
  torch::Tensor logits_unbiased;  ///< [N, 1008]: Inception Score
  bool from_cache = false;
  std::string cache_path;         ///< the cache file read or written ("" when none)
};

/// Settings of an evaluation (ADM's protocol by default).
struct EvalOptions {
  /// FID Inception-v3 weights (.safetensors from tools/convert_checkpoint.py --kind inception).
  /// May stay empty when every input has a valid feature cache.
  std::string inception_weights;
  torch::Device device = torch::kCPU;
  int64_t batch_size = 100;  ///< images per Inception forward
  InceptionPreprocess preprocess = InceptionPreprocess::kAdmTf1;
  bool bf16 = false;         ///< bf16 Inception (CUDA only); features stay float32
  /// Read and write `<input>.inception.safetensors` (feature_cache_path).
  bool use_cache = true;
  int64_t is_split_size = 5000;
  int64_t k = 3;             ///< precision/recall neighbourhood
  int64_t pr_block = 10000;  ///< rows and columns of one distance block
  /// Allow samples and reference of different image sizes (ADM resizes both to 299 silently;
  /// by default that is an error, since it is almost always a mistake).
  bool allow_size_mismatch = false;
  bool progress = true;      ///< progress lines with rate and ETA on stderr
};

/// The five numbers and how they were obtained.
struct EvalResult {
  double inception_score = 0, fid = 0, sfid = 0, precision = 0, recall = 0;
  int64_t num_samples = 0, num_ref = 0;
  int64_t sample_height = 0, sample_width = 0, ref_height = 0, ref_width = 0;
  bool sample_stats_stored = false, ref_stats_stored = false;    ///< FID used stored mu/sigma
  bool sample_spatial_stored = false, ref_spatial_stored = false; ///< sFID used mu_s/sigma_s
  bool sample_features_cached = false, ref_features_cached = false;
  std::string sample_cache, ref_cache;
  FrechetInfo fid_info, sfid_info;
  /// Distinct most likely Inception classes over all samples and in the IS split with fewest:
  /// far fewer in a split than overall means samples in class order, which the consecutive
  /// splits of the IS punish (the CLI says so).
  int64_t predicted_classes = 0, predicted_classes_min_split = 0, is_splits = 0;
  double seconds = 0;
};

/// `<path>.inception.safetensors` (a folder's trailing '/' dropped).
std::string feature_cache_path(const std::string& input_path);


/// The cached features of `source` (feature_cache_path) when options.use_cache and the cache
/// matches: the source's signature, the preprocessing, the compute dtype and, when
/// options.inception_weights is set, the weights' digest. Otherwise nullopt, with the reason in
/// `why` (when given). A cache made with other weights is used, with a note, when no weights
/// are given.
std::optional<BatchFeatures> load_cached_features(const ImageBatchSource& source,
                                                  const EvalOptions& options,
                                                  std::string* why = nullptr);

/// Runs every image of `source` through `extractor` (the next images are read while the network
/// runs) and, when options.use_cache, writes the cache; a cache that cannot be written is a
/// warning. `label` names the batch in progress lines ("samples", "reference").
BatchFeatures compute_features(ImageBatchSource& source, InceptionExtractor& extractor,
                               const EvalOptions& options, const std::string& label);

/// ADM's evaluation of `samples_path` against `ref_path`. Loads the Inception weights only
/// when some input has no valid cache.
EvalResult evaluate(const std::string& samples_path, const std::string& ref_path,
                    const EvalOptions& options);

}  // namespace aim::eval
