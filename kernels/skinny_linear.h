#pragma once
// Parameters of the decoding step's linear layers for a sampling batch's few rows: out = x
// weight^T (+ bias) in bf16 with fp32 sums, M <= kSkinnyLinearMaxRows rows. Raw pointers, sizes
// and strides (in elements); no LibTorch types.
#include <cstdint>

#include <cuda_runtime.h>

namespace aim::kernels {

/// Most rows one launch takes (a sampling batch of 32 images with guidance); larger batches run
/// cuBLAS's GEMM, whose tiles then fill the device.
constexpr int kSkinnyLinearMaxRows = 64;

struct SkinnyLinearParams {
  int rows = 0;                ///< M, 1..kSkinnyLinearMaxRows
  int in_features = 0;         ///< K, a multiple of 32
  int out_features = 0;        ///< N
  const void* x = nullptr;     ///< [M, K] bf16, unit last stride; rows 16-byte aligned
  int64_t x_row_stride = 0;    ///< a multiple of 8
  const void* weight = nullptr;  ///< [N, K] bf16, contiguous, 16-byte aligned
  const void* bias = nullptr;    ///< [N] bf16; may be null
  void* out = nullptr;           ///< [M, N] bf16, unit last stride
  int64_t out_row_stride = 0;
  /// Launch as a programmatic dependent of the stream's previous kernel (grid_dependency.cuh):
  /// the first weights are loaded while that kernel finishes. Only when that kernel does not
  /// write the weights.
  bool dependent_launch = false;
};

/// Launches on `stream`; cudaErrorInvalidValue for what skinny_linear_supported refuses.
cudaError_t skinny_linear_cuda(const SkinnyLinearParams& params, cudaStream_t stream);

/// Whether skinny_linear_cuda takes M x K -> N: 1 <= M <= kSkinnyLinearMaxRows, K a positive
/// multiple of 32, N >= 1 (the pointers' alignment is the caller's to check).
bool skinny_linear_supported(int rows, int in_features, int out_features);

}  // namespace aim::kernels
