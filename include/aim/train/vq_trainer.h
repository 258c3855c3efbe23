#pragma once
// Stage-1 training of the image tokenizer (aim train-vq): LlamaGen's VQ recipe (L2
// reconstruction, with L1 and SSIM terms as options; codebook and commitment losses, optional
// LPIPS, entropy and PatchGAN hinge losses, AdamW) on the images of data.images, one process or
// data-parallel over c10d, with the run
// directory, exact resume, progress and failure handling of stage 2 (aim/train/trainer.h).
//
// Run directory: config.yaml, metrics.jsonl, samples/step-N.png (reconstruction grids: each
// original above its reconstruction), checkpoints/step-N/{config.yaml, model.safetensors
// (LlamaGen key layout), optimizer.safetensors, [discriminator.safetensors,
// disc_optimizer.safetensors] (vq_train.disc_weight > 0), [code_counts.safetensors]
// (vq_train.restart_every > 0), trainer_state.json} and `latest`. `aim extract-codes --vq RUN`,
// vq.weights: RUN and every other tokenizer consumer read the run directory directly.
#include "aim/core/config.h"
#include "aim/train/trainer.h"

namespace aim::train {

struct VqTrainResult : TrainResult {
  double psnr = 0.0;   ///< dB on the fixed grid images at the end (eval mode)
  double usage = 0.0;  ///< fraction of the codebook in the usage history at the end
};

/// Runs (or continues) tokenizer training; `config` loaded with ConfigUse::kTokenizer.
/// options.init names tokenizer weights to start from (any form load_vq_model accepts).
VqTrainResult run_vq_training(const Config& config, const TrainOptions& options);

}  // namespace aim::train
