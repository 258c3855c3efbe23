#pragma once
// Splitting a tensor's last dimension into views whose gradients may come back packed.
#include <torch/types.h>

#include <vector>

namespace aim::ops {

/// t split along its last dimension into parts of `sizes` (views; the values of
/// torch::split_with_sizes). Backward: when the parts' consumers wrote their gradients into the
/// places split_grad_slot gave them, t's gradient is the buffer those places lie in, with the
/// parts that have no place copied into it (zeros for a part without a gradient); otherwise the
/// parts' gradients concatenated (zeros for a part without one), as split_with_sizes' backward
/// does.
std::vector<torch::Tensor> split_last_dim(const torch::Tensor& t, c10::IntArrayRef sizes);

/// For an op's backward: where to write the gradient of its input `t` when t is a part of
/// split_last_dim's output, or a view of one over the same elements (a transpose, a
/// permutation, a reshape that merges or splits dimensions without copying). The result has
/// t's sizes and strides and lies in one gradient buffer, in the layout of the split's input,
/// shared with the other parts: the op writes t's whole gradient there and returns the result
/// as that gradient, and the split then passes the buffer on without concatenating. Each part's
/// place is handed out once per backward pass. Undefined when t is not such a view (any other
/// op between them), or its place was already handed out: the op then returns its own tensor,
/// which the split copies.
torch::Tensor split_grad_slot(const torch::Tensor& t);

/// `grad` as the gradient of t: copied into split_grad_slot(t) when there is one (converting
/// to t's type), else `grad` in t's type.
torch::Tensor into_split_grad_slot(const torch::Tensor& t, const torch::Tensor& grad);

}  // namespace aim::ops
