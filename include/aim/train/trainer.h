#pragma once
// Stage-2 training of AiM (aim train): the official recipe (AdamW, clipping, lr per 256 images,
// schedules, class dropout, bf16 autocast with fp32 master weights, optional EMA) on one
// process or data-parallel over c10d (NCCL on GPUs, Gloo on CPUs), with exact resume.
#include <string>

#include <torch/types.h>

#include "aim/core/config.h"

namespace aim::train {

struct TrainOptions {
  std::string resume;        ///< "" (fresh run), "auto" (latest in the run dir if any), or a dir
  std::string init;          ///< checkpoint to fine-tune from (our run dir or an official snapshot)
  std::string init_config;   ///< config for a bare .safetensors `init`
  torch::Device device = torch::kCPU;
  int64_t stop_after = 0;    ///< save and stop after this many steps in this session (0 = no)
  bool quiet = false;        ///< no progress lines (tests)
};

struct TrainResult {
  int64_t steps = 0;          ///< optimizer steps done at the end (all sessions)
  int64_t total_steps = 0;    ///< steps of the whole run
  double loss = 0.0;          ///< mean loss of the last step
  std::string checkpoint;     ///< the last checkpoint written ("" if none)
  bool interrupted = false;   ///< stopped by SIGINT/SIGTERM (checkpoint written)
  bool paused = false;        ///< stopped by TrainOptions::stop_after (checkpoint written)
};

/// Runs (or continues) a training run; `config` must be resolved and validated. Ranks come from
/// the launch environment (aim/core/env.h). Throws aim::Error on bad input, a non-finite loss
/// (unless train.skip_nonfinite) or a failed save; the last good checkpoint survives all of them.
TrainResult run_training(const Config& config, const TrainOptions& options);

/// Installs SIGINT/SIGTERM handlers that ask the running training to stop after its current
/// step (a second signal terminates at once). Called by `aim train`.
void install_stop_handlers();

}  // namespace aim::train
