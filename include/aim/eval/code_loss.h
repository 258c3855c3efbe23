#pragma once
// Held-out next-token loss of an AiM on a code dataset (aim eval-loss): the figure checkpoints
// are compared by, split by token position and class; the loss under the positions the official
// decoder feeds (image token j at j + decode_position_offset, not j as in training); and, on
// request, the sampler's own path, teacher-forced: the recurrent step over the same tokens,
// compared logit by logit with the parallel pass (with an fp32 or a bf16 recurrent state).
#include <cstdint>
#include <functional>
#include <vector>

#include <torch/types.h>

#include "aim/data/code_dataset.h"
#include "aim/data/image.h"
#include "aim/model/aim.h"

namespace aim {

struct CodeLossOptions {
  int64_t batch_size = 32;    ///< sequences per forward
  int64_t max_images = 0;     ///< 0 = every labelled image; else this many, spread evenly over the set
  int64_t view = 0;           ///< augmentation view of each image; -1 = every view (one sequence each)
  bool unconditional = false; ///< feed the null class instead of the images' labels
  bool recurrent = false;     ///< also decode step by step, teacher-forced
  torch::ScalarType ssm_state_dtype = torch::kFloat;  ///< recurrent state of that pass
};

/// Losses are natural-log cross-entropies per token, averaged over sequences.
struct CodeLoss {
  int64_t images = 0, sequences = 0, tokens = 0;  ///< tokens per sequence
  double nll = 0.0;                           ///< training positions (image token j at position j)
  std::vector<double> nll_by_position;        ///< [tokens], training positions
  /// The decoder's positions (token j at j + decode_position_offset): what sampling conditions
  /// on. Equal to the above when the offset is 0.
  double nll_decode = 0.0;
  std::vector<double> nll_decode_by_position;
  std::vector<double> nll_by_class;           ///< [num_classes], training positions; NaN where no image
  std::vector<int64_t> sequences_by_class;

  // The recurrent pass (options.recurrent), against the parallel pass at the decoder's positions.
  bool recurrent = false;
  double nll_recurrent = 0.0;
  double max_logit_error = 0.0;   ///< max |recurrent - parallel| over every logit
  double max_abs_logit = 0.0;     ///< max |parallel logit|, the scale of the above
  double mean_logit_error = 0.0;  ///< mean |recurrent - parallel|
  double mean_abs_logit = 0.0;
  double argmax_agreement = 0.0;  ///< fraction of positions whose most likely token is the same
};

/// Scores `model` (in eval mode, on its device, no class dropout) on `data`'s labelled images.
/// `on_batch(sequences)` is called after each batch. Throws aim::Error naming the file when the
/// dataset's sequence length, vocabulary or labels do not fit the model.
CodeLoss evaluate_code_loss(AimModel& model, const CodeDataset& data, const CodeLossOptions& options,
                            const std::function<void(int64_t)>& on_batch = {});

/// Per-token cross-entropy [B, T] (fp32) of hidden states [B, T, D] against targets [B, T],
/// through the model's lm_head a few thousand rows at a time (the full [B, T, V] logits are never
/// held in fp32).
torch::Tensor token_nll(AimModel& model, const torch::Tensor& hidden, const torch::Tensor& targets);

/// The per-position losses of a square token grid (raster order, as the tokenizer lays them out)
/// as a picture: one cell per token coloured by its loss (dark = low, yellow = high) on a scale
/// spanning tokens 1.. (token 0, predicted from the class alone, is clamped to it and its value
/// printed), a colour bar with the range below, `title` above. Throws aim::Error unless the
/// count is a square.
Image loss_heatmap(const std::vector<double>& per_position, const std::string& title);

}  // namespace aim
