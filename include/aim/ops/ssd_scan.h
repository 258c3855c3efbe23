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

/// The parameters of Mamba2's one-token step (ssd_decode_step): what the mixer holds.
struct SsdDecodeWeights {
  torch::Tensor conv_weight;    ///< [C, 1, W] or [C, W], C = E + 2GN
  torch::Tensor conv_bias;      ///< [C] or undefined
  torch::Tensor A;              ///< [H]
  torch::Tensor D;              ///< [H], [H, P] or undefined
  torch::Tensor dt_bias;        ///< [H] or undefined
  torch::Tensor norm_weight;    ///< [E], the gated RMSNorm's
  int64_t ngroups = 1;          ///< G, the groups of B and C
  int64_t norm_group_size = 0;  ///< channels per gated-norm group (divides E)
  double eps = 1e-5;
  bool norm_before_gate = false;
};

/// Mamba2's step between in_proj and out_proj for one token (dt through softplus):
///   xBC = causal_conv1d_update(x B C of zxbcdt, conv_state, conv_weight, conv_bias, SiLU)
///   y   = ssd_state_update(ssm_state, x, dt, A, B, C, D, dt_bias)
///   out = gated_rms_norm(y, z, norm_weight, norm_group_size, eps, norm_before_gate)
/// zxbcdt [B, E + C + H] is the in_proj output (z | x B C | dt); conv_state [B, C, W] and
/// ssm_state [B, H, P, N] are updated in place. Returns out [B, E] in zxbcdt's dtype. On CUDA one
/// kernel does all three; `arrivals` (int32 [B], zeros, left at zero; a decoding state keeps one)
/// is its per-sequence counter, made for the call when undefined. Elsewhere the three ops run.
torch::Tensor ssd_decode_step(const torch::Tensor& zxbcdt, torch::Tensor& conv_state,
                              torch::Tensor& ssm_state, const SsdDecodeWeights& w,
                              const torch::Tensor& arrivals = {});

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
/// The three reference ops of ssd_decode_step, one after the other.
torch::Tensor ssd_decode_step(const torch::Tensor& zxbcdt, torch::Tensor& conv_state,
                              torch::Tensor& ssm_state, const SsdDecodeWeights& w);
}  // namespace ref

}  // namespace aim::ops
