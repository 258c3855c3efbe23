#pragma once
// CUDA adapter of the fused lm_head + cross-entropy: an autograd function that runs the
// projection chunk by chunk through cuBLAS and kernels/cross_entropy.h in between.
#include <torch/types.h>

#include "ops/cuda_ns.h"

namespace aim::ops::AIM_OPS_CUDA_NS {

/// CUDA hidden/weight/targets on one device, hidden fp32 or bf16.
bool linear_cross_entropy_supported(const torch::Tensor& hidden, const torch::Tensor& weight,
                                    const torch::Tensor& targets);

torch::Tensor linear_cross_entropy(const torch::Tensor& hidden, const torch::Tensor& weight,
                                   const torch::Tensor& targets, int64_t ignore_index,
                                   int64_t chunk_rows);

}  // namespace aim::ops::AIM_OPS_CUDA_NS
