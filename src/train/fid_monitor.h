#pragma once
// FID while training (train.fid_every): the images `aim sample --preset fid --labels random`
// would draw from the current weights, spread over the ranks, decoded by the run's tokenizer and
// scored by the FID Inception-v3 against the reference batch, all without leaving the run. The
// figure is the one `aim eval` gives for those images (FID only: no IS, sFID or precision/recall,
// which need every sample's features in one place).
#include <torch/torch.h>

#include <memory>
#include <optional>

#include "aim/core/config.h"
#include "aim/eval/inception.h"
#include "aim/eval/metrics.h"
#include "aim/model/aim.h"
#include "aim/model/vq.h"
#include "aim/train/dist.h"
#include "train_util.h"

namespace aim::train {

class FidMonitor {
 public:
  /// Loads the Inception weights and the reference statistics (train.fid_ref's stored mu/sigma,
  /// else the features of its images, split over the ranks) on every rank; `vq` decodes the
  /// samples (its codebook must be the model's vocabulary, its images the reference's size).
  /// An error on one rank stops every rank. Collective.
  FidMonitor(const Config& config, DistContext& dist, torch::Device device, VqModel vq, const Say& say);

  struct Result {
    double fid = 0;  ///< on rank 0 (the others skip the matrix square root: NaN)
    int64_t samples = 0;  ///< images scored (abandoned: drawn before the stop, over all ranks)
    double cfg = 0;
    std::string dtype;  ///< the sampling weights' dtype: "fp32" or "bf16"
    double seconds = 0;
    /// A stop signal reached a rank while the images were drawn: the ranks agreed after a batch
    /// to give up the FID (fid NaN), so that the checkpoint is written in the batch system's
    /// grace period.
    bool abandoned = false;
  };

  /// Draws train.fid_samples images from `model` (not changed; its weights copied into a
  /// replica kept for the run when sample.dtype asks for another dtype) and scores them. An
  /// error on one rank stops every rank; a stop signal on one abandons it on every rank.
  /// `show_progress`: a progress line on rank 0. Collective.
  Result evaluate(AimModel& model, bool show_progress = false);

  /// The guidance scale FIDs are drawn with: train.fid_cfg, or the published FIDs' for this model.
  static double guidance(const Config& config);

 private:
  const Config& config_;
  DistContext& dist_;
  torch::Device device_;
  VqModel vq_;
  std::optional<eval::InceptionExtractor> inception_;
  eval::FeatureStats ref_;
  AimModel replica_{nullptr};  ///< the sampling copy in sample.dtype, made at the first evaluation
};

}  // namespace aim::train
