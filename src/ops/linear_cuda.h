#pragma once
// CUDA adapter of the small-batch linear layer: kernels/skinny_linear.h from tensors.
#include <torch/types.h>

#include "ops/cuda_ns.h"

namespace aim::ops::AIM_OPS_CUDA_NS {

/// Whether the kernel takes x [..., K] weight [N, K] bias [N]: all bf16 on the kernel's device,
/// no gradient asked, at most kSkinnyLinearMaxRows rows, K a multiple of 32, x's rows and the
/// weight on 16-byte boundaries.
bool linear_supported(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);

/// x weight^T + bias in bf16 with fp32 sums, [..., N].
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);

}  // namespace aim::ops::AIM_OPS_CUDA_NS
