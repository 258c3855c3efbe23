#pragma once
// Parameters of the decoding step's fused block input: add + RMSNorm + adaLN modulate (as
// add_rms_norm_fwd_cuda) followed by the mixer's in_proj, out = modulated @ weight^T + bias, for
// the few rows of a small sampling batch. Raw pointers, sizes and strides (in elements); no
// LibTorch types.
#include <cstdint>

#include <cuda_runtime.h>

#include "rms_norm.h"

namespace aim::kernels {

/// Most rows (sequences, both halves of classifier-free guidance counted) one launch takes:
/// past that the per-block norm and the shared-memory reads of the rows cost more than the
/// norm kernel's launch saves, and cuBLAS's GEMM runs the projection.
constexpr int kNormLinearMaxRows = 8;
/// Threads of a block; the norm keeps 8 elements of a row per thread, so d_model <= 2048.
constexpr int kNormLinearThreads = 256;
constexpr int kNormLinearMaxDim = 8 * kNormLinearThreads;

struct NormLinearParams {
  /// The norm: rows, dim, rows_per_batch, eps, weight, shift, scale, their types, hidden (row
  /// stride), hidden_gate, residual (row stride) and residual_out [rows, dim] (written by block
  /// 0). out and rstd are not used.
  AddRmsNormParams norm;
  int out_features = 0;          ///< N
  const void* weight = nullptr;  ///< [N, dim] in the input type, contiguous, 16-byte aligned
  const void* bias = nullptr;    ///< [N] in the input type; may be null
  void* out = nullptr;           ///< [rows, N] in the input type, contiguous
  /// Launch as a programmatic dependent of the stream's previous kernel (grid_dependency.cuh):
  /// the first weights are loaded while that kernel finishes. Only when that kernel does not
  /// write the weights.
  bool dependent_launch = false;
};

/// Launches on `stream`. `in` (hidden, hidden_gate, the linear weight, bias and out) is fp32 or
/// bf16; `res` (residual, residual_out) fp32, or bf16 with a bf16 `in`. Returns
/// cudaErrorInvalidValue for shapes the kernel does not take (norm_linear_supported false).
cudaError_t norm_linear_cuda(const NormLinearParams& params, ElemType in, ElemType res,
                             cudaStream_t stream);

/// Whether norm_linear_cuda takes rows x dim in `in`: 1..kNormLinearMaxRows rows, dim a
/// multiple of the 16-byte vector (8 bf16 or 4 fp32 elements) up to kNormLinearMaxDim, and the
/// rows in shared memory within the device's limit.
bool norm_linear_supported(int rows, int dim, ElemType in);

}  // namespace aim::kernels
