#pragma once
// The linear layer of the decoding step's projections.
#include <torch/types.h>

namespace aim::ops {

/// torch::nn::functional::linear: x [..., K] -> x weight^T + bias, weight [N, K], bias [N] or
/// undefined. On CUDA, for bf16 x, weight and bias without gradients and at most 64 rows (a
/// sampling batch of up to 32 images with guidance), K a multiple of 32: the small-batch kernel
/// (kernels/skinny_linear.cu), which spreads the weight read over every SM; otherwise cuBLAS
/// through LibTorch. AIM_SMALL_LINEAR=0 turns the kernel off (to compare or bisect).
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias = {});

}  // namespace aim::ops
