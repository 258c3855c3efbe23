#pragma once
// CPU kernel of the causal depthwise conv1d (+ SiLU) of aim/ops/conv1d.h, forward and backward.
// Works channel-last ([B, L, C] rows, vectorised over channels), which is how the Mamba mixers
// hold the in_proj output; ATen's depthwise conv takes im2col-like paths on the CPU that cost
// more than the rest of the mixer. The reference stays the oracle (tests/ops/conv1d_test.cpp).
#include <torch/types.h>

namespace aim::ops::cpu {

/// Whether the kernel handles these tensors: x [B, C, L] fp32 or bf16 on the CPU, weight and
/// bias on the CPU, L >= 1.
bool causal_conv1d_supported(const torch::Tensor& x, const torch::Tensor& weight,
                             const torch::Tensor& bias);

/// out [B, C, L] in x's dtype, held channel-last (a transposed view of [B, L, C]); differentiable
/// in x, weight and bias. Computes in fp32.
torch::Tensor causal_conv1d(const torch::Tensor& x, const torch::Tensor& weight,
                            const torch::Tensor& bias, bool silu);

}  // namespace aim::ops::cpu
