// Checks and dispatch for the Mamba1 selective scan ops: the CUDA kernels for CUDA tensors they
// support (unless turned off, aim/ops/dispatch.h), the reference otherwise.
#include "aim/ops/selective_scan.h"

#include <torch/torch.h>

#include "aim/ops/dispatch.h"
#include "ops/kernel_table.h"
#ifdef AIM_WITH_CUDA
#include "ops/selective_scan_cuda.h"
#endif

namespace aim::ops {

namespace {
void check_channel_params(const torch::Tensor& A, const torch::Tensor& D,
                          const torch::Tensor& delta_bias, int64_t channels, const char* op) {
  TORCH_CHECK(A.dim() == 2 && A.size(0) == channels, op, ": A must be [E, N] with E = ",
              channels, ", got ", A.sizes());
  if (D.defined()) {
    TORCH_CHECK(D.dim() == 1 && D.size(0) == channels, op, ": D must be [", channels,
                "], got ", D.sizes());
  }
  if (delta_bias.defined()) {
    TORCH_CHECK(delta_bias.dim() == 1 && delta_bias.size(0) == channels, op,
                ": delta_bias must be [", channels, "], got ", delta_bias.sizes());
  }
}
}  // namespace

SelectiveScanResult selective_scan(const torch::Tensor& u, const torch::Tensor& delta,
                                   const torch::Tensor& A, const torch::Tensor& Bm,
                                   const torch::Tensor& Cm, const torch::Tensor& D,
                                   const torch::Tensor& z, const torch::Tensor& delta_bias,
                                   bool delta_softplus, const torch::Tensor& initial_state,
                                   bool return_last_state) {
  TORCH_CHECK(u.dim() == 3, "selective_scan: u must be [B, E, L], got ", u.sizes());
  TORCH_CHECK(delta.sizes() == u.sizes(), "selective_scan: delta ", delta.sizes(), " != u ",
              u.sizes());
  const int64_t batch = u.size(0), channels = u.size(1), len = u.size(2);
  check_channel_params(A, D, delta_bias, channels, "selective_scan");
  const int64_t dstate = A.size(1);
  TORCH_CHECK(Bm.dim() == 3 && Bm.size(0) == batch && Bm.size(1) == dstate && Bm.size(2) == len,
              "selective_scan: B must be [", batch, ", ", dstate, ", ", len, "], got ",
              Bm.sizes());
  TORCH_CHECK(Cm.sizes() == Bm.sizes(), "selective_scan: C ", Cm.sizes(), " != B ", Bm.sizes());
  if (z.defined()) {
    TORCH_CHECK(z.sizes() == u.sizes(), "selective_scan: z ", z.sizes(), " != u ", u.sizes());
  }
  if (initial_state.defined()) {
    TORCH_CHECK(initial_state.dim() == 3 && initial_state.size(0) == batch &&
                    initial_state.size(1) == channels && initial_state.size(2) == dstate,
                "selective_scan: initial_state must be [", batch, ", ", channels, ", ", dstate,
                "], got ", initial_state.sizes());
  }
#ifdef AIM_WITH_CUDA
  if (u.is_cuda() && cuda_kernels_enabled() &&
      cuda::selective_scan_supported(u, delta, A, Bm, Cm, D, z, delta_bias, initial_state)) {
    return cuda::selective_scan(u, delta, A, Bm, Cm, D, z, delta_bias, delta_softplus,
                                initial_state, return_last_state);
  }
#endif
  if (const auto* k = emulated_kernels_for(u);
      k && k->selective_scan_supported(u, delta, A, Bm, Cm, D, z, delta_bias, initial_state)) {
    return k->selective_scan(u, delta, A, Bm, Cm, D, z, delta_bias, delta_softplus, initial_state,
                             return_last_state);
  }
  return ref::selective_scan(u, delta, A, Bm, Cm, D, z, delta_bias, delta_softplus,
                             initial_state, return_last_state);
}

torch::Tensor selective_state_update(torch::Tensor& state, const torch::Tensor& u,
                                     const torch::Tensor& delta, const torch::Tensor& A,
                                     const torch::Tensor& Bm, const torch::Tensor& Cm,
                                     const torch::Tensor& D, const torch::Tensor& z,
                                     const torch::Tensor& delta_bias, bool delta_softplus) {
  TORCH_CHECK(u.dim() == 2, "selective_state_update: u must be [B, E], got ", u.sizes());
  TORCH_CHECK(delta.sizes() == u.sizes(), "selective_state_update: delta ", delta.sizes(),
              " != u ", u.sizes());
  const int64_t batch = u.size(0), channels = u.size(1);
  check_channel_params(A, D, delta_bias, channels, "selective_state_update");
  const int64_t dstate = A.size(1);
  TORCH_CHECK(Bm.dim() == 2 && Bm.size(0) == batch && Bm.size(1) == dstate,
              "selective_state_update: B must be [", batch, ", ", dstate, "], got ", Bm.sizes());
  TORCH_CHECK(Cm.sizes() == Bm.sizes(), "selective_state_update: C ", Cm.sizes(), " != B ",
              Bm.sizes());
  TORCH_CHECK(state.dim() == 3 && state.size(0) == batch && state.size(1) == channels &&
                  state.size(2) == dstate &&
                  (state.scalar_type() == torch::kFloat || state.scalar_type() == torch::kBFloat16),
              "selective_state_update: state must be fp32 or bf16 [", batch, ", ", channels, ", ", dstate,
              "], got ", state.scalar_type(), " ", state.sizes());
  if (z.defined()) {
    TORCH_CHECK(z.sizes() == u.sizes(), "selective_state_update: z ", z.sizes(), " != u ",
                u.sizes());
  }
#ifdef AIM_WITH_CUDA
  if (u.is_cuda() && cuda_kernels_enabled() &&
      cuda::selective_state_update_supported(state, u, delta, A, Bm, Cm, D, z, delta_bias)) {
    return cuda::selective_state_update(state, u, delta, A, Bm, Cm, D, z, delta_bias,
                                        delta_softplus);
  }
#endif
  if (const auto* k = emulated_kernels_for(u);
      k && k->selective_state_update_supported(state, u, delta, A, Bm, Cm, D, z, delta_bias)) {
    return k->selective_state_update(state, u, delta, A, Bm, Cm, D, z, delta_bias,
                                     delta_softplus);
  }
  return ref::selective_state_update(state, u, delta, A, Bm, Cm, D, z, delta_bias,
                                     delta_softplus);
}

}  // namespace aim::ops
