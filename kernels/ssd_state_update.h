#pragma once
// Parameters of the Mamba2 one-token state update kernel. Raw pointers, sizes and strides (in
// elements); no LibTorch types.
#include <cstdint>

#include <cuda_runtime.h>

namespace aim::kernels {

enum class ElemType { kFloat32, kBFloat16 };

struct SsdStateUpdateParams {
  int batch = 0, nheads = 0, headdim = 0, dstate = 0, ngroups = 0;
  void* state = nullptr;          ///< [B, H, P, N] in state_type, contiguous; updated in place
  ElemType state_type = ElemType::kFloat32;  ///< fp32, or bf16 (half the state traffic)
  const void* x = nullptr;        ///< [B, H, P]
  const void* dt = nullptr;       ///< [B, H]
  const void* Bm = nullptr;       ///< [B, G, N]
  const void* Cm = nullptr;       ///< [B, G, N]
  const float* A = nullptr;       ///< [H]
  const float* D = nullptr;       ///< [H] or [H, P]; may be null
  const float* dt_bias = nullptr; ///< [H]; may be null
  void* y = nullptr;              ///< [B, H, P]
  int64_t x_batch_stride = 0, x_head_stride = 0;
  int64_t dt_batch_stride = 0;
  int64_t b_batch_stride = 0, b_group_stride = 0;
  int64_t c_batch_stride = 0, c_group_stride = 0;
  int64_t y_batch_stride = 0, y_head_stride = 0;
  bool dt_softplus = true;
  bool d_per_channel = false;
};

/// Launches on `stream`; x, dt, B, C and y share `dtype`; the math is fp32 whatever the state's
/// type (a bf16 state is rounded once per step, when stored). Returns the launch status.
cudaError_t ssd_state_update_cuda(const SsdStateUpdateParams& params, ElemType dtype,
                                  cudaStream_t stream);

}  // namespace aim::kernels
