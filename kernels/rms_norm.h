#pragma once
// Parameters of the RMS norm kernels of the AiM block, forward and backward: the block input's
// fused residual add + RMSNorm + adaLN modulate, and Mamba2's gated group RMSNorm. Raw
// pointers, sizes and strides (in elements); no LibTorch types. The math is in
// rms_norm_kernel.cuh.
#include <cstdint>

#include <cuda_runtime.h>

#include "ssd_state_update.h"  // ElemType

namespace aim::kernels {

/// Largest row (add_rms_norm) or group (gated_rms_norm) the kernels take.
constexpr int kRmsNormMaxDim = 8192;
/// Largest row of add_rms_norm's backward with a hidden_gate.
constexpr int kRmsNormMaxGatedBwdDim = kRmsNormMaxDim / 2;

/// Rows n of [N, D]; with modulation, rows n of one sequence b = n / rows_per_batch share
/// shift[b] and scale[b] (and hidden_gate[b]). Element types: `in` for hidden, out, dout,
/// dhidden; `res` for residual, residual_out, dresidual_out, dresidual. Rows not given a stride
/// are contiguous.
struct AddRmsNormParams {
  int rows = 0, dim = 0;
  int rows_per_batch = 0;           ///< rows per shift/scale/gate row; read only with one set
  float eps = 1e-5f;
  const void* weight = nullptr;     ///< [D] in weight_type
  const void* shift = nullptr;      ///< [N / rows_per_batch, D] in mod_type; forward only
  const void* scale = nullptr;      ///< [N / rows_per_batch, D] in mod_type; null: no modulation
  ElemType weight_type = ElemType::kFloat32;  ///< fp32 or bf16 (read as it is stored)
  ElemType mod_type = ElemType::kFloat32;     ///< shift and scale: fp32 or bf16

  // Forward.
  const void* hidden = nullptr;     ///< [N, D] in
  int64_t hidden_row_stride = 0;
  /// [N / rows_per_batch, D] in gate_type, contiguous; null: none. The row read is
  /// hidden * hidden_gate[b] (the AiM block's gated output), rounded to bf16 when both are bf16
  /// (ATen's product type); the backward reads hidden and the gate again.
  const void* hidden_gate = nullptr;
  ElemType gate_type = ElemType::kFloat32;  ///< fp32, or bf16 with a bf16 `in`
  const void* residual = nullptr;   ///< [N, D] res; null: residual_out = hidden
  int64_t residual_row_stride = 0;
  void* out = nullptr;              ///< [N, D] in
  void* residual_out = nullptr;     ///< [N, D] res; read again by the backward
  float* rstd = nullptr;            ///< [N]; read again by the backward
  /// Forward: launch as a programmatic dependent of the stream's previous kernel
  /// (grid_dependency.cuh; the kernel reads nothing before its wait). norm_linear_cuda has its
  /// own flag.
  bool dependent_launch = false;

  // Backward.
  const void* dout = nullptr;           ///< [N, D] in
  int64_t dout_row_stride = 0;
  const void* dresidual_out = nullptr;  ///< [N, D] res; may be null
  int64_t dresidual_out_row_stride = 0;
  void* dhidden = nullptr;              ///< [N, D] in; may be null
  void* dresidual = nullptr;            ///< [N, D] res; may be null
  float* dweight = nullptr;             ///< [D]
  float* dshift = nullptr;              ///< [N / rows_per_batch, D]; with scale only
  float* dscale = nullptr;              ///< [N / rows_per_batch, D]; with scale only
  float* dgate = nullptr;               ///< [N / rows_per_batch, D]; with hidden_gate only
  int rows_per_chunk = 0;               ///< from rms_norm_bwd_rows_per_chunk
  float* workspace = nullptr;           ///< add_rms_norm_bwd_workspace_size floats
};

/// Rows n of [N, E], groups of group_size channels; the element type is that of x, z, out,
/// dout, dx and dz. Rows not given a stride are contiguous.
struct GatedRmsNormParams {
  int rows = 0, dim = 0, group_size = 0;
  float eps = 1e-5f;
  bool norm_before_gate = false;
  const void* weight = nullptr;     ///< [E] in weight_type
  ElemType weight_type = ElemType::kFloat32;  ///< fp32 or bf16 (read as it is stored)
  const void* x = nullptr;          ///< [N, E]
  int64_t x_row_stride = 0;
  const void* z = nullptr;          ///< [N, E]; null: no gate
  int64_t z_row_stride = 0;

  // Forward.
  void* out = nullptr;              ///< [N, E]
  float* rstd = nullptr;            ///< [N, E / group_size]; read again by the backward

  // Backward.
  const void* dout = nullptr;       ///< [N, E]
  int64_t dout_row_stride = 0;
  void* dx = nullptr;               ///< [N, E]; may be null
  int64_t dx_row_stride = 0;        ///< >= E with dx
  void* dz = nullptr;               ///< [N, E]; may be null, null without z
  int64_t dz_row_stride = 0;        ///< >= E with dz
  float* dweight = nullptr;         ///< [E]
  int rows_per_chunk = 0;           ///< from rms_norm_bwd_rows_per_chunk
  float* workspace = nullptr;       ///< gated_rms_norm_bwd_workspace_size floats
};

/// out, residual_out and rstd. `in` is fp32 or bf16; `res` fp32, or bf16 with a bf16 `in`.
cudaError_t add_rms_norm_fwd_cuda(const AddRmsNormParams& params, ElemType in, ElemType res,
                                  cudaStream_t stream);

/// dhidden, dresidual (the gradient of residual_out; dhidden times the gate with one), dweight
/// and, with scale, dshift and dscale, with hidden_gate dgate. Two launches; deterministic.
cudaError_t add_rms_norm_bwd_cuda(const AddRmsNormParams& params, ElemType in, ElemType res,
                                  cudaStream_t stream);

/// out and rstd.
cudaError_t gated_rms_norm_fwd_cuda(const GatedRmsNormParams& params, ElemType dtype,
                                    cudaStream_t stream);

/// dx, dz and dweight. Two launches; deterministic.
cudaError_t gated_rms_norm_bwd_cuda(const GatedRmsNormParams& params, ElemType dtype,
                                    cudaStream_t stream);

/// Rows one block of a backward pass walks, summing dweight (dshift, dscale) into one partial
/// row: enough blocks for 4 per SM of the current device, and at least 4 rows per block.
int rms_norm_bwd_rows_per_chunk(int64_t rows);

/// fp32 elements of the backward workspaces, for params with rows, dim (group_size),
/// rows_per_batch, scale and rows_per_chunk set.
int64_t add_rms_norm_bwd_workspace_size(const AddRmsNormParams& params);
int64_t gated_rms_norm_bwd_workspace_size(const GatedRmsNormParams& params);

}  // namespace aim::kernels
