#pragma once
// Mamba1's selective scan, parallel over a sequence and one token at a time.
//
// Per channel e with A[e, :] < 0 and delta' = softplus(delta + delta_bias):
//   state_t = exp(delta'_t * A[e]) * state_{t-1} + delta'_t * u_t * B_t    [N]
//   y_t     = <state_t, C_t> + D[e] * u_t, then y_t *= silu(z_t) when z is given.
// Computed in fp32; outputs in u's dtype, states in fp32.
#include <torch/types.h>

namespace aim::ops {

struct SelectiveScanResult {
  torch::Tensor y;           ///< [B, E, L]
  torch::Tensor last_state;  ///< [B, E, N] fp32, only when asked
};

/// u, delta [B, E, L], A [E, N], Bm/Cm [B, N, L], D [E] or undefined, z [B, E, L] or undefined,
/// delta_bias [E] or undefined, initial_state [B, E, N] or undefined.
SelectiveScanResult selective_scan(const torch::Tensor& u, const torch::Tensor& delta,
                                   const torch::Tensor& A, const torch::Tensor& Bm,
                                   const torch::Tensor& Cm, const torch::Tensor& D,
                                   const torch::Tensor& z, const torch::Tensor& delta_bias,
                                   bool delta_softplus, const torch::Tensor& initial_state = {},
                                   bool return_last_state = false);

/// One token: state [B, E, N] fp32 (updated in place), u/delta/z [B, E], Bm/Cm [B, N].
/// Returns y [B, E] in u's dtype.
torch::Tensor selective_state_update(torch::Tensor& state, const torch::Tensor& u,
                                     const torch::Tensor& delta, const torch::Tensor& A,
                                     const torch::Tensor& Bm, const torch::Tensor& Cm,
                                     const torch::Tensor& D, const torch::Tensor& z,
                                     const torch::Tensor& delta_bias, bool delta_softplus);

namespace ref {
SelectiveScanResult selective_scan(const torch::Tensor& u, const torch::Tensor& delta,
                                   const torch::Tensor& A, const torch::Tensor& Bm,
                                   const torch::Tensor& Cm, const torch::Tensor& D,
                                   const torch::Tensor& z, const torch::Tensor& delta_bias,
                                   bool delta_softplus, const torch::Tensor& initial_state,
                                   bool return_last_state);
torch::Tensor selective_state_update(torch::Tensor& state, const torch::Tensor& u,
                                     const torch::Tensor& delta, const torch::Tensor& A,
                                     const torch::Tensor& Bm, const torch::Tensor& Cm,
                                     const torch::Tensor& D, const torch::Tensor& z,
                                     const torch::Tensor& delta_bias, bool delta_softplus);
}  // namespace ref

}  // namespace aim::ops
