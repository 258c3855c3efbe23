#include "aim/model/mamba2.h"

#include <cmath>

#include "aim/model/mamba1.h"
#include "aim/ops/conv1d.h"
#include "aim/ops/linear.h"
#include "aim/ops/norms.h"
#include "aim/ops/split.h"
#include "aim/ops/ssd_scan.h"

namespace aim {

Mamba2MixerImpl::Mamba2MixerImpl(const Mamba2MixerOptions& options_) : options(options_) {
  const auto& ssm = options.ssm();
  TORCH_CHECK(ssm.d_state > 0, "Mamba2Mixer: d_state must be resolved (> 0)");
  const int64_t d_model = options.d_model();
  d_inner = ssm.expand * d_model;
  nheads = d_inner / ssm.headdim;
  conv_dim = d_inner + 2 * ssm.ngroups * ssm.d_state;
  const int64_t d_in_proj = 2 * d_inner + 2 * ssm.ngroups * ssm.d_state + nheads;
  // Registration order gives the official state_dict order: own parameters first.
  dt_bias = register_parameter("dt_bias", torch::empty({nheads}));
  A_log = register_parameter("A_log", torch::empty({nheads}));
  D = register_parameter("D", torch::empty({ssm.d_has_hdim ? d_inner : nheads}));
  in_proj = register_module(
      "in_proj", torch::nn::Linear(torch::nn::LinearOptions(d_model, d_in_proj).bias(ssm.bias)));
  conv1d = register_module(
      "conv1d", torch::nn::Conv1d(torch::nn::Conv1dOptions(conv_dim, conv_dim, ssm.d_conv)
                                      .groups(conv_dim)
                                      .padding(ssm.d_conv - 1)
                                      .bias(ssm.conv_bias)));
  if (ssm.rmsnorm) norm = register_module("norm", RMSNorm(RMSNormOptions(d_inner).eps(1e-5)));
  out_proj = register_module(
      "out_proj", torch::nn::Linear(torch::nn::LinearOptions(d_inner, d_model).bias(ssm.bias)));
  reset_parameters();
}

void Mamba2MixerImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  const auto& ssm = options.ssm();
  in_proj->reset_parameters();
  conv1d->reset_parameters();
  out_proj->reset_parameters();
  dt_bias.copy_(init_dt_bias(nheads, ssm.dt_min, ssm.dt_max, ssm.dt_init_floor));
  A_log.copy_(torch::empty({nheads}).uniform_(ssm.a_init_min, ssm.a_init_max).log());
  D.fill_(1.0);
  if (norm) norm->reset_parameters();
}

torch::Tensor Mamba2MixerImpl::d_param() const {
  return options.ssm().d_has_hdim ? D.view({nheads, options.ssm().headdim}) : D;
}

torch::Tensor Mamba2MixerImpl::output(const torch::Tensor& y, const torch::Tensor& z) {
  const auto& ssm = options.ssm();
  torch::Tensor gated = ssm.rmsnorm ? ops::gated_rms_norm(y, z, norm->weight, d_inner / ssm.ngroups,
                                                          1e-5, ssm.norm_before_gate)
                                    : y * torch::silu(z);
  return out_proj->forward(gated);
}

torch::Tensor Mamba2MixerImpl::forward(const torch::Tensor& u, MixerState* state) {
  const auto& ssm = options.ssm();
  const int64_t batch = u.size(0), len = u.size(1);
  // Split, not narrowed (each narrow's backward would zero a whole [B, L, d_in_proj] gradient
  // and add to it): the gated norm, the conv and the scan write the gradients of z, x B C and dt
  // into their places in one buffer (ops::split_grad_slot), which the split passes on as it is.
  const auto zxbcdt = ops::split_last_dim(in_proj->forward(u), {d_inner, conv_dim, nheads});
  const auto& z = zxbcdt[0];                                           // [B, L, E]
  const auto& dt = zxbcdt[2];                                          // [B, L, H]
  auto conv = ops::causal_conv1d(zxbcdt[1].transpose(1, 2), conv1d->weight, conv1d->bias,
                                 /*silu=*/true, /*return_state=*/state != nullptr);
  const int64_t gn = ssm.ngroups * ssm.d_state;                        // x, B, C of [B, L, conv_dim]:
  // The scan kernels' backward writes dx, dB and dC packed in that layout: no concatenation.
  const auto xbc = ops::split_last_dim(conv.first.transpose(1, 2), {d_inner, gn, gn});
  auto x = xbc[0].reshape({batch, len, nheads, ssm.headdim});
  auto bm = xbc[1].reshape({batch, len, ssm.ngroups, ssm.d_state});
  auto cm = xbc[2].reshape({batch, len, ssm.ngroups, ssm.d_state});
  auto a = -torch::exp(A_log.to(torch::kFloat));
  auto scan = ops::ssd_scan(x, dt, a, bm, cm, d_param(), dt_bias, /*dt_softplus=*/true,
                            ssm.chunk_size, {}, /*return_final_state=*/state != nullptr);
  if (state != nullptr) {
    // Both states in the dtypes they were allocated in (prefill), contiguous as the one-token
    // kernels take them (a reference scan's state is a slice).
    state->conv_state = state->conv_state.defined() ? conv.second.to(state->conv_state.scalar_type()) : conv.second;
    const auto ssm_dtype =
        state->ssm_state.defined() ? state->ssm_state.scalar_type() : torch::kFloat;
    state->ssm_state = scan.final_state.to(ssm_dtype).contiguous();
  }
  return output(scan.y.reshape({batch, len, d_inner}), z);
}

torch::Tensor Mamba2MixerImpl::step_projected(const torch::Tensor& zxbcdt, MixerState& state) {
  const auto& ssm = options.ssm();
  const int64_t batch = zxbcdt.size(0);                                // [B, 2E + 2GN + H]
  const auto a = state.A.defined() ? state.A : -torch::exp(A_log.to(torch::kFloat));
  const auto d = state.D.defined() ? state.D : d_param();
  const auto bias = state.dt_bias.defined() ? state.dt_bias : dt_bias;
  if (ssm.rmsnorm) {
    // Conv update, state update and gated norm: one kernel on CUDA.
    ops::SsdDecodeWeights w{conv1d->weight, conv1d->bias, a, d, bias, norm->weight, ssm.ngroups,
                            d_inner / ssm.ngroups, 1e-5, ssm.norm_before_gate};
    return ops::linear(ops::ssd_decode_step(zxbcdt, state.conv_state, state.ssm_state, w, state.arrivals),
                       out_proj->weight, out_proj->bias);
  }
  auto z = zxbcdt.narrow(-1, 0, d_inner);
  auto xbc = ops::causal_conv1d_update(zxbcdt.narrow(-1, d_inner, conv_dim), state.conv_state,
                                       conv1d->weight, conv1d->bias, /*silu=*/true);
  auto dt = zxbcdt.narrow(-1, d_inner + conv_dim, nheads);             // [B, H]
  const int64_t gn = ssm.ngroups * ssm.d_state;
  auto x = xbc.narrow(-1, 0, d_inner).reshape({batch, nheads, ssm.headdim});
  auto bm = xbc.narrow(-1, d_inner, gn).reshape({batch, ssm.ngroups, ssm.d_state});
  auto cm = xbc.narrow(-1, d_inner + gn, gn).reshape({batch, ssm.ngroups, ssm.d_state});
  auto y = ops::ssd_state_update(state.ssm_state, x, dt, a, bm, cm, d, bias, /*dt_softplus=*/true);
  return output(y.reshape({batch, d_inner}), z);
}

MixerState Mamba2MixerImpl::allocate_state(int64_t batch, torch::Device device,
                                           torch::ScalarType dtype,
                                           torch::ScalarType ssm_dtype) const {
  const auto& ssm = options.ssm();
  TORCH_CHECK(ssm_dtype == torch::kFloat || ssm_dtype == torch::kBFloat16,
              "Mamba2 ssm state: expected fp32 or bf16, found ", ssm_dtype);
  MixerState s;
  s.conv_state = torch::zeros({batch, conv_dim, ssm.d_conv}, torch::dtype(dtype).device(device));
  s.ssm_state = torch::zeros({batch, nheads, ssm.headdim, ssm.d_state},
                             torch::dtype(ssm_dtype).device(device));
  torch::NoGradGuard no_grad;
  const auto f32 = torch::dtype(torch::kFloat).device(device);
  s.A = -torch::exp(A_log.to(f32));
  s.D = d_param().detach().to(f32, false, /*copy=*/true);
  s.dt_bias = dt_bias.detach().to(f32, false, /*copy=*/true);
  s.arrivals = torch::zeros({batch}, torch::dtype(torch::kInt).device(device));
  return s;
}

}  // namespace aim
