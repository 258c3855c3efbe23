// Fills kernels/rms_norm.h from LibTorch tensors; the forward and backward launches are tied
// together by torch::autograd::Functions.
#include "ops/norms_cuda.h"
#include "ops/cuda_backend.h"
#include "ops/optional_inputs.h"

#include <torch/torch.h>

#include <initializer_list>
#include <limits>
#include <optional>
#include <tuple>

#include "aim/ops/dispatch.h"
#include "aim/ops/split.h"
#include "norm_linear.h"
#include "rms_norm.h"

namespace aim::ops::AIM_OPS_CUDA_NS {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

constexpr int64_t kMaxGridY = 65535;

// shift and scale share one type in the kernels: fp32 copies of both when they differ.
std::pair<torch::Tensor, torch::Tensor> as_modulation(const torch::Tensor& shift,
                                                      const torch::Tensor& scale) {
  auto sh = as_param(shift), sc = as_param(scale);
  if (sh.defined() && sc.defined() && sh.scalar_type() != sc.scalar_type()) {
    sh = sh.to(torch::kFloat);
    sc = sc.to(torch::kFloat);
  }
  return {sh, sc};
}

bool unit_last_stride(const torch::Tensor& t) {
  return !t.defined() || t.size(-1) <= 1 || t.stride(-1) == 1;
}

// At least one row, and the row count fits the kernels' int.
bool rows_fit(const torch::Tensor& x) {
  return x.dim() >= 1 && x.numel() > 0 &&
         x.numel() / x.size(-1) <= std::numeric_limits<int>::max();
}

// [..., D] as rows [N, D] with unit column stride: a view where the strides allow, else a copy.
torch::Tensor as_rows(const torch::Tensor& t) {
  auto rows = t.reshape({-1, t.size(-1)});
  if (rows.size(1) > 1 && rows.stride(1) != 1) rows = rows.contiguous();
  return rows;
}

const void* ptr_or_null(const torch::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }
void* mut_ptr_or_null(torch::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }


int64_t type_code(torch::ScalarType t) { return static_cast<int64_t>(t); }
torch::ScalarType type_of(const c10::IValue& v) { return static_cast<torch::ScalarType>(v.toInt()); }

// The forward kernel's inputs as it reads them: rows with a unit column stride, the residual
// in the residual type, shift and scale in one type, a contiguous gate. Held while the kernel
// runs (the copies among them).
struct AddInputs {
  torch::Tensor hidden, residual, weight, shift, scale, gate;
  int64_t rows = 0, dim = 0, rows_per_batch = 0;
};

AddInputs add_inputs(const torch::Tensor& hidden, const torch::Tensor& residual,
                     const torch::Tensor& weight, const torch::Tensor& shift,
                     const torch::Tensor& scale, const torch::Tensor& gate,
                     torch::ScalarType res_type) {
  AddInputs in;
  in.dim = hidden.size(-1);
  in.rows = hidden.numel() / in.dim;
  in.rows_per_batch = scale.defined() || gate.defined() ? in.rows / hidden.size(0) : in.rows;
  in.hidden = as_rows(hidden);
  in.residual = residual.defined() ? as_rows(residual.to(res_type)) : torch::Tensor();
  in.weight = as_param(weight);
  std::tie(in.shift, in.scale) = as_modulation(shift, scale);
  in.gate = gate.defined() ? gate.contiguous() : gate;
  return in;
}

// The kernels' view of `in`; outputs (out, residual_out, rstd) are the caller's to set.
kernels::AddRmsNormParams add_params(const AddInputs& in, double eps) {
  kernels::AddRmsNormParams p;
  p.rows = static_cast<int>(in.rows);
  p.dim = static_cast<int>(in.dim);
  p.rows_per_batch = static_cast<int>(in.rows_per_batch);
  p.eps = static_cast<float>(eps);
  p.weight = in.weight.data_ptr();
  p.weight_type = elem_type(in.weight.scalar_type());
  if (in.scale.defined()) {
    p.shift = in.shift.data_ptr();
    p.scale = in.scale.data_ptr();
    p.mod_type = elem_type(in.scale.scalar_type());
  }
  p.hidden = in.hidden.data_ptr();
  p.hidden_row_stride = in.hidden.stride(0);
  p.hidden_gate = ptr_or_null(in.gate);
  if (in.gate.defined()) p.gate_type = elem_type(in.gate.scalar_type());
  p.residual = ptr_or_null(in.residual);
  p.residual_row_stride = in.residual.defined() ? in.residual.stride(0) : 0;
  return p;
}

// The forward kernel: {out, residual_out, rstd}. residual, shift, scale and gate may be
// undefined.
tensor_list add_rms_norm_forward(const torch::Tensor& hidden, const torch::Tensor& residual,
                                 const torch::Tensor& weight, const torch::Tensor& shift,
                                 const torch::Tensor& scale, const torch::Tensor& gate, double eps,
                                 bool residual_in_fp32) {
  DeviceGuard guard(hidden.device());
  const auto in_type = hidden.scalar_type();
  const auto res_type = residual_in_fp32 ? torch::kFloat : in_type;
  const auto in = add_inputs(hidden, residual, weight, shift, scale, gate, res_type);
  auto out = torch::empty(hidden.sizes(), hidden.options());
  auto residual_out = torch::empty(hidden.sizes(), hidden.options().dtype(res_type));
  auto rstd = torch::empty({in.rows}, hidden.options().dtype(torch::kFloat));
  maybe_poison({out, residual_out, rstd});

  auto p = add_params(in, eps);
  p.out = out.data_ptr();
  p.residual_out = residual_out.data_ptr();
  p.rstd = rstd.data_ptr<float>();
  p.dependent_launch = dependent_launch_enabled();
  check_launch(kernels::add_rms_norm_fwd_cuda(p, elem_type(in_type), elem_type(res_type),
                                              current_stream()),
               "add_rms_norm forward");
  return {out, residual_out, rstd};
}

class AddRmsNormFunction : public torch::autograd::Function<AddRmsNormFunction> {
 public:
  // Returns {out, residual_out}. residual, shift, scale and gate may be empty.
  static tensor_list forward(AutogradContext* ctx, const torch::Tensor& hidden,
                             const std::optional<torch::Tensor>& residual_opt,
                             const torch::Tensor& weight,
                             const std::optional<torch::Tensor>& shift_opt,
                             const std::optional<torch::Tensor>& scale_opt,
                             const std::optional<torch::Tensor>& gate_opt, double eps,
                             bool residual_in_fp32) {
    const auto residual = value_or_undefined(residual_opt);
    const auto shift = value_or_undefined(shift_opt), scale = value_or_undefined(scale_opt);
    const auto gate = value_or_undefined(gate_opt);
    const auto in_type = hidden.scalar_type();
    const bool modulated = scale.defined();
    const auto outs = add_rms_norm_forward(hidden, residual, weight, shift, scale, gate, eps,
                                           residual_in_fp32);
    const auto& out = outs[0];
    const auto& residual_out = outs[1];
    const auto& rstd = outs[2];
    const int64_t rows = rstd.size(0);
    const int64_t rows_per_batch = modulated || gate.defined() ? rows / hidden.size(0) : rows;

    // With a gate the backward reads hidden and the gate again (dhidden = dr * gate, dgate).
    ctx->save_for_backward({residual_out, rstd, weight, scale, gate.defined() ? hidden : torch::Tensor(),
                            gate});
    ctx->saved_data["in_type"] = type_code(in_type);
    ctx->saved_data["residual_type"] = residual.defined() ? type_code(residual.scalar_type()) : -1;
    ctx->saved_data["shift_type"] = modulated ? type_code(shift.scalar_type()) : -1;
    ctx->saved_data["rows_per_batch"] = rows_per_batch;
    // residual_out is often unused (the last block's, in sampling): no zeros for its gradient.
    ctx->set_materialize_grads(false);
    return {out, residual_out};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& residual_out = saved[0];
    const auto& rstd = saved[1];
    const auto& weight = saved[2];
    const auto& scale = saved[3];
    const auto& hidden = saved[4];
    const auto gate = saved[5].defined() ? saved[5].contiguous() : saved[5];
    const bool gated = gate.defined();
    DeviceGuard guard(residual_out.device());
    const auto in_type = type_of(ctx->saved_data["in_type"]);
    const auto res_type = residual_out.scalar_type();
    const int64_t residual_code = ctx->saved_data["residual_type"].toInt();
    const bool modulated = scale.defined();
    const int64_t rows_per_batch = ctx->saved_data["rows_per_batch"].toInt();
    const int64_t dim = residual_out.size(-1), rows = residual_out.numel() / dim;
    const auto opts = residual_out.options();

    const auto dout = as_rows(grads[0].defined() ? grads[0].to(in_type)
                                                 : torch::zeros({rows, dim}, opts.dtype(in_type)));
    const auto dres = grads[1].defined() ? as_rows(grads[1].to(res_type)) : torch::Tensor();
    const auto weight_p = as_param(weight), scale_p = as_param(scale);
    torch::Tensor dhidden, dresidual, dshift, dscale, dgate;
    // Edge 0 is hidden and, when given, edge 1 the residual.
    if (ctx->needs_input_grad(0)) dhidden = torch::empty({rows, dim}, opts.dtype(in_type));
    if (residual_code >= 0 && ctx->needs_input_grad(1)) {
      dresidual = torch::empty({rows, dim}, opts.dtype(res_type));
    }
    auto dweight = torch::empty({dim}, opts.dtype(torch::kFloat));
    if (modulated) {
      dshift = torch::empty({rows / rows_per_batch, dim}, opts.dtype(torch::kFloat));
      dscale = torch::empty({rows / rows_per_batch, dim}, opts.dtype(torch::kFloat));
    }
    torch::Tensor hidden_rows;
    if (gated) {
      dgate = torch::empty({rows / rows_per_batch, dim}, opts.dtype(torch::kFloat));
      hidden_rows = as_rows(hidden);
    }

    kernels::AddRmsNormParams p;
    p.rows = static_cast<int>(rows);
    p.dim = static_cast<int>(dim);
    p.rows_per_batch = static_cast<int>(rows_per_batch);
    p.weight = weight_p.data_ptr();
    p.weight_type = elem_type(weight_p.scalar_type());
    p.scale = modulated ? scale_p.data_ptr() : nullptr;
    if (modulated) p.mod_type = elem_type(scale_p.scalar_type());
    p.residual_out = residual_out.data_ptr();
    p.rstd = rstd.data_ptr<float>();
    p.dout = dout.data_ptr();
    p.dout_row_stride = dout.stride(0);
    p.dresidual_out = ptr_or_null(dres);
    p.dresidual_out_row_stride = dres.defined() ? dres.stride(0) : 0;
    if (gated) {
      p.hidden = hidden_rows.data_ptr();
      p.hidden_row_stride = hidden_rows.stride(0);
      p.hidden_gate = gate.data_ptr();
      p.gate_type = elem_type(gate.scalar_type());
    }
    p.rows_per_chunk = kernels::rms_norm_bwd_rows_per_chunk(rows);
    auto workspace = torch::empty({kernels::add_rms_norm_bwd_workspace_size(p)},
                                  opts.dtype(torch::kFloat));
    maybe_poison({dhidden, dresidual, dweight, dshift, dscale, dgate, workspace});
    p.dhidden = mut_ptr_or_null(dhidden);
    p.dresidual = mut_ptr_or_null(dresidual);
    p.dweight = dweight.data_ptr<float>();
    p.dshift = modulated ? dshift.data_ptr<float>() : nullptr;
    p.dscale = modulated ? dscale.data_ptr<float>() : nullptr;
    p.dgate = gated ? dgate.data_ptr<float>() : nullptr;
    p.workspace = workspace.data_ptr<float>();
    check_launch(kernels::add_rms_norm_bwd_cuda(p, elem_type(in_type), elem_type(res_type),
                                                current_stream()),
                 "add_rms_norm backward");

    const auto sizes = residual_out.sizes();
    return {dhidden.defined() ? dhidden.view(sizes) : torch::Tensor(),
            dresidual.defined() ? dresidual.view(sizes).to(static_cast<torch::ScalarType>(residual_code))
                                : torch::Tensor(),
            dweight.to(weight.scalar_type()),
            modulated ? dshift.to(type_of(ctx->saved_data["shift_type"])) : torch::Tensor(),
            modulated ? dscale.to(scale.scalar_type()) : torch::Tensor(),
            gated ? dgate.view(saved[5].sizes()).to(gate.scalar_type()) : torch::Tensor(),
            torch::Tensor(),
            torch::Tensor()};
  }
};

class GatedRmsNormFunction : public torch::autograd::Function<GatedRmsNormFunction> {
 public:
  // z may be empty.
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const std::optional<torch::Tensor>& z_opt,
                               const torch::Tensor& weight, int64_t group_size, double eps,
                               bool norm_before_gate) {
    const auto z = value_or_undefined(z_opt);
    DeviceGuard guard(x.device());
    const int64_t dim = x.size(-1), rows = x.numel() / dim;
    const auto x2 = as_rows(x);
    const auto z2 = z.defined() ? as_rows(z) : torch::Tensor();
    const auto weight_p = as_param(weight);
    auto out = torch::empty(x.sizes(), x.options());
    auto rstd = torch::empty({rows, dim / group_size}, x.options().dtype(torch::kFloat));
    maybe_poison({out, rstd});

    kernels::GatedRmsNormParams p;
    p.rows = static_cast<int>(rows);
    p.dim = static_cast<int>(dim);
    p.group_size = static_cast<int>(group_size);
    p.eps = static_cast<float>(eps);
    p.norm_before_gate = norm_before_gate;
    p.weight = weight_p.data_ptr();
    p.weight_type = elem_type(weight_p.scalar_type());
    p.x = x2.data_ptr();
    p.x_row_stride = x2.stride(0);
    p.z = ptr_or_null(z2);
    p.z_row_stride = z2.defined() ? z2.stride(0) : 0;
    p.out = out.data_ptr();
    p.rstd = rstd.data_ptr<float>();
    check_launch(kernels::gated_rms_norm_fwd_cuda(p, elem_type(x.scalar_type()), current_stream()),
                 "gated_rms_norm forward");

    ctx->save_for_backward({x, z, weight, rstd});
    ctx->saved_data["group_size"] = group_size;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["norm_before_gate"] = norm_before_gate;
    return out;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& z = saved[1];
    const auto& weight = saved[2];
    const auto& rstd = saved[3];
    DeviceGuard guard(x.device());
    const int64_t dim = x.size(-1), rows = x.numel() / dim;
    const auto opts = x.options();
    const auto x2 = as_rows(x);
    const auto z2 = z.defined() ? as_rows(z) : torch::Tensor();
    const auto dout = as_rows(grads[0].to(x.scalar_type()));
    const auto weight_p = as_param(weight);
    torch::Tensor dx, dz, dz_place;
    // Edge 0 is x and, when given, edge 1 is z.
    if (ctx->needs_input_grad(0)) dx = torch::empty({rows, dim}, opts);
    if (z.defined() && ctx->needs_input_grad(1)) {
      // z's place in the gradient of the tensor it was split from (in_proj's output in a Mamba2
      // mixer): written there, its rows need no concatenation.
      dz_place = split_grad_slot(z);
      if (dz_place.defined()) dz = as_rows(dz_place);
      if (!dz.defined() || !dz.is_alias_of(dz_place)) dz = torch::empty({rows, dim}, opts);
    }
    auto dweight = torch::empty({dim}, opts.dtype(torch::kFloat));

    kernels::GatedRmsNormParams p;
    p.rows = static_cast<int>(rows);
    p.dim = static_cast<int>(dim);
    p.group_size = static_cast<int>(ctx->saved_data["group_size"].toInt());
    p.eps = static_cast<float>(ctx->saved_data["eps"].toDouble());
    p.norm_before_gate = ctx->saved_data["norm_before_gate"].toBool();
    p.weight = weight_p.data_ptr();
    p.weight_type = elem_type(weight_p.scalar_type());
    p.x = x2.data_ptr();
    p.x_row_stride = x2.stride(0);
    p.z = ptr_or_null(z2);
    p.z_row_stride = z2.defined() ? z2.stride(0) : 0;
    p.rstd = rstd.data_ptr<float>();
    p.dout = dout.data_ptr();
    p.dout_row_stride = dout.stride(0);
    p.rows_per_chunk = kernels::rms_norm_bwd_rows_per_chunk(rows);
    auto workspace = torch::empty({kernels::gated_rms_norm_bwd_workspace_size(p)},
                                  opts.dtype(torch::kFloat));
    maybe_poison({dx, dz, dweight, workspace});
    p.dx = mut_ptr_or_null(dx);
    p.dx_row_stride = dx.defined() ? dx.stride(0) : 0;
    p.dz = mut_ptr_or_null(dz);
    p.dz_row_stride = dz.defined() ? dz.stride(0) : 0;
    p.dweight = dweight.data_ptr<float>();
    p.workspace = workspace.data_ptr<float>();
    check_launch(kernels::gated_rms_norm_bwd_cuda(p, elem_type(x.scalar_type()), current_stream()),
                 "gated_rms_norm backward");

    if (dz_place.defined() && !dz.is_alias_of(dz_place)) dz_place.copy_(dz.view(z.sizes()));
    return {dx.defined() ? dx.view(x.sizes()) : torch::Tensor(),
            dz_place.defined() ? dz_place : dz.defined() ? dz.view(z.sizes()) : torch::Tensor(),
            dweight.to(weight.scalar_type()),
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor()};
  }
};

}  // namespace

bool add_rms_norm_supported(const torch::Tensor& hidden, const torch::Tensor& residual,
                            const torch::Tensor& weight, const torch::Tensor& shift,
                            const torch::Tensor& scale, const torch::Tensor& hidden_gate) {
  if (!on_kernel_device(hidden) || !kernel_dtype(hidden) || !rows_fit(hidden) ||
      !unit_last_stride(hidden) || hidden.size(-1) > kernels::kRmsNormMaxDim) {
    return false;
  }
  if (residual.defined() && (!residual.is_floating_point() || !unit_last_stride(residual))) {
    return false;
  }
  if ((scale.defined() || hidden_gate.defined()) && hidden.size(0) > kMaxGridY) return false;
  // The gate in fp32 or hidden's type, read as stored; its backward takes D <= 4096.
  if (hidden_gate.defined() &&
      ((hidden_gate.scalar_type() != hidden.scalar_type() &&
        hidden_gate.scalar_type() != torch::kFloat) ||
       (hidden.size(-1) > kernels::kRmsNormMaxGatedBwdDim &&
        tracks_grad({&hidden, &residual, &weight, &shift, &scale, &hidden_gate})))) {
    return false;
  }
  return weight.is_floating_point() && on_device_of(residual, hidden) &&
         on_device_of(weight, hidden) && on_device_of(shift, hidden) &&
         on_device_of(scale, hidden) && on_device_of(hidden_gate, hidden);
}

std::pair<torch::Tensor, torch::Tensor> add_rms_norm_modulate(
    const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight,
    double eps, bool residual_in_fp32, const torch::Tensor& shift, const torch::Tensor& scale,
    const torch::Tensor& hidden_gate) {
  if (!tracks_grad({&hidden, &residual, &weight, &shift, &scale, &hidden_gate})) {
    // Decoding: no autograd node to build.
    const auto outs = add_rms_norm_forward(hidden, residual, weight, shift, scale, hidden_gate,
                                           eps, residual_in_fp32);
    return {outs[0], outs[1]};
  }
  auto outs = AddRmsNormFunction::apply(hidden, optional_input(residual), weight,
                                        optional_input(shift), optional_input(scale),
                                        optional_input(hidden_gate), eps, residual_in_fp32);
  return {outs[0], outs[1]};
}

bool add_rms_norm_linear_supported(const torch::Tensor& hidden, const torch::Tensor& residual,
                                   const torch::Tensor& weight, const torch::Tensor& shift,
                                   const torch::Tensor& scale, const torch::Tensor& hidden_gate,
                                   const torch::Tensor& linear_weight,
                                   const torch::Tensor& linear_bias) {
  if (!add_rms_norm_supported(hidden, residual, weight, shift, scale, hidden_gate)) return false;
  if (hidden_gate.defined() && hidden_gate.scalar_type() != hidden.scalar_type()) return false;
  if (tracks_grad({&hidden, &residual, &weight, &shift, &scale, &hidden_gate, &linear_weight,
                   &linear_bias})) {
    return false;
  }
  const int64_t dim = hidden.size(-1), rows = hidden.numel() / dim;
  if (!kernels::norm_linear_supported(static_cast<int>(rows),
                                      static_cast<int>(dim), elem_type(hidden))) {
    return false;
  }
  const auto dtype = hidden.scalar_type();
  const bool weight_ok = linear_weight.dim() == 2 && linear_weight.size(1) == dim &&
                         linear_weight.size(0) >= 1 &&
                         linear_weight.size(0) <= std::numeric_limits<int>::max() &&
                         linear_weight.scalar_type() == dtype && linear_weight.is_contiguous() &&
                         reinterpret_cast<uintptr_t>(linear_weight.data_ptr()) % 16 == 0 &&
                         on_device_of(linear_weight, hidden);
  const bool bias_ok = !linear_bias.defined() ||
                       (linear_bias.dim() == 1 && linear_bias.size(0) == linear_weight.size(0) &&
                        linear_bias.scalar_type() == dtype && linear_bias.is_contiguous() &&
                        on_device_of(linear_bias, hidden));
  return weight_ok && bias_ok;
}

std::pair<torch::Tensor, torch::Tensor> add_rms_norm_modulate_linear(
    const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight,
    double eps, bool residual_in_fp32, const torch::Tensor& shift, const torch::Tensor& scale,
    const torch::Tensor& hidden_gate, const torch::Tensor& linear_weight,
    const torch::Tensor& linear_bias) {
  TORCH_CHECK(!tracks_grad({&hidden, &residual, &weight, &shift, &scale, &hidden_gate,
                            &linear_weight, &linear_bias}),
              "add_rms_norm_modulate_linear: the fused kernel computes no gradients");
  DeviceGuard guard(hidden.device());
  const auto in_type = hidden.scalar_type();
  const auto res_type = residual_in_fp32 ? torch::kFloat : in_type;
  const auto in = add_inputs(hidden, residual, weight, shift, scale, hidden_gate, res_type);
  const int64_t features = linear_weight.size(0);
  auto out_sizes = hidden.sizes().vec();
  out_sizes.back() = features;
  auto out = torch::empty(out_sizes, hidden.options());
  auto residual_out = torch::empty(hidden.sizes(), hidden.options().dtype(res_type));
  maybe_poison({out, residual_out});

  kernels::NormLinearParams p;
  p.norm = add_params(in, eps);
  p.norm.residual_out = residual_out.data_ptr();
  p.out_features = static_cast<int>(features);
  p.weight = linear_weight.data_ptr();
  p.bias = ptr_or_null(linear_bias);
  p.out = out.data_ptr();
  p.dependent_launch = dependent_launch_enabled();
  check_launch(kernels::norm_linear_cuda(p, elem_type(in_type), elem_type(res_type),
                                         current_stream()),
               "add_rms_norm_modulate_linear");
  return {out, residual_out};
}

bool gated_rms_norm_supported(const torch::Tensor& x, const torch::Tensor& z,
                              const torch::Tensor& weight, int64_t group_size) {
  if (!on_kernel_device(x) || !kernel_dtype(x) || !rows_fit(x) || !unit_last_stride(x)) {
    return false;
  }
  if (group_size < 1 || group_size > kernels::kRmsNormMaxDim || x.size(-1) % group_size != 0 ||
      x.size(-1) / group_size > kMaxGridY) {
    return false;
  }
  if (z.defined() && (z.scalar_type() != x.scalar_type() || !unit_last_stride(z))) return false;
  return weight.is_floating_point() && on_device_of(z, x) && on_device_of(weight, x);
}

torch::Tensor gated_rms_norm(const torch::Tensor& x, const torch::Tensor& z,
                             const torch::Tensor& weight, int64_t group_size, double eps,
                             bool norm_before_gate) {
  return GatedRmsNormFunction::apply(x, optional_input(z), weight, group_size, eps,
                                     norm_before_gate);
}

}  // namespace aim::ops::AIM_OPS_CUDA_NS
