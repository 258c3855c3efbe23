#pragma once
// A training run directory:
//   <run>/config.yaml            the resolved configuration
//   <run>/metrics.jsonl          one JSON object per logged step / held-out loss
//   <run>/samples/step-N.png     sample grids
//   <run>/checkpoints/step-N/    config.yaml, model.safetensors, ema.safetensors,
//                                optimizer.safetensors, trainer_state.json
//   <run>/latest                 "checkpoints/step-N": the newest complete checkpoint
// A checkpoint is written under a temporary name and renamed into place before `latest` moves
// to it, so a crash or a full disk never leaves a half-written checkpoint as the latest one.
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace aim::train {

/// Where training stands; trainer_state.json.
struct TrainerState {
  int64_t step = 0;            ///< optimizer steps done
  int64_t epoch = 0;           ///< epoch of the next micro-batch
  int64_t batch = 0;           ///< index of the next micro-batch within `epoch` (per rank)
  int64_t samples_seen = 0;    ///< images consumed over all ranks
  int64_t world_size = 1;
  int64_t global_batch = 0;
  int64_t micro_batch = 0;
  int64_t seed = 0;
  int64_t skipped_steps = 0;   ///< steps skipped for a non-finite loss or gradient
  int64_t data_samples = 0;    ///< images in the training data (0: not recorded)
  /// Sums of the logged terms (the loss, ...) over the steps since the last log line that were
  /// not skipped, and their count: a resume goes on averaging them as an uninterrupted run would.
  std::vector<double> log_sums;
  int64_t log_count = 0;
  double elapsed_s = 0.0;      ///< training time so far (all sessions)
  double loss = 0.0;           ///< mean training loss of the last step
  /// The FID of this step (train.fid_every) was abandoned for a stop signal: a resume computes
  /// it before its first step.
  bool fid_due = false;
  std::string rng = "per-step: seed (seed, step, micro-batch, rank)";

  std::string to_json() const;
  /// Parses trainer_state.json; errors name `what` and the key.
  static TrainerState from_json(const std::string& text, const std::string& what);
};

class RunDir {
 public:
  explicit RunDir(std::string path);
  const std::string& path() const { return path_; }

  /// Writes a checkpoint for `step`: creates a temporary directory, calls `write(dir)` to fill
  /// it, makes it durable, renames it to checkpoints/step-N, points `latest` at it and removes
  /// all but the newest `keep_last`. On failure the temporary directory is removed, `latest`
  /// is untouched, and the aim::Error says which checkpoint is still the latest.
  std::string save(int64_t step, const std::function<void(const std::string& dir)>& write,
                   int64_t keep_last);
  /// The newest complete checkpoint directory, if any.
  std::optional<std::string> latest() const;
  /// Step numbers of the complete checkpoints on disk, ascending.
  std::vector<int64_t> checkpoint_steps() const;

 private:
  std::string path_;
};

/// The run directory `path` belongs to: `path` itself when it is one (it has `latest` or
/// `checkpoints/`), RUN for RUN/checkpoints/step-N, "" for a checkpoint outside a run.
std::string run_dir_of(const std::string& path);

/// The checkpoint directory a `--resume` argument names: a checkpoint directory itself (holds
/// trainer_state.json) or a run directory (follows `latest`). Throws aim::Error with what was
/// found.
std::string resolve_resume_dir(const std::string& path);

}  // namespace aim::train
