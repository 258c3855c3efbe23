#pragma once
// The training loss: lm_head projection and token cross-entropy in one op, so that on CUDA the
// [tokens, vocab] logits are produced chunk by chunk and never held in fp32.
#include <torch/types.h>

namespace aim::ops {

/// Mean over tokens of cross_entropy(hidden @ weight^T, targets), in fp32. hidden [N, D],
/// weight [V, D] (cast to hidden's dtype for the product, as the model's lm_head), targets [N]
/// int64 in [0, V) or `ignore_index` (left out of the mean). Differentiable in hidden and weight.
/// `chunk_rows` bounds the rows of logits alive at once on CUDA (0: about 256 MB of them).
/// Under autocast both operands are first cast to autocast's dtype, as torch::linear would be.
torch::Tensor linear_cross_entropy(const torch::Tensor& hidden, const torch::Tensor& weight,
                                   const torch::Tensor& targets, int64_t ignore_index = -100,
                                   int64_t chunk_rows = 0);

namespace ref {
torch::Tensor linear_cross_entropy(const torch::Tensor& hidden, const torch::Tensor& weight,
                                   const torch::Tensor& targets, int64_t ignore_index);
}  // namespace ref

}  // namespace aim::ops
