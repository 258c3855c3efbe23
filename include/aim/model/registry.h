#pragma once
// What a configuration amounts to without building it: the official state-dict layout,
// parameter counts and memory estimates (used by `aim info` and checked against the official
// layouts in tests).
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "aim/core/config.h"

namespace aim {

/// One state-dict entry: official key (with the `mamba.` prefix) and shape.
struct LayoutEntry {
  std::string key;
  std::vector<int64_t> shape;
  int64_t numel() const;
};

/// Every parameter in official state_dict order; the tied `mamba.lm_head.weight` is listed
/// (as the official state_dict lists it). `config` must be resolved.
std::vector<LayoutEntry> official_layout(const ModelConfig& config);

/// Parameters by part, the tied weight counted once (the official get_num_params()).
struct ParameterCounts {
  int64_t embeddings = 0;   ///< token, position and class tables
  int64_t adaln = 0;        ///< adaLN-group or per-layer adaLN, scale_shift tables, final adaLN
  int64_t mixers = 0;       ///< all Mamba mixers
  int64_t norms = 0;        ///< block norms, norm_f, norm_final
  int64_t lm_head = 0;      ///< 0 when tied
  int64_t total() const { return embeddings + adaln + mixers + norms + lm_head; }
};
ParameterCounts count_parameters(const ModelConfig& config);

/// Rough memory needs in bytes. Training: fp32 weights, gradients, AdamW moments (and EMA when
/// `ema`), plus bf16 activations per image; sampling: bf16 weights plus the recurrent state of
/// one image (doubled for classifier-free guidance).
struct MemoryEstimate {
  int64_t weights_fp32 = 0, weights_bf16 = 0;
  int64_t train_states = 0;             ///< weights + grads + Adam moments (+ EMA)
  int64_t train_activations_per_image = 0;
  int64_t train_activations_recompute_per_image = 0;  ///< with train.recompute_every: 1
  int64_t sample_state_per_image = 0;   ///< conv + ssm states of all layers, one sequence
};
MemoryEstimate estimate_memory(const ModelConfig& config, bool ema);

/// The tokenizer's share of sampling: its fp32 weights (counted from the module itself) and the
/// decoder's activations per image in flight, about six feature maps at full resolution and the
/// top level's width (measured on the CPU: 16 images of VQ-16 at 256 px took 3.5 GB more than
/// sampling tokens alone, 0.2 GB per image beyond the weights).
struct VqDecodeEstimate {
  int64_t parameters = 0;
  int64_t weights_fp32 = 0;
  int64_t activations_per_image = 0;
};
VqDecodeEstimate estimate_vq_decode(const VqConfig& vq, int64_t image_size);

/// "1.30 GiB" (binary units) and "349,760,000", as `aim info` prints them.
std::string bytes_str(double bytes);
std::string count_str(int64_t n);

/// Human-readable summary for `aim info`; `vq` is the tokenizer that decodes its tokens.
std::string describe_model(const ModelConfig& config, bool ema, const VqConfig& vq = VqConfig{});

}  // namespace aim
