#pragma once
// CUDA adapters of the Mamba1 selective-scan ops: an autograd function over
// kernels/selective_scan.h for the scan, and the one-token state update.
#include <torch/types.h>

#include "ops/cuda_ns.h"

#include "aim/ops/selective_scan.h"

namespace aim::ops::AIM_OPS_CUDA_NS {

/// Whether the kernels handle these tensors: CUDA, every tensor on u's device, u fp32 or bf16
/// with delta, B, C and z of u's dtype, A / D / delta_bias / initial_state floating point,
/// 1 <= N <= 256, B <= 65535, sizes that fit an int. Otherwise the reference runs. D, z,
/// delta_bias and initial_state may be undefined.
bool selective_scan_supported(const torch::Tensor& u, const torch::Tensor& delta,
                              const torch::Tensor& A, const torch::Tensor& Bm,
                              const torch::Tensor& Cm, const torch::Tensor& D,
                              const torch::Tensor& z, const torch::Tensor& delta_bias,
                              const torch::Tensor& initial_state);

/// ops::selective_scan on the kernels, differentiable in every tensor (through last_state too).
/// u, delta, z [B, E, L] and B, C [B, N, L] with any strides (channel-last is the mixer's
/// layout); y takes u's layout. Without gradients to track, no chunk states are kept.
SelectiveScanResult selective_scan(const torch::Tensor& u, const torch::Tensor& delta,
                                   const torch::Tensor& A, const torch::Tensor& Bm,
                                   const torch::Tensor& Cm, const torch::Tensor& D,
                                   const torch::Tensor& z, const torch::Tensor& delta_bias,
                                   bool delta_softplus, const torch::Tensor& initial_state,
                                   bool return_last_state);

/// Whether the kernel handles this step: as selective_scan_supported, state fp32 [B, E, N] with
/// unit stride along N, and no gradient to track (the kernel is not differentiable).
bool selective_state_update_supported(const torch::Tensor& state, const torch::Tensor& u,
                                      const torch::Tensor& delta, const torch::Tensor& A,
                                      const torch::Tensor& Bm, const torch::Tensor& Cm,
                                      const torch::Tensor& D, const torch::Tensor& z,
                                      const torch::Tensor& delta_bias);

/// ops::selective_state_update on the kernel: state [B, E, N] updated in place, u/delta/z
/// [B, E], B/C [B, N]; returns y [B, E] in u's dtype.
torch::Tensor selective_state_update(torch::Tensor& state, const torch::Tensor& u,
                                     const torch::Tensor& delta, const torch::Tensor& A,
                                     const torch::Tensor& Bm, const torch::Tensor& Cm,
                                     const torch::Tensor& D, const torch::Tensor& z,
                                     const torch::Tensor& delta_bias, bool delta_softplus);

}  // namespace aim::ops::AIM_OPS_CUDA_NS
