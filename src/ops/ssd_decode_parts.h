#pragma once
// ssd_decode_step as its three ops, one after the other: the reference (with the reference
// ops) and the fallback of dispatch where the fused kernel does not run (with the dispatching
// ops, each of which may still run its own kernel).
#include <torch/torch.h>

#include "aim/ops/ssd_scan.h"

namespace aim::ops::detail {

/// The sizes ssd_decode_step derives from its arguments.
struct SsdDecodeShape {
  int64_t batch, heads, headdim, dstate, inner, conv_dim;
};

/// Checks the arguments of ssd_decode_step (error messages name the argument, the expected and
/// the found shape) and returns the sizes.
SsdDecodeShape check_ssd_decode_step(const torch::Tensor& zxbcdt, const torch::Tensor& conv_state,
                                     const torch::Tensor& ssm_state, const SsdDecodeWeights& w);

/// The three ops on arguments check_ssd_decode_step passed, of sizes `s`.
template <typename ConvUpdate, typename StateUpdate, typename GatedNorm>
torch::Tensor ssd_decode_step_parts(const SsdDecodeShape& s, const torch::Tensor& zxbcdt,
                                    torch::Tensor& conv_state, torch::Tensor& ssm_state,
                                    const SsdDecodeWeights& w, const ConvUpdate& conv_update,
                                    const StateUpdate& state_update, const GatedNorm& gated_norm) {
  const int64_t gn = w.ngroups * s.dstate;
  auto z = zxbcdt.narrow(1, 0, s.inner);
  auto xbc = conv_update(zxbcdt.narrow(1, s.inner, s.conv_dim), conv_state, w.conv_weight,
                         w.conv_bias, /*silu=*/true);
  auto dt = zxbcdt.narrow(1, s.inner + s.conv_dim, s.heads);
  auto x = xbc.narrow(1, 0, s.inner).reshape({s.batch, s.heads, s.headdim});
  auto bm = xbc.narrow(1, s.inner, gn).reshape({s.batch, w.ngroups, s.dstate});
  auto cm = xbc.narrow(1, s.inner + gn, gn).reshape({s.batch, w.ngroups, s.dstate});
  auto y = state_update(ssm_state, x, dt, w.A, bm, cm, w.D, w.dt_bias, /*dt_softplus=*/true);
  return gated_norm(y.reshape({s.batch, s.inner}), z, w.norm_weight, w.norm_group_size, w.eps,
                    w.norm_before_gate);
}

}  // namespace aim::ops::detail
