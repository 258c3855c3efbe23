#pragma once
// Parameters of Mamba2's fused one-token step: the conv update, the SSD state update and the
// gated RMSNorm between in_proj and out_proj, in one launch. Raw pointers, sizes and strides (in
// elements); no LibTorch types.
#include <cstdint>

#include <cuda_runtime.h>

#include "ssd_state_update.h"  // ElemType

namespace aim::kernels {

constexpr int kSsdStepMaxHeaddim = 256;
constexpr int kSsdStepMaxDstate = 256;
constexpr int kSsdStepMaxWidth = 8;
/// Most blocks a head is split over (blocks of at least 16 state rows).
constexpr int kSsdStepMaxSplits = kSsdStepMaxHeaddim / 16;

struct SsdStepParams {
  int batch = 0, nheads = 0, headdim = 0, dstate = 0, ngroups = 0;
  int width = 0;            ///< conv taps, 1..kSsdStepMaxWidth
  int norm_group_size = 0;  ///< channels per gated-norm group; divides E = nheads * headdim
  // Slices of the in_proj output row (z | x B C | dt), element type T, unit channel stride.
  const void* z = nullptr;    ///< [B, E]
  const void* xbc = nullptr;  ///< [B, E + 2GN]: the conv's input for x, B and C
  const void* dt = nullptr;   ///< [B, H]
  int64_t z_batch_stride = 0, xbc_batch_stride = 0, dt_batch_stride = 0;
  void* conv_state = nullptr;  ///< [B, E + 2GN, W] in conv_state_type, unit stride along W
  int64_t conv_state_batch_stride = 0, conv_state_c_stride = 0;
  ElemType conv_state_type = ElemType::kFloat32;
  const void* conv_weight = nullptr;  ///< [E + 2GN, W] in conv_weight_type, contiguous
  const void* conv_bias = nullptr;    ///< [E + 2GN] in conv_weight_type; may be null
  ElemType conv_weight_type = ElemType::kFloat32;
  void* ssm_state = nullptr;  ///< [B, H, P, N] in ssm_state_type, contiguous; updated in place
  ElemType ssm_state_type = ElemType::kFloat32;
  const float* A = nullptr;        ///< [H]
  const float* D = nullptr;        ///< [H] or [H, P]; may be null
  const float* dt_bias = nullptr;  ///< [H]; may be null
  bool d_per_channel = false;
  bool dt_softplus = true;
  const void* norm_weight = nullptr;  ///< [E] in norm_weight_type
  ElemType norm_weight_type = ElemType::kFloat32;
  float eps = 1e-5f;
  bool norm_before_gate = false;
  void* out = nullptr;  ///< [B, E] in T, contiguous
  /// State rows a warp loads before it updates them: 1, 2 or 4; 0 takes 2 for an fp32 state
  /// and 4 for a bf16 one (1 KiB per warp in flight at N = 128). The same results for each.
  int rows_in_flight = 0;
  /// [B], zero before the launch: each block of a sequence counts itself in; the last one to
  /// arrive finishes the sequence and sets its counter back to zero.
  unsigned* arrivals = nullptr;
  /// [B, nheads * kSsdStepMaxSplits] scratch: each block's sum of squares of its gated y, which
  /// the last block adds up instead of reading the row twice (when a block's rows lie in one
  /// norm group). Nothing is kept between launches.
  float* norm_partials = nullptr;
  /// Launch as a programmatic dependent of the stream's previous kernel (grid_dependency.cuh):
  /// the block's state rows are fetched into L2 while that kernel finishes. Only when that
  /// kernel (and any other not yet complete) does not write ssm_state.
  bool dependent_launch = false;
};

/// Launches on `stream`; z, xbc, dt and out share `dtype`. Returns the launch status
/// (cudaErrorInvalidValue for sizes outside the limits above).
cudaError_t ssd_step_cuda(const SsdStepParams& params, ElemType dtype, cudaStream_t stream);

}  // namespace aim::kernels
