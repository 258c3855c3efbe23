#pragma once
// CPU kernel of Mamba2's gated RMSNorm (aim/ops/norms.h), forward and backward: one pass over
// each row for the forward and one for the backward, where the reference's composition of ATen
// ops (casts, silu, pow, mean, rsqrt, three multiplies and their autograd) makes a dozen. The
// reference stays the oracle (tests/ops/norms_cpu_test.cpp).
#include <torch/types.h>

namespace aim::ops::cpu {

/// Whether the kernel handles these tensors: x (and z) fp32 or bf16 on the CPU, weight on the CPU.
bool gated_rms_norm_supported(const torch::Tensor& x, const torch::Tensor& z, const torch::Tensor& weight);

/// ops::gated_rms_norm on the CPU kernel, differentiable in x, z and weight; computes in fp32,
/// returns y in x's dtype.
torch::Tensor gated_rms_norm(const torch::Tensor& x, const torch::Tensor& z, const torch::Tensor& weight,
                             int64_t group_size, double eps, bool norm_before_gate);

}  // namespace aim::ops::cpu
