#pragma once
// RMS normalisation ops of the AiM block: plain, fused residual add, and Mamba2's gated
// group norm. Every RMSNorm here is rms(x) = x / sqrt(mean(x^2) + eps) * weight, no bias,
// computed in fp32 whatever the input dtype.
#include <torch/types.h>

#include <optional>
#include <utility>

namespace aim::ops {

/// x [..., D], weight [D] -> [..., D] in x's dtype.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

/// Pre-norm fused add: residual' = hidden + residual (residual undefined: residual' = hidden),
/// kept in fp32 when `residual_in_fp32`; returns {rms_norm(residual') in hidden's dtype,
/// residual'}. hidden, residual [..., D], weight [D]. With `hidden_gate` ([B, D], broadcast
/// over L like shift and scale below) hidden is first replaced by hidden_gate * hidden, as
/// ATen computes it (the previous AiM block's gated output), and out has that product's dtype:
/// one kernel on CUDA, forward and backward, when that is hidden's dtype; the multiply and the
/// op otherwise.
std::pair<torch::Tensor, torch::Tensor> add_rms_norm(const torch::Tensor& hidden,
                                                     const torch::Tensor& residual,
                                                     const torch::Tensor& weight, double eps,
                                                     bool residual_in_fp32,
                                                     const torch::Tensor& hidden_gate = {});

/// The AiM block's input: add_rms_norm followed by the adaLN modulate,
/// out = normed * (1 + scale) + shift, with shift, scale [B, D] broadcast over L for hidden
/// [B, L, D] (or matching hidden [B, D]); shift and scale both undefined: plain add_rms_norm.
/// hidden_gate as for add_rms_norm. Returns {out, residual'}, out in `out_dtype` when given,
/// else in the dtype of hidden (of hidden_gate * hidden with a gate). Training under autocast
/// asks for autocast's dtype, which in_proj would cast out to anyway: with bf16 hidden (the
/// previous out_proj's) and an fp32 gate, the gate's multiply, its backward and that cast are
/// then all inside the kernels, with the bits of the separate ops.
std::pair<torch::Tensor, torch::Tensor> add_rms_norm_modulate(
    const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight,
    double eps, bool residual_in_fp32, const torch::Tensor& shift, const torch::Tensor& scale,
    const torch::Tensor& hidden_gate = {},
    std::optional<torch::ScalarType> out_dtype = std::nullopt);

/// The AiM block's input through the mixer's input projection:
/// {linear(add_rms_norm_modulate(...).out, linear_weight, linear_bias), residual'}, with
/// linear_weight [N, D] and linear_bias [N] or undefined. On CUDA, for a decoding step of at
/// most 8 rows (both halves of guidance counted) with nothing tracking gradients, one kernel:
/// the norm's output never leaves the chip and no launch separates it from the projection.
/// Otherwise the two ops.
std::pair<torch::Tensor, torch::Tensor> add_rms_norm_modulate_linear(
    const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight,
    double eps, bool residual_in_fp32, const torch::Tensor& shift, const torch::Tensor& scale,
    const torch::Tensor& hidden_gate, const torch::Tensor& linear_weight,
    const torch::Tensor& linear_bias);

/// Mamba2's gated RMSNorm over groups of `group_size` channels: with norm_before_gate false,
/// y = rms_group(x * silu(z)) * weight; with true, y = rms_group(x) * weight * silu(z).
/// z may be undefined (no gate). x, z [..., E], weight [E], E % group_size == 0.
torch::Tensor gated_rms_norm(const torch::Tensor& x, const torch::Tensor& z,
                             const torch::Tensor& weight, int64_t group_size, double eps,
                             bool norm_before_gate);

namespace ref {
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);
std::pair<torch::Tensor, torch::Tensor> add_rms_norm(const torch::Tensor& hidden,
                                                     const torch::Tensor& residual,
                                                     const torch::Tensor& weight, double eps,
                                                     bool residual_in_fp32);
std::pair<torch::Tensor, torch::Tensor> add_rms_norm_modulate(
    const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight,
    double eps, bool residual_in_fp32, const torch::Tensor& shift, const torch::Tensor& scale,
    const torch::Tensor& hidden_gate = {});
/// hidden_gate * hidden, with the gate [B, D] broadcast over L for hidden [B, L, D].
torch::Tensor gate_hidden(const torch::Tensor& hidden, const torch::Tensor& hidden_gate);
torch::Tensor gated_rms_norm(const torch::Tensor& x, const torch::Tensor& z,
                             const torch::Tensor& weight, int64_t group_size, double eps,
                             bool norm_before_gate);
}  // namespace ref

}  // namespace aim::ops
