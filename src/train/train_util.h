#pragma once
// Pieces shared by the stage-1 (tokenizer) and stage-2 (AiM) trainers. Internal to src/train.
#include <cstdint>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "aim/core/autocast.h"
#include "aim/core/config.h"
#include "aim/core/progress.h"
#include "aim/core/tensorboard.h"
#include "aim/train/dist.h"
#include "aim/train/optim.h"
#include "aim/train/run_dir.h"
#include "aim/train/trainer.h"

namespace aim::train {

/// Seed of the random draws of one micro-batch: a pure function of (seed, step, micro-batch,
/// rank), so a resumed run draws exactly what the uninterrupted one would have drawn without
/// saving generator states.
uint64_t micro_seed(int64_t seed, int64_t step, int64_t micro, int64_t rank);

/// The signal that asked the running training to stop (0 = none); see install_stop_handlers().
int stop_signal();

/// Prints a line on the ranks that report (rank 0 unless quiet).
using Say = std::function<void(const std::string&)>;

/// The checkpoint a session continues from, "" for a fresh run. `resume` is "" (none), "auto"
/// (the newest checkpoint in `out_dir`, if it has one) or a run or checkpoint directory.
std::string resume_dir_for(const std::string& resume, const std::string& out_dir);

/// The keys under `prefix` ("model.") whose values differ, "key before -> after; ...", or
/// "(a setting outside the listed keys)" when only something unlisted differs.
std::string section_changes(const Config& saved, const Config& now, const std::string& prefix);

/// A resumed session says which settings differ from the checkpoint's config.yaml (data, optimizer,
/// schedule, seed, ...: legitimate to change, but not silently), one line through `say`.
void report_changed_settings(const Config& saved, const Config& now, const std::string& resume_dir,
                             const std::function<void(const std::string&)>& say);

/// Micro-batches each rank accumulates per optimizer step: train.global_batch /
/// (train.micro_batch x world). Throws naming train.global_batch when that does not divide.
int64_t accumulation_steps(const TrainConfig& train, int64_t world);

/// On a resume: checks that the optimizer saved with the checkpoint (`path`) made
/// state.step - state.skipped_steps steps. Throws naming the file otherwise.
void check_optimizer_steps(int64_t optimizer_steps, const TrainerState& state, const std::string& path);

/// On a resume with another micro-batch or rank count than the checkpoint's: moves state.batch
/// (each rank's next micro-batch of the epoch) to where the same epoch's data continues. Ranks
/// take every world-th entry of one permutation per epoch, so the samples used so far are its
/// first state.batch x micro x world entries whatever the layout: with the same global batch the
/// run goes on with the batches an uninterrupted run would have drawn; otherwise up to
/// micro x world - 1 samples are skipped to reach a whole micro-batch of every rank (said).
/// Warns when the data's size (`num_samples`) is not the checkpoint's run's.
void continue_data_position(TrainerState& state, int64_t num_samples, int64_t micro, int64_t world,
                            const Say& say);

/// The tensors of `params`, in order.
std::vector<torch::Tensor> tensors_of(const std::vector<NamedParam>& params);

/// Whether the loop ends before its next step: a stop signal on any rank (sets
/// result.interrupted) or options.stop_after steps done in this session (sets result.paused).
/// Collective: every rank calls it once per step.
bool stop_before_step(DistContext& dist, const TrainOptions& options, int64_t session_steps,
                      TrainResult& result);

/// A step whose loss or gradient norm is not finite: unless train.skip_nonfinite, throws an
/// aim::Error that names the last good checkpoint in `run`; else reports it and counts it in
/// state.skipped_steps (the caller leaves the weights and the optimizer as they are but advances
/// state.step: the optimizer's own count is state.step - state.skipped_steps). Returns true when
/// the step is to be skipped, false when both values are finite (nothing happens then).
bool skip_nonfinite_step(double loss, double grad_norm, double lr, const TrainConfig& train,
                         const RunDir& run, TrainerState& state, const Say& say);

/// Writes checkpoint state.step of `run`. With several ranks it first checks that all replicas
/// hold the same `params` and throws if they differ. Rank 0 writes config.yaml, then what
/// `write_model_files(dir)` writes, then trainer_state.json, keeping train.keep_last
/// checkpoints; when that fails every rank throws. Returns the checkpoint directory on rank 0,
/// "" on the others. Collective.
std::string save_checkpoint(DistContext& dist, RunDir& run, const Config& config, const TrainerState& state,
                            const std::vector<torch::Tensor>& params,
                            const std::function<void(const std::string& dir)>& write_model_files, const Say& say,
                            ConfigUse use = ConfigUse::kAim);

/// The end of a session, after its last checkpoint: says how it ended (and how to resume),
/// waits for every rank, and fills result.steps, .loss and .checkpoint (the newest one when
/// this rank wrote none).
void end_session(DistContext& dist, const RunDir& run, const TrainerState& state, Progress& progress,
                 const Say& say, TrainResult& result);

/// A run must not write into `out_dir` when it holds another run's checkpoint: its checkpoints
/// would be replaced and pruned and its metrics mixed in. A new run (`resume_dir` empty) is
/// refused any such folder; a resumed one is let in only to the run `resume_dir` belongs to
/// (a run resumed into an empty folder goes on there). Throws naming the directory and its
/// latest checkpoint. Collective (rank 0 looks).
void refuse_existing_run(DistContext& dist, const std::string& out_dir, const std::string& resume_dir = "");

/// Every rank decides on its own whether to resume and reads the checkpoint: `read` does that,
/// setting `resume_dir` (empty: a new run) and `step`. Then the ranks compare (two all-reduces,
/// min and max, on every rank, also where `read` threw): every rank throws, naming both, when
/// they did not all find the same step (or some found none), as a node-local out_dir or a shared
/// filesystem's stale view would make them; a rank whose `read` threw rethrows its error, the
/// others say so. (Ranks that found different checkpoints of the same step pass.)
void agree_on_resume(DistContext& dist, const std::function<void()>& read, const std::string& resume_dir,
                     const int64_t& step);

/// Runs `f` on every rank (it may do nothing on some), then agrees (one all-reduce): when it threw
/// on any rank, every rank throws, the failing ones their own error, the others one naming
/// `what` and their rank. For set-up work whose failure on one rank alone would leave the others
/// waiting in the next collective until its timeout (a file one node cannot read).
void on_every_rank_or_none(DistContext& dist, const std::function<void()>& f, const std::string& what);

/// Every rank's `count` of the training images (read from `what`, its own copy) must be the same:
/// otherwise the samplers' shares would overlap and the ranks could run different numbers of
/// steps. Throws on every rank naming `what` and the counts. Collective (two all-reduces).
void agree_on_count(DistContext& dist, int64_t count, const std::string& what);

/// On a resume from checkpoint `step`: names the checkpoints of `run` past it (left by the run's
/// earlier course; train.keep_last prunes them first).
void report_later_checkpoints(const RunDir& run, int64_t step, const Say& say);

/// <run>/metrics.jsonl, appended to by rank 0 (a no-op on the others), flushed per record, and
/// the same records as TensorBoard scalars in <run>/tensorboard/ (tag "<kind>/<key>" for each
/// number, at the record's step and time), with the run's step pictures as images.
class MetricsLog {
 public:
  /// `start_step`: the step the session starts from (0 for a new run). Records of later steps
  /// (written after that checkpoint by an interrupted session, by a course resumed from
  /// elsewhere, or by a run that stopped before its first checkpoint) move to
  /// metrics.after-step-N.jsonl, so the log describes one course of the run, and the step
  /// pictures past it to samples/after-step-N/. `fid_due`: the FID of `start_step` is computed
  /// again this session, so an earlier record of it moves too.
  /// `tensorboard`: also write events; `image_tag` names the step pictures there. Each session
  /// writes the folder's events afresh from the records that stay and the pictures up to
  /// `start_step`, then adds its own, so TensorBoard shows the course metrics.jsonl describes.
  MetricsLog(const RunDir& run, bool main, int64_t start_step, bool tensorboard, std::string image_tag,
             bool fid_due = false);
  /// Appends and flushes (with "time": seconds since the epoch, when the record has none); a
  /// failed write (a full disk) is a warning, said once.
  void write(const nlohmann::ordered_json& record);
  /// The picture written to `png` (step_image_path) at `step`, for TensorBoard (nothing without it).
  void image(int64_t step, const std::string& png);

 private:
  void tensorboard_record(const nlohmann::ordered_json& record, double fallback_time);
  void warn_tensorboard(const std::string& what);

  std::string path_;
  std::ofstream out_;
  bool failed_ = false;
  std::unique_ptr<TensorBoardWriter> tb_;
  std::string image_tag_;
  bool tb_failed_ = false;
};

/// <run>/samples/step-NNNNNNNN.png (samples/ created): the picture of a step (sample or
/// reconstruction grid).
std::string step_image_path(const RunDir& run, int64_t step);

/// `v` with `precision` significant digits.
std::string fmt(double v, int precision = 4);
/// 12, 3.4k, 5.6M.
std::string fmt_count(double v);

}  // namespace aim::train
