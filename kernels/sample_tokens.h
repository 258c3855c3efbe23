#pragma once
// Parameters of the fused next-token kernel: classifier-free guidance combine, temperature,
// top-k, top-p and the inverse-CDF draw with a uniform keyed by (seed, sample, step) computed
// on the device. Raw pointers, sizes and strides (in elements); no LibTorch types. The math,
// the tie rule and the agreement with ops::ref::sample_tokens are in sample_tokens_kernel.cuh.
#include <cstdint>

#include <cuda_runtime.h>

#include "ssd_state_update.h"  // ElemType

namespace aim::kernels {

/// Largest k of a top-k filter (1 < k < vocab) the kernel takes; larger k: the reference.
constexpr int kSampleMaxTopK = 1024;
/// Largest vocabulary of the filtered and sampled modes (the row lives in shared memory as
/// fp32); greedy rows (top_k = 1) have no limit.
constexpr int kSampleMaxVocab = 32768;
/// Upper bound of the kernel's static shared memory, to which the row's vocab * 4 bytes add.
constexpr int kSampleStaticSmemBytes = 26 * 1024;

struct SampleTokensParams {
  int rows = 0, vocab = 0;
  const void* cond = nullptr;            ///< [B, V] fp32 or bf16 logits, unit column stride
  int64_t cond_row_stride = 0;           ///< >= 0 (0: one row broadcast to every row)
  const void* uncond = nullptr;          ///< [B, V] same dtype; null: no guidance
  int64_t uncond_row_stride = 0;
  float cfg = 1.f;                       ///< guidance scale, rounded to fp32 as ATen does
  float temperature = 1.f;               ///< > 0, rounded to fp32 as ATen does
  int top_k = 0;                         ///< 0 (or >= vocab): all; 1: argmax
  double top_p = 1.0;                    ///< in (0, 1]
  uint64_t seed = 0;
  const int64_t* sample_ids = nullptr;   ///< [B] global sample indices; may be null with top_k 1
  int64_t step = 0;                      ///< generation step, when step_ptr is null
  const int64_t* step_ptr = nullptr;     ///< device scalar read instead of `step` (CUDA graphs)
  int64_t* tokens = nullptr;             ///< [B] out
  double* uniforms = nullptr;            ///< [B] optional out: the uniform each row used
  /// Launch as a programmatic dependent of the stream's previous kernel (grid_dependency.cuh;
  /// the kernel reads nothing before its wait).
  bool dependent_launch = false;
};

/// True when the kernel takes (vocab, top_k); otherwise callers use the reference.
inline bool sample_tokens_supported(int64_t vocab, int64_t top_k) {
  if (vocab < 1 || vocab > INT32_MAX) return false;
  if (top_k == 1) return true;
  return vocab <= kSampleMaxVocab && (top_k <= kSampleMaxTopK || top_k >= vocab);
}

/// Dynamic plus static shared memory of a launch for `vocab`, to compare with the device's
/// opt-in limit per block.
inline int64_t sample_tokens_smem_bytes(int64_t vocab, int64_t top_k) {
  return top_k == 1 ? kSampleStaticSmemBytes : kSampleStaticSmemBytes + 4 * vocab;
}

/// One block per row. Launches on `stream`; returns the launch status (cudaErrorInvalidValue
/// for parameters outside sample_tokens_supported or out of range).
cudaError_t sample_tokens_cuda(const SampleTokensParams& params, ElemType dtype,
                               cudaStream_t stream);

}  // namespace aim::kernels
