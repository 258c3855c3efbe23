#pragma once
// Splitting a tensor's last dimension into views whose gradients may come back packed.
#include <torch/types.h>

#include <vector>

namespace aim::ops {

/// t split along its last dimension into parts of `sizes` (views; the values of
/// torch::split_with_sizes). Backward: when the parts' gradients are adjacent slices of one
/// buffer, in t's order and with equal strides (what an op whose backward writes its inputs'
/// gradients packed returns, e.g. ssd_scan's dx, dB, dC on the kernels), t's gradient is that
/// buffer itself, with no copy; otherwise the parts' gradients are concatenated (zeros for a
/// part without one), as split_with_sizes' backward does.
std::vector<torch::Tensor> split_last_dim(const torch::Tensor& t, c10::IntArrayRef sizes);

/// Whether `parts` are adjacent slices of one buffer along the last dimension, in order, with
/// equal sizes and strides elsewhere and unit last strides: then `t` of those widths is the
/// view covering them (what split_last_dim's backward returns without copying).
bool packed_along_last_dim(const std::vector<torch::Tensor>& parts);

}  // namespace aim::ops
