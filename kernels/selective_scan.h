#pragma once
// Parameters of the Mamba1 selective-scan kernels: the parallel scan over a sequence (forward
// and backward) and the one-token state update of sampling. Raw pointers, sizes and strides
// (in elements); no LibTorch types. The math is in selective_scan_fwd_kernel.cuh,
// selective_scan_bwd_kernel.cuh and selective_scan_update_kernel.cuh.
#include <cstdint>

#include <cuda_runtime.h>

#include "ssd_state_update.h"  // ElemType

namespace aim::kernels {

/// Largest d_state the kernels take.
constexpr int kSelectiveScanMaxDstate = 256;
/// The forward keeps the state at the start of every kSelectiveScanChunk time steps for the
/// backward, which recomputes the states in between.
constexpr int kSelectiveScanChunk = 64;

/// u, delta, z, y, dout, du, ddelta, dz are [B, E, L] and B, C [B, N, L] in the element type,
/// with any strides (the kernels walk whichever of time or channel has unit stride); A [E, N],
/// D, delta_bias [E] and every state are fp32 and contiguous.
struct SelectiveScanParams {
  int batch = 0, channels = 0, len = 0, dstate = 0;
  bool delta_softplus = false;

  const void* u = nullptr;
  int64_t u_batch_stride = 0, u_c_stride = 0, u_l_stride = 0;
  const void* delta = nullptr;
  int64_t delta_batch_stride = 0, delta_c_stride = 0, delta_l_stride = 0;
  const void* z = nullptr;  ///< null: no gate
  int64_t z_batch_stride = 0, z_c_stride = 0, z_l_stride = 0;
  const void* Bm = nullptr;
  int64_t b_batch_stride = 0, b_n_stride = 0, b_l_stride = 0;
  const void* Cm = nullptr;
  int64_t c_batch_stride = 0, c_n_stride = 0, c_l_stride = 0;
  const float* A = nullptr;              ///< [E, N]
  const float* D = nullptr;              ///< [E]; may be null
  const float* delta_bias = nullptr;     ///< [E]; may be null
  const float* initial_state = nullptr;  ///< [B, E, N]; null: zeros

  // Forward.
  void* y = nullptr;
  int64_t y_batch_stride = 0, y_c_stride = 0, y_l_stride = 0;
  float* last_state = nullptr;    ///< [B, E, N]; may be null
  float* chunk_states = nullptr;  ///< [B, E, selective_scan_chunks(L), N]; null: not kept

  // Backward (reads the forward's chunk_states).
  const void* dout = nullptr;
  int64_t dout_batch_stride = 0, dout_c_stride = 0, dout_l_stride = 0;
  const float* dlast_state = nullptr;  ///< [B, E, N]; may be null (zeros)
  void* du = nullptr;
  int64_t du_batch_stride = 0, du_c_stride = 0, du_l_stride = 0;
  void* ddelta = nullptr;
  int64_t ddelta_batch_stride = 0, ddelta_c_stride = 0, ddelta_l_stride = 0;
  void* dz = nullptr;  ///< with z only
  int64_t dz_batch_stride = 0, dz_c_stride = 0, dz_l_stride = 0;
  float* dinitial_state = nullptr;  ///< [B, E, N]; may be null
  float* dA = nullptr;              ///< [E, N]
  float* dD = nullptr;              ///< [E]; with D only
  float* ddelta_bias = nullptr;     ///< [E]; with delta_bias only
  float* dB = nullptr;              ///< [B, L, N] (n fastest)
  float* dC = nullptr;              ///< [B, L, N] (n fastest)
  int bwd_groups_per_block = 0;     ///< from selective_scan_bwd_groups_per_block
  float* workspace = nullptr;       ///< selective_scan_bwd_workspace_size floats
};

/// Number of kept states per (batch, channel): ceil(L / kSelectiveScanChunk).
int selective_scan_chunks(int len);

/// y, and last_state and chunk_states where set. One launch.
cudaError_t selective_scan_fwd_cuda(const SelectiveScanParams& params, ElemType dtype,
                                    cudaStream_t stream);

/// du, ddelta, dz, dinitial_state, dA, dD, ddelta_bias, dB and dC from dout (and dlast_state),
/// the inputs and the forward's chunk_states. Two launches; deterministic (no atomics).
cudaError_t selective_scan_bwd_cuda(const SelectiveScanParams& params, ElemType dtype,
                                    cudaStream_t stream);

/// Channel groups one backward block walks: enough blocks to fill the current device, with
/// the per-block partial sums of dB and dC kept under a fixed workspace budget.
int selective_scan_bwd_groups_per_block(const SelectiveScanParams& params);

/// fp32 elements of the backward workspace, for params with the sizes and
/// bwd_groups_per_block set.
int64_t selective_scan_bwd_workspace_size(const SelectiveScanParams& params);

/// One token: u, delta, z, y [B, E] and B, C [B, N] in the element type, any strides; state
/// [B, E, N] in state_type (fp32 or bf16) with unit stride along N.
struct SelectiveStateUpdateParams {
  int batch = 0, channels = 0, dstate = 0;
  bool delta_softplus = false;
  void* state = nullptr;  ///< updated in place
  ElemType state_type = ElemType::kFloat32;  ///< fp32, or bf16 (half the state traffic)
  int64_t state_batch_stride = 0, state_c_stride = 0;
  const void* u = nullptr;
  int64_t u_batch_stride = 0, u_c_stride = 0;
  const void* delta = nullptr;
  int64_t delta_batch_stride = 0, delta_c_stride = 0;
  const void* z = nullptr;  ///< null: no gate
  int64_t z_batch_stride = 0, z_c_stride = 0;
  const void* Bm = nullptr;
  int64_t b_batch_stride = 0, b_n_stride = 0;
  const void* Cm = nullptr;
  int64_t c_batch_stride = 0, c_n_stride = 0;
  const float* A = nullptr;           ///< [E, N]
  const float* D = nullptr;           ///< [E]; may be null
  const float* delta_bias = nullptr;  ///< [E]; may be null
  void* y = nullptr;
  int64_t y_batch_stride = 0, y_c_stride = 0;
};

/// y and the new state. One launch; the math is fp32 whatever the state's type (a bf16 state is
/// rounded once per step, when stored; y uses the unrounded values).
cudaError_t selective_state_update_cuda(const SelectiveStateUpdateParams& params, ElemType dtype,
                                        cudaStream_t stream);

}  // namespace aim::kernels
