// Checks and dispatch for the norm ops: the fused CUDA kernels for CUDA tensors they support
// (unless turned off, aim/ops/dispatch.h), the reference otherwise.
#include "aim/ops/norms.h"

#include <torch/torch.h>

#include <optional>

#include "aim/ops/dispatch.h"
#include "aim/ops/linear.h"
#include "ops/kernel_table.h"
#include "ops/norms_cpu.h"
#ifdef AIM_WITH_CUDA
#include "ops/norms_cuda.h"
#endif

namespace aim::ops {

namespace {
void check_weight(const torch::Tensor& x, const torch::Tensor& weight, const char* op) {
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least 1 dim, got ", x.sizes());
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1), op, ": weight must be [",
              x.size(-1), "], got ", weight.sizes());
  TORCH_CHECK(weight.device() == x.device(), op, ": weight on ", weight.device(), ", x on ",
              x.device());
}

void check_add(const torch::Tensor& hidden, const torch::Tensor& residual,
               const torch::Tensor& weight, const char* op) {
  check_weight(hidden, weight, op);
  if (residual.defined()) {
    TORCH_CHECK(residual.sizes() == hidden.sizes(), op, ": residual ", residual.sizes(),
                " != hidden ", hidden.sizes());
    TORCH_CHECK(residual.device() == hidden.device(), op, ": residual on ", residual.device(),
                ", hidden on ", hidden.device());
  }
}

void check_modulation(const torch::Tensor& hidden, const torch::Tensor& shift,
                      const torch::Tensor& scale, const char* op) {
  TORCH_CHECK(shift.defined() == scale.defined(), op,
              ": shift and scale must both be given or both be undefined");
  if (!scale.defined()) return;
  TORCH_CHECK(hidden.dim() == 2 || hidden.dim() == 3, op,
              ": modulated hidden must be [B, L, D] or [B, D], got ", hidden.sizes());
  const int64_t batch = hidden.size(0), dim = hidden.size(-1);
  for (const auto* t : {&shift, &scale}) {
    const char* name = t == &shift ? "shift" : "scale";
    TORCH_CHECK(t->dim() == 2 && t->size(0) == batch && t->size(1) == dim, op, ": ", name,
                " must be [", batch, ", ", dim, "], got ", t->sizes());
    TORCH_CHECK(t->device() == hidden.device(), op, ": ", name, " on ", t->device(),
                ", hidden on ", hidden.device());
  }
}
}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  check_weight(x, weight, "rms_norm");
  return ref::rms_norm(x, weight, eps);
}

namespace {

void check_gate(const torch::Tensor& hidden, const torch::Tensor& gate, const char* op) {
  if (!gate.defined()) return;
  TORCH_CHECK(hidden.dim() == 2 || hidden.dim() == 3, op,
              ": hidden with a hidden_gate must be [B, L, D] or [B, D], got ", hidden.sizes());
  TORCH_CHECK(gate.dim() == 2 && gate.size(0) == hidden.size(0) && gate.size(1) == hidden.size(-1),
              op, ": hidden_gate must be [", hidden.size(0), ", ", hidden.size(-1), "], got ",
              gate.sizes());
  TORCH_CHECK(gate.device() == hidden.device(), op, ": hidden_gate on ", gate.device(),
              ", hidden on ", hidden.device());
}

// Both add ops, out in `out_type`: the kernel (on CUDA, or emulated) when it takes the tensors
// and out_type is hidden's (the kernel's out type); else, with a gate, the multiply and the op
// again without it; else the reference; then out cast to out_type if it is not already.
std::pair<torch::Tensor, torch::Tensor> add_norm(const torch::Tensor& hidden,
                                                 const torch::Tensor& residual,
                                                 const torch::Tensor& weight, double eps,
                                                 bool residual_in_fp32, const torch::Tensor& shift,
                                                 const torch::Tensor& scale,
                                                 const torch::Tensor& gate,
                                                 torch::ScalarType out_type) {
  if (out_type == hidden.scalar_type()) {
#ifdef AIM_WITH_CUDA
    if (hidden.is_cuda() && cuda_kernels_enabled() &&
        cuda::add_rms_norm_supported(hidden, residual, weight, shift, scale, gate)) {
      return cuda::add_rms_norm_modulate(hidden, residual, weight, eps, residual_in_fp32, shift,
                                         scale, gate);
    }
#endif
    if (const auto* k = emulated_kernels_for(hidden);
        k && k->add_rms_norm_supported(hidden, residual, weight, shift, scale, gate)) {
      return k->add_rms_norm_modulate(hidden, residual, weight, eps, residual_in_fp32, shift,
                                      scale, gate);
    }
  }
  if (gate.defined()) {
    return add_norm(ref::gate_hidden(hidden, gate), residual, weight, eps, residual_in_fp32,
                    shift, scale, {}, out_type);
  }
  if (out_type != hidden.scalar_type()) {
    auto [out, res] = add_norm(hidden, residual, weight, eps, residual_in_fp32, shift, scale, {},
                               hidden.scalar_type());
    return {out.to(out_type), res};
  }
  if (!scale.defined()) return ref::add_rms_norm(hidden, residual, weight, eps, residual_in_fp32);
  return ref::add_rms_norm_modulate(hidden, residual, weight, eps, residual_in_fp32, shift, scale);
}

// The type of hidden_gate * hidden (ATen's), unless `out_dtype` says otherwise.
torch::ScalarType add_out_type(const torch::Tensor& hidden, const torch::Tensor& gate,
                               std::optional<torch::ScalarType> out_dtype) {
  if (out_dtype) return *out_dtype;
  return gate.defined() ? at::result_type(hidden, gate) : hidden.scalar_type();
}

}  // namespace

std::pair<torch::Tensor, torch::Tensor> add_rms_norm(const torch::Tensor& hidden,
                                                     const torch::Tensor& residual,
                                                     const torch::Tensor& weight, double eps,
                                                     bool residual_in_fp32,
                                                     const torch::Tensor& hidden_gate) {
  check_add(hidden, residual, weight, "add_rms_norm");
  check_gate(hidden, hidden_gate, "add_rms_norm");
  return add_norm(hidden, residual, weight, eps, residual_in_fp32, {}, {}, hidden_gate,
                  add_out_type(hidden, hidden_gate, std::nullopt));
}

std::pair<torch::Tensor, torch::Tensor> add_rms_norm_modulate(
    const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight,
    double eps, bool residual_in_fp32, const torch::Tensor& shift, const torch::Tensor& scale,
    const torch::Tensor& hidden_gate, std::optional<torch::ScalarType> out_dtype) {
  check_add(hidden, residual, weight, "add_rms_norm_modulate");
  check_modulation(hidden, shift, scale, "add_rms_norm_modulate");
  check_gate(hidden, hidden_gate, "add_rms_norm_modulate");
  TORCH_CHECK(!out_dtype || *out_dtype == torch::kFloat || *out_dtype == torch::kBFloat16 ||
                  *out_dtype == torch::kDouble,
              "add_rms_norm_modulate: out_dtype must be fp32, bf16 or fp64, got ", *out_dtype);
  return add_norm(hidden, residual, weight, eps, residual_in_fp32, shift, scale, hidden_gate,
                  add_out_type(hidden, hidden_gate, out_dtype));
}

std::pair<torch::Tensor, torch::Tensor> add_rms_norm_modulate_linear(
    const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight,
    double eps, bool residual_in_fp32, const torch::Tensor& shift, const torch::Tensor& scale,
    const torch::Tensor& hidden_gate, const torch::Tensor& linear_weight,
    const torch::Tensor& linear_bias) {
  const char* op = "add_rms_norm_modulate_linear";
  check_add(hidden, residual, weight, op);
  check_modulation(hidden, shift, scale, op);
  check_gate(hidden, hidden_gate, op);
  TORCH_CHECK(linear_weight.dim() == 2 && linear_weight.size(1) == hidden.size(-1), op,
              ": linear_weight must be [N, ", hidden.size(-1), "], got ", linear_weight.sizes());
  TORCH_CHECK(!linear_bias.defined() ||
                  (linear_bias.dim() == 1 && linear_bias.size(0) == linear_weight.size(0)),
              op, ": linear_bias must be [", linear_weight.size(0), "], got ",
              linear_bias.sizes());
#ifdef AIM_WITH_CUDA
  if (hidden.is_cuda() && cuda_kernels_enabled() &&
      cuda::add_rms_norm_linear_supported(hidden, residual, weight, shift, scale, hidden_gate,
                                          linear_weight, linear_bias)) {
    return cuda::add_rms_norm_modulate_linear(hidden, residual, weight, eps, residual_in_fp32,
                                              shift, scale, hidden_gate, linear_weight,
                                              linear_bias);
  }
#endif
  if (const auto* k = emulated_kernels_for(hidden);
      k && k->add_rms_norm_linear_supported(hidden, residual, weight, shift, scale, hidden_gate,
                                            linear_weight, linear_bias)) {
    return k->add_rms_norm_modulate_linear(hidden, residual, weight, eps, residual_in_fp32, shift,
                                           scale, hidden_gate, linear_weight, linear_bias);
  }
  auto [x, res] = add_norm(hidden, residual, weight, eps, residual_in_fp32, shift, scale,
                           hidden_gate, add_out_type(hidden, hidden_gate, std::nullopt));
  return {ops::linear(x, linear_weight, linear_bias), res};
}

torch::Tensor gated_rms_norm(const torch::Tensor& x, const torch::Tensor& z,
                             const torch::Tensor& weight, int64_t group_size, double eps,
                             bool norm_before_gate) {
  check_weight(x, weight, "gated_rms_norm");
  TORCH_CHECK(group_size > 0 && x.size(-1) % group_size == 0, "gated_rms_norm: group_size ",
              group_size, " must divide ", x.size(-1));
  if (z.defined()) {
    TORCH_CHECK(z.sizes() == x.sizes(), "gated_rms_norm: z ", z.sizes(), " != x ", x.sizes());
  }
#ifdef AIM_WITH_CUDA
  if (x.is_cuda() && cuda_kernels_enabled() &&
      cuda::gated_rms_norm_supported(x, z, weight, group_size)) {
    return cuda::gated_rms_norm(x, z, weight, group_size, eps, norm_before_gate);
  }
#endif
  if (const auto* k = emulated_kernels_for(x);
      k && k->gated_rms_norm_supported(x, z, weight, group_size)) {
    return k->gated_rms_norm(x, z, weight, group_size, eps, norm_before_gate);
  }
  if (x.device().is_cpu() && cpu_kernels_enabled() && cpu::gated_rms_norm_supported(x, z, weight)) {
    return cpu::gated_rms_norm(x, z, weight, group_size, eps, norm_before_gate);
  }
  return ref::gated_rms_norm(x, z, weight, group_size, eps, norm_before_gate);
}

}  // namespace aim::ops
