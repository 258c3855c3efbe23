#pragma once
// Causal depthwise conv1d (Mamba's short convolution), parallel and one-token forms.
#include <torch/types.h>

#include <utility>

namespace aim::ops {

/// x [B, C, L], weight [C, W] (or the module's [C, 1, W]), bias [C] or undefined.
/// out[b, c, t] = bias[c] + sum_k weight[c, k] * x[b, c, t - (W - 1) + k] (zero before t = 0),
/// then SiLU when `silu`. Returns {out [B, C, L], conv_state [B, C, W]}: the last W inputs
/// (left zero-padded when L < W), what causal_conv1d_update continues from. The state is only
/// computed when `return_state`.
std::pair<torch::Tensor, torch::Tensor> causal_conv1d(const torch::Tensor& x,
                                                      const torch::Tensor& weight,
                                                      const torch::Tensor& bias, bool silu,
                                                      bool return_state = false);

/// One token: x [B, C], conv_state [B, C, W] (updated in place: shifted left by one, x written
/// last). Returns out [B, C] = (silu)(bias + sum_k weight[c, k] * state'[b, c, k]).
torch::Tensor causal_conv1d_update(const torch::Tensor& x, torch::Tensor& conv_state,
                                   const torch::Tensor& weight, const torch::Tensor& bias,
                                   bool silu);

namespace ref {
/// The conv state after x [B, C, L]: its last `width` inputs, left zero-padded, contiguous.
torch::Tensor conv_state(const torch::Tensor& x, int64_t width);
std::pair<torch::Tensor, torch::Tensor> causal_conv1d(const torch::Tensor& x,
                                                      const torch::Tensor& weight,
                                                      const torch::Tensor& bias, bool silu,
                                                      bool return_state);
torch::Tensor causal_conv1d_update(const torch::Tensor& x, torch::Tensor& conv_state,
                                   const torch::Tensor& weight, const torch::Tensor& bias,
                                   bool silu);
}  // namespace ref

}  // namespace aim::ops
