#pragma once
// Parameters of the causal depthwise conv1d kernels (Mamba's short convolution), forward and
// backward. Raw pointers, sizes and strides (in elements); no LibTorch types.
//
//   pre[b, c, t] = bias[c] + sum_k weight[c, k] * x[b, c, t - (W - 1) + k]   (x = 0 before t = 0)
//   out          = silu(pre) when `silu`, else pre
#include <cstdint>

#include <cuda_runtime.h>

#include "ssd_state_update.h"  // ElemType

namespace aim::kernels {

struct CausalConv1dParams {
  int batch = 0, channels = 0, len = 0, width = 0;  ///< width 1..8
  const void* x = nullptr;                          ///< [B, C, L] in the element type
  int64_t x_batch_stride = 0, x_c_stride = 0, x_l_stride = 0;
  const float* weight = nullptr;                    ///< [C, W] fp32, contiguous
  const float* bias = nullptr;                      ///< [C] fp32; may be null
  bool silu = true;

  // Forward.
  void* out = nullptr;                              ///< [B, C, L] in the element type
  int64_t out_batch_stride = 0, out_c_stride = 0, out_l_stride = 0;

  // Backward.
  const void* dout = nullptr;                       ///< [B, C, L] in the element type
  int64_t dout_batch_stride = 0, dout_c_stride = 0, dout_l_stride = 0;
  void* dx = nullptr;                               ///< [B, C, L] in the element type
  int64_t dx_batch_stride = 0, dx_c_stride = 0, dx_l_stride = 0;
  float* dweight = nullptr;    ///< [C, W] fp32
  float* dbias = nullptr;      ///< [C] fp32; may be null
  float* workspace = nullptr;  ///< causal_conv1d_bwd_workspace_size floats
};

/// out from x. Launches on `stream`; returns the launch status.
cudaError_t causal_conv1d_fwd_cuda(const CausalConv1dParams& params, ElemType dtype,
                                   cudaStream_t stream);

/// dx, dweight and dbias from x and dout (the pre-activation is recomputed). Three launches;
/// deterministic (dweight and dbias are partial sums added in a fixed order).
cudaError_t causal_conv1d_bwd_cuda(const CausalConv1dParams& params, ElemType dtype,
                                   cudaStream_t stream);

/// fp32 elements of the backward's workspace for params with batch, channels, len and width set:
/// one partial row of dweight and dbias per (batch, chunk of 64 time steps).
int64_t causal_conv1d_bwd_workspace_size(const CausalConv1dParams& params);

/// One token of sampling: the window state[b, c, :] of the last W inputs shifts left by one, x
/// enters at W - 1, and out = silu(sum_k weight[c, k] * state[b, c, k] + bias[c]) (no silu when
/// `silu` is false). The sum is fp32 over the stored (rounded) window; out is rounded once.
struct CausalConv1dUpdateParams {
  int batch = 0, channels = 0, width = 0;  ///< width 1..8
  const void* x = nullptr;                 ///< [B, C] in the element type
  int64_t x_batch_stride = 0, x_c_stride = 0;
  void* state = nullptr;                   ///< [B, C, W] in state_type, unit stride along W
  int64_t state_batch_stride = 0, state_c_stride = 0;
  ElemType state_type = ElemType::kFloat32;
  const void* weight = nullptr;            ///< [C, W] in weight_type, contiguous
  const void* bias = nullptr;              ///< [C] in weight_type; may be null
  ElemType weight_type = ElemType::kFloat32;
  bool silu = true;
  void* out = nullptr;                     ///< [B, C] in the element type
  int64_t out_batch_stride = 0, out_c_stride = 0;
};

/// out and the shifted state. One launch; state, weight and bias may each be fp32 or bf16.
cudaError_t causal_conv1d_update_cuda(const CausalConv1dUpdateParams& params, ElemType dtype,
                                      cudaStream_t stream);

}  // namespace aim::kernels
