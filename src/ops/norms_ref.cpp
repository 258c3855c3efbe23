// Plain LibTorch RMS norms: the oracle for the fused kernels.
#include <torch/torch.h>

#include "aim/ops/norms.h"

namespace aim::ops::ref {

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  auto xf = x.to(torch::kFloat);
  auto y = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps) * weight.to(torch::kFloat);
  return y.to(x.scalar_type());
}

std::pair<torch::Tensor, torch::Tensor> add_rms_norm(const torch::Tensor& hidden,
                                                     const torch::Tensor& residual,
                                                     const torch::Tensor& weight, double eps,
                                                     bool residual_in_fp32) {
  torch::Tensor res;
  if (residual.defined()) {
    res = residual_in_fp32 ? hidden.to(torch::kFloat) + residual.to(torch::kFloat)
                           : hidden + residual.to(hidden.scalar_type());
  } else {
    res = residual_in_fp32 ? hidden.to(torch::kFloat) : hidden;
  }
  auto normed = rms_norm(res, weight, eps).to(hidden.scalar_type());
  return {normed, res};
}

torch::Tensor gate_hidden(const torch::Tensor& hidden, const torch::Tensor& hidden_gate) {
  return hidden.dim() == 3 ? hidden_gate.unsqueeze(1) * hidden : hidden_gate * hidden;
}

std::pair<torch::Tensor, torch::Tensor> add_rms_norm_modulate(
    const torch::Tensor& hidden_in, const torch::Tensor& residual, const torch::Tensor& weight,
    double eps, bool residual_in_fp32, const torch::Tensor& shift, const torch::Tensor& scale,
    const torch::Tensor& hidden_gate) {
  const auto hidden = hidden_gate.defined() ? gate_hidden(hidden_in, hidden_gate) : hidden_in;
  auto [normed, res] = add_rms_norm(hidden, residual, weight, eps, residual_in_fp32);
  if (!scale.defined()) return {normed, res};
  // The model's modulate(); a no-op cast unless shift/scale promote (an fp32 adaLN table with
  // bf16 hidden states), where the next projection would cast to hidden's dtype anyway.
  auto out = hidden.dim() == 3 ? normed * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
                               : normed * (1 + scale) + shift;
  return {out.to(hidden.scalar_type()), res};
}

torch::Tensor gated_rms_norm(const torch::Tensor& x, const torch::Tensor& z,
                             const torch::Tensor& weight, int64_t group_size, double eps,
                             bool norm_before_gate) {
  auto xf = x.to(torch::kFloat);
  auto gate = z.defined() ? torch::silu(z.to(torch::kFloat)) : torch::Tensor();
  if (gate.defined() && !norm_before_gate) xf = xf * gate;
  auto sizes = xf.sizes().vec();
  const int64_t e = sizes.back();
  auto grouped = xf.reshape({-1, e / group_size, group_size});
  auto normed = grouped * torch::rsqrt(grouped.pow(2).mean(-1, true) + eps);
  auto y = normed.reshape(sizes) * weight.to(torch::kFloat);
  if (gate.defined() && norm_before_gate) y = y * gate;
  return y.to(x.scalar_type());
}

}  // namespace aim::ops::ref
