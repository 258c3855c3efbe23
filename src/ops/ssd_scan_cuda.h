#pragma once
// CUDA adapters of the SSD ops: fill the kernels' params structs from tensors.
#include <torch/types.h>

#include "ops/cuda_ns.h"

#include "aim/ops/ssd_scan.h"

namespace aim::ops::AIM_OPS_CUDA_NS {

/// Whether the chunked scan kernels handle these tensors (CUDA; x, dt, B, C all fp32 or all
/// bf16; every tensor on x's device; d_state <= 256; batch and heads <= 65535; L >= 1);
/// otherwise the reference runs. D, dt_bias and initial_state may be undefined.
bool ssd_scan_supported(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                        const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D,
                        const torch::Tensor& dt_bias, const torch::Tensor& initial_state);

/// Heads per thread block cluster in the backward for x [B, L, H, P] and B [B, L, G, N] on this
/// device (kernels/ssd_scan.h; AIM_SSD_BWD_CLUSTER sets the largest allowed).
int ssd_scan_bwd_cluster_heads(const torch::Tensor& x, const torch::Tensor& Bm);

/// ops::ssd_scan on the kernels, differentiable in x, dt, A, B, C, D and dt_bias (not in
/// initial_state). The kernels use their own chunk (kernels::kSsdChunk); the op's chunk_size
/// only changes rounding, so it is not an argument here.
SsdScanResult ssd_scan(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                       const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D,
                       const torch::Tensor& dt_bias, bool dt_softplus,
                       const torch::Tensor& initial_state, bool return_final_state);

/// Whether the kernel handles these tensors (dtypes, layouts); otherwise the reference runs.
bool ssd_state_update_supported(const torch::Tensor& state, const torch::Tensor& x,
                                const torch::Tensor& Bm, const torch::Tensor& D);

torch::Tensor ssd_state_update(torch::Tensor& state, const torch::Tensor& x,
                               const torch::Tensor& dt, const torch::Tensor& A,
                               const torch::Tensor& Bm, const torch::Tensor& Cm,
                               const torch::Tensor& D, const torch::Tensor& dt_bias,
                               bool dt_softplus);

/// Whether the fused step kernel handles these tensors (dtypes, layouts, P and N <= 256, conv
/// width <= 8, no gradient asked); otherwise ops::ssd_decode_step runs its three ops.
bool ssd_decode_step_supported(const torch::Tensor& zxbcdt, const torch::Tensor& conv_state,
                               const torch::Tensor& ssm_state, const SsdDecodeWeights& w);

/// ops::ssd_decode_step on the fused kernel (arguments checked by the op).
torch::Tensor ssd_decode_step(const torch::Tensor& zxbcdt, torch::Tensor& conv_state,
                              torch::Tensor& ssm_state, const SsdDecodeWeights& w,
                              const torch::Tensor& arrivals);

}  // namespace aim::ops::AIM_OPS_CUDA_NS
