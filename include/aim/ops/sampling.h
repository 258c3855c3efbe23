#pragma once
// Next-token selection: classifier-free guidance combine, then temperature, top-k, top-p (in
// that order; the most likely token is always kept) and a draw by inverse CDF from caller-given
// uniforms, so a sample's randomness can be keyed by (seed, sample, step) whatever the batch.
#include <torch/types.h>

namespace aim::ops {

/// uncond + (cond - uncond) * scale.  // [B, V] each
torch::Tensor cfg_combine(const torch::Tensor& cond, const torch::Tensor& uncond, double scale);

/// logits [B, V], uniforms [B] in [0, 1) -> tokens [B] int64. top_k = 0 keeps all, top_k = 1
/// is argmax (uniforms unused); top_p = 1 keeps all: tokens are removed from the unlikely end
/// while their total probability stays <= 1 - top_p (the official filter).
torch::Tensor sample_tokens(const torch::Tensor& logits, double temperature, int64_t top_k,
                            double top_p, const torch::Tensor& uniforms);

namespace ref {
torch::Tensor sample_tokens(const torch::Tensor& logits, double temperature, int64_t top_k,
                            double top_p, const torch::Tensor& uniforms);
}  // namespace ref

}  // namespace aim::ops
