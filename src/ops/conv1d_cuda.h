#pragma once
// CUDA adapter of the causal conv1d op: an autograd function over kernels/causal_conv1d.h.
#include <torch/types.h>

#include "ops/cuda_ns.h"

namespace aim::ops::AIM_OPS_CUDA_NS {

/// Whether the kernels handle these tensors (CUDA, fp32/bf16 x, width <= 8); otherwise the
/// reference runs.
bool causal_conv1d_supported(const torch::Tensor& x, const torch::Tensor& weight,
                             const torch::Tensor& bias);

/// Differentiable in x, weight and bias. x [B, C, L] (any strides; channel-last is the fast
/// layout), weight [C, W] or [C, 1, W], bias [C] or undefined. The output has x's dtype and, for
/// channel-last x, the channel-last layout.
torch::Tensor causal_conv1d(const torch::Tensor& x, const torch::Tensor& weight,
                            const torch::Tensor& bias, bool silu);

/// Whether the one-token kernel handles these tensors: x [B, C] fp32/bf16, conv_state
/// [B, C, W] fp32/bf16 with unit stride along W, weight and bias fp32/bf16, width <= 8, nothing
/// that autograd would record.
bool causal_conv1d_update_supported(const torch::Tensor& x, const torch::Tensor& conv_state,
                                    const torch::Tensor& weight, const torch::Tensor& bias);

/// ops::causal_conv1d_update on the kernel: conv_state shifted in place, returns [B, C] in x's
/// dtype.
torch::Tensor causal_conv1d_update(const torch::Tensor& x, torch::Tensor& conv_state,
                                   const torch::Tensor& weight, const torch::Tensor& bias,
                                   bool silu);

}  // namespace aim::ops::AIM_OPS_CUDA_NS
