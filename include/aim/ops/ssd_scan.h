#pragma once
// Mamba2's selective state-space scan (SSD), parallel over a sequence and one token at a time.
//
// Per head h with A[h] < 0, group g = h / (H / G), and dt' = softplus(dt + dt_bias) (or
// dt + dt_bias without softplus):
//   state_t = exp(dt'_t * A) * state_{t-1} + dt'_t * x_t (outer) B_t      [P, N]
//   y_t     = state_t C_t + D * x_t                                      [P]
// Computed in fp32; outputs in x's dtype, states in fp32.
#include <torch/types.h>

#include <optional>
#include <utility>

namespace aim::ops {

struct SsdScanResult {
  torch::Tensor y;            ///< [B, L, H, P]
  torch::Tensor final_state;  ///< [B, H, P, N] fp32, only when asked
};

/// x [B, L, H, P], dt [B, L, H], A [H], Bm/Cm [B, L, G, N], D [H] or [H, P] or undefined,
/// dt_bias [H] or undefined, initial_state [B, H, P, N] or undefined.
/// `chunk_size` selects the blocking of the chunked algorithm; it does not change the result
/// beyond rounding.
SsdScanResult ssd_scan(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                       const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D,
                       const torch::Tensor& dt_bias, bool dt_softplus, int64_t chunk_size,
                       const torch::Tensor& initial_state = {}, bool return_final_state = false);

/// One token: state [B, H, P, N] fp32 or bf16 (updated in place; the math is fp32 and y uses
/// the new state before a bf16 state is rounded), x [B, H, P], dt [B, H], A [H], Bm/Cm
/// [B, G, N], D/dt_bias as above. Returns y [B, H, P] in x's dtype.
torch::Tensor ssd_state_update(torch::Tensor& state, const torch::Tensor& x,
                               const torch::Tensor& dt, const torch::Tensor& A,
                               const torch::Tensor& Bm, const torch::Tensor& Cm,
                               const torch::Tensor& D, const torch::Tensor& dt_bias,
                               bool dt_softplus);

namespace ref {
SsdScanResult ssd_scan(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                       const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D,
                       const torch::Tensor& dt_bias, bool dt_softplus, int64_t chunk_size,
                       const torch::Tensor& initial_state, bool return_final_state);
/// The recurrence above one step at a time: the oracle for the chunked algorithm.
SsdScanResult ssd_scan_sequential(const torch::Tensor& x, const torch::Tensor& dt,
                                  const torch::Tensor& A, const torch::Tensor& Bm,
                                  const torch::Tensor& Cm, const torch::Tensor& D,
                                  const torch::Tensor& dt_bias, bool dt_softplus,
                                  const torch::Tensor& initial_state);
torch::Tensor ssd_state_update(torch::Tensor& state, const torch::Tensor& x,
                               const torch::Tensor& dt, const torch::Tensor& A,
                               const torch::Tensor& Bm, const torch::Tensor& Cm,
                               const torch::Tensor& D, const torch::Tensor& dt_bias,
                               bool dt_softplus);
}  // namespace ref

}  // namespace aim::ops
