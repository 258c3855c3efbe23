#include "aim/model/mamba1.h"

#include <cmath>

#include "aim/ops/conv1d.h"
#include "aim/ops/linear.h"
#include "aim/ops/selective_scan.h"
#include "aim/ops/split.h"

namespace aim {

torch::Tensor init_dt_bias(int64_t n, double dt_min, double dt_max, double dt_init_floor) {
  auto dt = torch::exp(torch::rand({n}, torch::kFloat64) * (std::log(dt_max) - std::log(dt_min)) +
                       std::log(dt_min))
                .clamp_min(dt_init_floor);
  // Inverse of softplus: softplus(dt + log(-expm1(-dt))) == dt.
  return (dt + torch::log(-torch::expm1(-dt))).to(torch::kFloat);
}

Mamba1MixerImpl::Mamba1MixerImpl(const Mamba1MixerOptions& options_) : options(options_) {
  const auto& ssm = options.ssm();
  TORCH_CHECK(ssm.d_state > 0 && options.dt_rank() > 0,
              "Mamba1Mixer: d_state and dt_rank must be resolved (> 0)");
  const int64_t d_model = options.d_model(), rank = options.dt_rank();
  d_inner = ssm.expand * d_model;
  A_log = register_parameter("A_log", torch::empty({d_inner, ssm.d_state}));
  D = register_parameter("D", torch::empty({d_inner}));
  in_proj = register_module(
      "in_proj", torch::nn::Linear(torch::nn::LinearOptions(d_model, 2 * d_inner).bias(ssm.bias)));
  conv1d = register_module(
      "conv1d", torch::nn::Conv1d(torch::nn::Conv1dOptions(d_inner, d_inner, ssm.d_conv)
                                      .groups(d_inner)
                                      .padding(ssm.d_conv - 1)
                                      .bias(ssm.conv_bias)));
  x_proj = register_module(
      "x_proj",
      torch::nn::Linear(torch::nn::LinearOptions(d_inner, rank + 2 * ssm.d_state).bias(false)));
  dt_proj = register_module("dt_proj",
                            torch::nn::Linear(torch::nn::LinearOptions(rank, d_inner).bias(true)));
  out_proj = register_module(
      "out_proj", torch::nn::Linear(torch::nn::LinearOptions(d_inner, d_model).bias(ssm.bias)));
  reset_parameters();
}

void Mamba1MixerImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  const auto& ssm = options.ssm();
  in_proj->reset_parameters();
  conv1d->reset_parameters();
  x_proj->reset_parameters();
  out_proj->reset_parameters();
  const double std = std::pow(static_cast<double>(options.dt_rank()), -0.5) * ssm.dt_scale;
  dt_proj->weight.uniform_(-std, std);
  dt_proj->bias.copy_(init_dt_bias(d_inner, ssm.dt_min, ssm.dt_max, ssm.dt_init_floor));
  // S4D real initialisation: A[e, n] = n + 1.
  A_log.copy_(torch::arange(1, ssm.d_state + 1, torch::kFloat).log().expand({d_inner, ssm.d_state}));
  D.fill_(1.0);
}

torch::Tensor Mamba1MixerImpl::forward(const torch::Tensor& u, MixerState* state) {
  const auto& ssm = options.ssm();
  const int64_t rank = options.dt_rank();
  // Split, not narrowed (each narrow's backward would zero a gradient of the whole projection
  // and add to it): the conv and the scan write the gradients of x and z, and the scan those of
  // B and C, into their places in one buffer (ops::split_grad_slot), which the split passes on.
  const auto xz = ops::split_last_dim(in_proj->forward(u), {d_inner, d_inner});
  const auto z = xz[1].transpose(1, 2);                                // [B, E, L]
  auto conv = ops::causal_conv1d(xz[0].transpose(1, 2), conv1d->weight, conv1d->bias,
                                 /*silu=*/true, /*return_state=*/state != nullptr);
  auto x = conv.first;                                                 // [B, E, L]
  const auto x_dbl = ops::split_last_dim(x_proj->forward(x.transpose(1, 2)),  // [B, L, R + 2N]
                                         {rank, ssm.d_state, ssm.d_state});
  auto dt = torch::matmul(x_dbl[0], dt_proj->weight.t()).transpose(1, 2);
  auto bm = x_dbl[1].transpose(1, 2);                                  // [B, N, L]
  auto cm = x_dbl[2].transpose(1, 2);
  auto a = -torch::exp(A_log.to(torch::kFloat));
  auto scan = ops::selective_scan(x, dt, a, bm, cm, D, z, dt_proj->bias, /*delta_softplus=*/true,
                                  {}, /*return_last_state=*/state != nullptr);
  if (state != nullptr) {
    // Both states in the dtypes they were allocated in (prefill), contiguous as the one-token
    // kernels take them (a reference scan's state is a slice).
    state->conv_state = state->conv_state.defined() ? conv.second.to(state->conv_state.scalar_type()) : conv.second;
    const auto ssm_dtype =
        state->ssm_state.defined() ? state->ssm_state.scalar_type() : torch::kFloat;
    state->ssm_state = scan.last_state.to(ssm_dtype).contiguous();
  }
  return out_proj->forward(scan.y.transpose(1, 2));
}

torch::Tensor Mamba1MixerImpl::step_projected(const torch::Tensor& xz, MixerState& state) {
  const auto& ssm = options.ssm();
  const int64_t rank = options.dt_rank();                              // xz [B, 2E]
  auto x = ops::causal_conv1d_update(xz.narrow(-1, 0, d_inner), state.conv_state, conv1d->weight,
                                     conv1d->bias, /*silu=*/true);
  auto z = xz.narrow(-1, d_inner, d_inner);
  auto x_db = ops::linear(x, x_proj->weight, x_proj->bias);            // [B, R + 2N]
  auto dt = torch::matmul(x_db.narrow(-1, 0, rank), dt_proj->weight.t());
  auto bm = x_db.narrow(-1, rank, ssm.d_state);
  auto cm = x_db.narrow(-1, rank + ssm.d_state, ssm.d_state);
  const auto a = state.A.defined() ? state.A : -torch::exp(A_log.to(torch::kFloat));
  auto y = ops::selective_state_update(state.ssm_state, x, dt, a, bm, cm,
                                       state.D.defined() ? state.D : D, z,
                                       state.dt_bias.defined() ? state.dt_bias : dt_proj->bias,
                                       /*delta_softplus=*/true);
  return ops::linear(y, out_proj->weight, out_proj->bias);
}

MixerState Mamba1MixerImpl::allocate_state(int64_t batch, torch::Device device,
                                           torch::ScalarType dtype,
                                           torch::ScalarType ssm_dtype) const {
  const auto& ssm = options.ssm();
  TORCH_CHECK(ssm_dtype == torch::kFloat || ssm_dtype == torch::kBFloat16,
              "Mamba1 ssm state: expected fp32 or bf16, found ", ssm_dtype);
  MixerState s;
  s.conv_state = torch::zeros({batch, d_inner, ssm.d_conv}, torch::dtype(dtype).device(device));
  s.ssm_state = torch::zeros({batch, d_inner, ssm.d_state},
                             torch::dtype(ssm_dtype).device(device));
  torch::NoGradGuard no_grad;
  const auto f32 = torch::dtype(torch::kFloat).device(device);
  s.A = -torch::exp(A_log.to(f32));
  s.D = D.detach().to(f32, false, /*copy=*/true);
  if (dt_proj->bias.defined()) s.dt_bias = dt_proj->bias.detach().to(f32, false, /*copy=*/true);
  return s;
}

}  // namespace aim
