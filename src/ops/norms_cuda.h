#pragma once
// CUDA adapters of the norm ops: autograd functions over kernels/rms_norm.h.
#include <torch/types.h>

#include "ops/cuda_ns.h"

#include <utility>

namespace aim::ops::AIM_OPS_CUDA_NS {

/// Whether the kernels handle these tensors (CUDA, fp32/bf16 hidden with a contiguous last
/// dim, D <= 8192, every tensor on hidden's device; a hidden_gate in fp32 or hidden's dtype,
/// with D <= 4096 when gradients are tracked);
/// otherwise the reference runs. residual, shift, scale and hidden_gate may be undefined.
bool add_rms_norm_supported(const torch::Tensor& hidden, const torch::Tensor& residual,
                            const torch::Tensor& weight, const torch::Tensor& shift,
                            const torch::Tensor& scale, const torch::Tensor& hidden_gate);

/// ops::add_rms_norm_modulate on the kernels, differentiable in hidden, residual, weight, shift,
/// scale and hidden_gate. hidden, residual [..., D] ([B, L, D] or [B, D] with shift, scale,
/// hidden_gate [B, D]). out is in hidden's dtype, also when the gate's product is fp32 (an fp32
/// gate on bf16 hidden: ops::add_rms_norm_modulate's out_dtype decides when that is asked for).
std::pair<torch::Tensor, torch::Tensor> add_rms_norm_modulate(
    const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight,
    double eps, bool residual_in_fp32, const torch::Tensor& shift, const torch::Tensor& scale,
    const torch::Tensor& hidden_gate);

/// Whether the fused block input + linear kernel (kernels/norm_linear.h) handles these tensors:
/// add_rms_norm_supported's conditions, a hidden_gate in hidden's dtype, nothing tracking
/// gradients, at most 8 rows and
/// D <= 2048 a multiple of 8 (bf16) or 4 (fp32), a contiguous 16-byte aligned linear weight
/// [N, D] and bias [N] (or none) in hidden's dtype. Otherwise the norm and the linear run apart.
bool add_rms_norm_linear_supported(const torch::Tensor& hidden, const torch::Tensor& residual,
                                   const torch::Tensor& weight, const torch::Tensor& shift,
                                   const torch::Tensor& scale, const torch::Tensor& hidden_gate,
                                   const torch::Tensor& linear_weight,
                                   const torch::Tensor& linear_bias);

/// ops::add_rms_norm_modulate_linear in one kernel (forward only): {linear(out), residual'}.
std::pair<torch::Tensor, torch::Tensor> add_rms_norm_modulate_linear(
    const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight,
    double eps, bool residual_in_fp32, const torch::Tensor& shift, const torch::Tensor& scale,
    const torch::Tensor& hidden_gate, const torch::Tensor& linear_weight,
    const torch::Tensor& linear_bias);

/// Whether the kernels handle these tensors (CUDA, fp32/bf16 x with a contiguous last dim, z
/// of x's dtype, group_size <= 8192); otherwise the reference runs. z may be undefined.
bool gated_rms_norm_supported(const torch::Tensor& x, const torch::Tensor& z,
                              const torch::Tensor& weight, int64_t group_size);

/// ops::gated_rms_norm on the kernels, differentiable in x, z and weight. x, z [..., E].
torch::Tensor gated_rms_norm(const torch::Tensor& x, const torch::Tensor& z,
                             const torch::Tensor& weight, int64_t group_size, double eps,
                             bool norm_before_gate);

}  // namespace aim::ops::AIM_OPS_CUDA_NS
