// Fills kernels/selective_scan.h from LibTorch tensors; the forward and backward launches are
// tied together by a torch::autograd::Function.
#include "ops/selective_scan_cuda.h"
#include "ops/cuda_backend.h"
#include "ops/optional_inputs.h"

#include <torch/torch.h>

#include <initializer_list>
#include <limits>
#include <optional>

#include "aim/ops/dispatch.h"
#include "aim/ops/split.h"
#include "selective_scan.h"

namespace aim::ops::AIM_OPS_CUDA_NS {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxInt = std::numeric_limits<int>::max();

// Undefined, or of `dtype` on x's device.
bool same_kind(const torch::Tensor& t, const torch::Tensor& x) {
  return !t.defined() || (t.scalar_type() == x.scalar_type() && t.device() == x.device());
}

// Undefined, or floating point on x's device.
bool float_on_device(const torch::Tensor& t, const torch::Tensor& x) {
  return !t.defined() || (t.is_floating_point() && t.device() == x.device());
}

const float* float_ptr(const torch::Tensor& t) {
  return t.defined() ? t.data_ptr<float>() : nullptr;
}
float* mut_float_ptr(torch::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }


// [B, E, L] of `dtype` in x's layout: channel-last when x is, else contiguous.
torch::Tensor empty_like_layout(const torch::Tensor& x, torch::ScalarType dtype) {
  const auto opts = x.options().dtype(dtype);
  if (x.stride(1) == 1 && x.size(2) > 1 && x.size(1) > 1) {
    return torch::empty({x.size(0), x.size(2), x.size(1)}, opts).transpose(1, 2);
  }
  return torch::empty(x.sizes(), opts);
}

void strides3(const torch::Tensor& t, int64_t* batch, int64_t* mid, int64_t* len) {
  *batch = t.stride(0);
  *mid = t.stride(1);
  *len = t.stride(2);
}

// Inputs of the scan; A, D, delta_bias, initial_state already fp32 and contiguous.
kernels::SelectiveScanParams scan_params(const torch::Tensor& u, const torch::Tensor& delta,
                                         const torch::Tensor& A_f, const torch::Tensor& Bm,
                                         const torch::Tensor& Cm, const torch::Tensor& D_f,
                                         const torch::Tensor& z, const torch::Tensor& bias_f,
                                         const torch::Tensor& init_f, bool delta_softplus) {
  kernels::SelectiveScanParams p;
  p.batch = static_cast<int>(u.size(0));
  p.channels = static_cast<int>(u.size(1));
  p.len = static_cast<int>(u.size(2));
  p.dstate = static_cast<int>(A_f.size(1));
  p.delta_softplus = delta_softplus;
  p.u = u.data_ptr();
  strides3(u, &p.u_batch_stride, &p.u_c_stride, &p.u_l_stride);
  p.delta = delta.data_ptr();
  strides3(delta, &p.delta_batch_stride, &p.delta_c_stride, &p.delta_l_stride);
  if (z.defined()) {
    p.z = z.data_ptr();
    strides3(z, &p.z_batch_stride, &p.z_c_stride, &p.z_l_stride);
  }
  p.Bm = Bm.data_ptr();
  strides3(Bm, &p.b_batch_stride, &p.b_n_stride, &p.b_l_stride);
  p.Cm = Cm.data_ptr();
  strides3(Cm, &p.c_batch_stride, &p.c_n_stride, &p.c_l_stride);
  p.A = A_f.data_ptr<float>();
  p.D = float_ptr(D_f);
  p.delta_bias = float_ptr(bias_f);
  p.initial_state = float_ptr(init_f);
  return p;
}

struct ForwardOut {
  torch::Tensor y, last_state, chunk_states;
};

// y and, when asked, last_state and the chunk states the backward needs.
ForwardOut run_forward(const torch::Tensor& u, const torch::Tensor& delta,
                       const torch::Tensor& A_f, const torch::Tensor& Bm, const torch::Tensor& Cm,
                       const torch::Tensor& D_f, const torch::Tensor& z,
                       const torch::Tensor& bias_f, const torch::Tensor& init_f,
                       bool delta_softplus, bool last_state, bool keep_chunks) {
  const int64_t batch = u.size(0), channels = u.size(1), dstate = A_f.size(1);
  const auto fopts = u.options().dtype(torch::kFloat);
  ForwardOut out;
  out.y = empty_like_layout(u, u.scalar_type());
  if (last_state) out.last_state = torch::empty({batch, channels, dstate}, fopts);
  if (keep_chunks) {
    const int64_t chunks = kernels::selective_scan_chunks(static_cast<int>(u.size(2)));
    out.chunk_states = torch::empty({batch, channels, chunks, dstate}, fopts);
  }
  maybe_poison({out.y, out.last_state, out.chunk_states});

  auto p = scan_params(u, delta, A_f, Bm, Cm, D_f, z, bias_f, init_f, delta_softplus);
  p.y = out.y.data_ptr();
  strides3(out.y, &p.y_batch_stride, &p.y_c_stride, &p.y_l_stride);
  p.last_state = mut_float_ptr(out.last_state);
  p.chunk_states = mut_float_ptr(out.chunk_states);
  check_launch(kernels::selective_scan_fwd_cuda(p, elem_type(u), current_stream()),
               "selective_scan forward");
  return out;
}

class SelectiveScanFunction : public torch::autograd::Function<SelectiveScanFunction> {
 public:
  // Returns {y, last_state}. D, z, delta_bias and initial_state may be empty.
  static tensor_list forward(AutogradContext* ctx, const torch::Tensor& u,
                             const torch::Tensor& delta, const torch::Tensor& A,
                             const torch::Tensor& Bm, const torch::Tensor& Cm,
                             const std::optional<torch::Tensor>& D_opt,
                             const std::optional<torch::Tensor>& z_opt,
                             const std::optional<torch::Tensor>& bias_opt,
                             const std::optional<torch::Tensor>& init_opt, bool delta_softplus) {
    const auto D = value_or_undefined(D_opt), z = value_or_undefined(z_opt);
    const auto bias = value_or_undefined(bias_opt), init = value_or_undefined(init_opt);
    DeviceGuard guard(u.device());
    auto out = run_forward(u, delta, as_float(A), Bm, Cm, as_float(D), z, as_float(bias),
                           as_float(init), delta_softplus, /*last_state=*/true,
                           /*keep_chunks=*/true);
    ctx->save_for_backward({u, delta, A, Bm, Cm, D, z, bias, init, out.chunk_states});
    ctx->saved_data["delta_softplus"] = delta_softplus;
    // last_state is often unused (training): no zeros for its gradient.
    ctx->set_materialize_grads(false);
    return {out.y, out.last_state};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& u = saved[0];
    const auto& delta = saved[1];
    const auto& A = saved[2];
    const auto& Bm = saved[3];
    const auto& Cm = saved[4];
    const auto& D = saved[5];
    const auto& z = saved[6];
    const auto& bias = saved[7];
    const auto& init = saved[8];
    const auto& chunk_states = saved[9];
    DeviceGuard guard(u.device());
    const int64_t batch = u.size(0), channels = u.size(1), len = u.size(2), dstate = A.size(1);
    const auto fopts = u.options().dtype(torch::kFloat);

    const auto dout = grads[0].defined() ? grads[0].to(u.scalar_type())
                                         : torch::zeros(u.sizes(), u.options());
    const auto dlast = grads[1].defined() ? grads[1].to(torch::kFloat).contiguous()
                                          : torch::Tensor();
    const auto A_f = as_float(A), D_f = as_float(D), bias_f = as_float(bias);
    const auto init_f = as_float(init);

    auto du = empty_like_layout(u, u.scalar_type());
    auto ddelta = empty_like_layout(delta, delta.scalar_type());
    torch::Tensor dz, dinit, dD, dbias;
    if (z.defined()) {
      // z's place in the gradient of the tensor it was split from (in_proj's output in a Mamba1
      // mixer), in z's strides: written there, it needs no concatenation.
      dz = split_grad_slot(z);
      if (!dz.defined()) dz = empty_like_layout(z, z.scalar_type());
    }
    if (init.defined()) dinit = torch::empty({batch, channels, dstate}, fopts);
    auto dA = torch::empty({channels, dstate}, fopts);
    if (D.defined()) dD = torch::empty({channels}, fopts);
    if (bias.defined()) dbias = torch::empty({channels}, fopts);
    // The kernels write dB, dC as [B, L, N] (n fastest); returned as [B, N, L] views.
    auto dB = torch::empty({batch, len, dstate}, fopts);
    auto dC = torch::empty({batch, len, dstate}, fopts);

    auto p = scan_params(u, delta, A_f, Bm, Cm, D_f, z, bias_f, init_f,
                         ctx->saved_data["delta_softplus"].toBool());
    p.chunk_states = const_cast<float*>(chunk_states.data_ptr<float>());
    p.dout = dout.data_ptr();
    strides3(dout, &p.dout_batch_stride, &p.dout_c_stride, &p.dout_l_stride);
    p.dlast_state = float_ptr(dlast);
    p.bwd_groups_per_block = kernels::selective_scan_bwd_groups_per_block(p);
    auto workspace = torch::empty({kernels::selective_scan_bwd_workspace_size(p)}, fopts);
    maybe_poison({du, ddelta, dz, dinit, dA, dD, dbias, dB, dC, workspace});
    p.du = du.data_ptr();
    strides3(du, &p.du_batch_stride, &p.du_c_stride, &p.du_l_stride);
    p.ddelta = ddelta.data_ptr();
    strides3(ddelta, &p.ddelta_batch_stride, &p.ddelta_c_stride, &p.ddelta_l_stride);
    if (dz.defined()) {
      p.dz = dz.data_ptr();
      strides3(dz, &p.dz_batch_stride, &p.dz_c_stride, &p.dz_l_stride);
    }
    p.dinitial_state = mut_float_ptr(dinit);
    p.dA = dA.data_ptr<float>();
    p.dD = mut_float_ptr(dD);
    p.ddelta_bias = mut_float_ptr(dbias);
    p.dB = dB.data_ptr<float>();
    p.dC = dC.data_ptr<float>();
    p.workspace = workspace.data_ptr<float>();
    check_launch(kernels::selective_scan_bwd_cuda(p, elem_type(u), current_stream()),
                 "selective_scan backward");

    return {du,
            ddelta,
            dA.to(A.scalar_type()),
            into_split_grad_slot(Bm, dB.transpose(1, 2)),
            into_split_grad_slot(Cm, dC.transpose(1, 2)),
            D.defined() ? dD.to(D.scalar_type()) : torch::Tensor(),
            dz,
            bias.defined() ? dbias.to(bias.scalar_type()) : torch::Tensor(),
            init.defined() ? dinit.to(init.scalar_type()) : torch::Tensor(),
            torch::Tensor()};
  }
};

}  // namespace

bool selective_scan_supported(const torch::Tensor& u, const torch::Tensor& delta,
                              const torch::Tensor& A, const torch::Tensor& Bm,
                              const torch::Tensor& Cm, const torch::Tensor& D,
                              const torch::Tensor& z, const torch::Tensor& delta_bias,
                              const torch::Tensor& initial_state) {
  if (!on_kernel_device(u) || !kernel_dtype(u) || u.dim() != 3 || A.dim() != 2) return false;
  if (!same_kind(delta, u) || !same_kind(Bm, u) || !same_kind(Cm, u) || !same_kind(z, u)) {
    return false;
  }
  if (!float_on_device(A, u) || !float_on_device(D, u) || !float_on_device(delta_bias, u) ||
      !float_on_device(initial_state, u)) {
    return false;
  }
  const int64_t batch = u.size(0), channels = u.size(1), len = u.size(2), dstate = A.size(1);
  return batch >= 1 && batch <= kMaxGridY && channels >= 1 && channels <= kMaxInt && len >= 1 &&
         len <= kMaxInt && dstate >= 1 && dstate <= kernels::kSelectiveScanMaxDstate;
}

SelectiveScanResult selective_scan(const torch::Tensor& u, const torch::Tensor& delta,
                                   const torch::Tensor& A, const torch::Tensor& Bm,
                                   const torch::Tensor& Cm, const torch::Tensor& D,
                                   const torch::Tensor& z, const torch::Tensor& delta_bias,
                                   bool delta_softplus, const torch::Tensor& initial_state,
                                   bool return_last_state) {
  SelectiveScanResult result;
  if (!tracks_grad({&u, &delta, &A, &Bm, &Cm, &D, &z, &delta_bias, &initial_state})) {
    DeviceGuard guard(u.device());
    auto out = run_forward(u, delta, as_float(A), Bm, Cm, as_float(D), z, as_float(delta_bias),
                           as_float(initial_state), delta_softplus, return_last_state,
                           /*keep_chunks=*/false);
    result.y = out.y;
    result.last_state = out.last_state;
    return result;
  }
  auto outs = SelectiveScanFunction::apply(u, delta, A, Bm, Cm, optional_input(D),
                                           optional_input(z), optional_input(delta_bias),
                                           optional_input(initial_state), delta_softplus);
  result.y = outs[0];
  if (return_last_state) result.last_state = outs[1];
  return result;
}

bool selective_state_update_supported(const torch::Tensor& state, const torch::Tensor& u,
                                      const torch::Tensor& delta, const torch::Tensor& A,
                                      const torch::Tensor& Bm, const torch::Tensor& Cm,
                                      const torch::Tensor& D, const torch::Tensor& z,
                                      const torch::Tensor& delta_bias) {
  if (!on_kernel_device(u) || !kernel_dtype(u) || u.dim() != 2 || A.dim() != 2 ||
      state.dim() != 3) {
    return false;
  }
  if (!same_kind(delta, u) || !same_kind(Bm, u) || !same_kind(Cm, u) || !same_kind(z, u)) {
    return false;
  }
  if (!kernel_dtype(state) || state.device() != u.device() ||
      (state.size(2) > 1 && state.stride(2) != 1) || !distinct_elements(state)) {
    return false;
  }
  if (!float_on_device(A, u) || !float_on_device(D, u) || !float_on_device(delta_bias, u)) {
    return false;
  }
  if (tracks_grad({&state, &u, &delta, &A, &Bm, &Cm, &D, &z, &delta_bias})) return false;
  const int64_t batch = u.size(0), channels = u.size(1), dstate = A.size(1);
  return batch >= 1 && batch <= kMaxGridY && channels >= 1 && channels <= kMaxInt &&
         dstate >= 1 && dstate <= kMaxInt;
}

torch::Tensor selective_state_update(torch::Tensor& state, const torch::Tensor& u,
                                     const torch::Tensor& delta, const torch::Tensor& A,
                                     const torch::Tensor& Bm, const torch::Tensor& Cm,
                                     const torch::Tensor& D, const torch::Tensor& z,
                                     const torch::Tensor& delta_bias, bool delta_softplus) {
  DeviceGuard guard(u.device());
  const auto A_f = as_float(A), D_f = as_float(D), bias_f = as_float(delta_bias);
  auto y = torch::empty(u.sizes(), u.options());
  maybe_poison({y});

  kernels::SelectiveStateUpdateParams p;
  p.batch = static_cast<int>(u.size(0));
  p.channels = static_cast<int>(u.size(1));
  p.dstate = static_cast<int>(A_f.size(1));
  p.delta_softplus = delta_softplus;
  p.state = state.data_ptr();
  p.state_type = elem_type(state);
  p.state_batch_stride = state.stride(0);
  p.state_c_stride = state.stride(1);
  p.u = u.data_ptr();
  p.u_batch_stride = u.stride(0);
  p.u_c_stride = u.stride(1);
  p.delta = delta.data_ptr();
  p.delta_batch_stride = delta.stride(0);
  p.delta_c_stride = delta.stride(1);
  if (z.defined()) {
    p.z = z.data_ptr();
    p.z_batch_stride = z.stride(0);
    p.z_c_stride = z.stride(1);
  }
  p.Bm = Bm.data_ptr();
  p.b_batch_stride = Bm.stride(0);
  p.b_n_stride = Bm.stride(1);
  p.Cm = Cm.data_ptr();
  p.c_batch_stride = Cm.stride(0);
  p.c_n_stride = Cm.stride(1);
  p.A = A_f.data_ptr<float>();
  p.D = float_ptr(D_f);
  p.delta_bias = float_ptr(bias_f);
  p.y = y.data_ptr();
  p.y_batch_stride = y.stride(0);
  p.y_c_stride = y.stride(1);
  check_launch(kernels::selective_state_update_cuda(p, elem_type(u), current_stream()),
               "selective_state_update");
  return y;
}

}  // namespace aim::ops::AIM_OPS_CUDA_NS
