#pragma once
// CUDA adapter of the fused next-token kernel (kernels/sample_tokens.h).
#include <torch/types.h>

#include "ops/cuda_ns.h"

#include <cstdint>

namespace aim::ops::AIM_OPS_CUDA_NS {

/// cond (uncond) CUDA fp32 or bf16 [B, V] on one device, valid temperature, top_k and top_p,
/// (V, top_k) within the kernel's limits and its shared memory within the device's.
bool sample_tokens_keyed_supported(const torch::Tensor& cond, const torch::Tensor& uncond,
                                   double temperature, int64_t top_k, double top_p);

/// tokens [B] int64 on cond's device, launched on the current stream. The step is read on the
/// device from `step` (one int64 on cond's device) when defined, else it is `step_value`.
/// `uniforms`, when defined (fp64 [B], contiguous, on cond's device), gets each row's uniform.
torch::Tensor sample_tokens_keyed(const torch::Tensor& cond, const torch::Tensor& uncond,
                                  double cfg, double temperature, int64_t top_k, double top_p,
                                  uint64_t seed, const torch::Tensor& sample_ids,
                                  int64_t step_value, const torch::Tensor& step,
                                  const torch::Tensor& uniforms = torch::Tensor());

}  // namespace aim::ops::AIM_OPS_CUDA_NS
