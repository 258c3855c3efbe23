// Fills kernels/causal_conv1d.h from LibTorch tensors; the forward and backward launches are
// tied together by a torch::autograd::Function.
#include "ops/conv1d_cuda.h"
#include "ops/cuda_backend.h"

#include <torch/torch.h>

#include <limits>

#include "aim/ops/dispatch.h"
#include "aim/ops/split.h"
#include "causal_conv1d.h"

namespace aim::ops::AIM_OPS_CUDA_NS {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// [B, C, L] in x's layout: channel-last when x is, else contiguous.
torch::Tensor empty_like_layout(const torch::Tensor& x) {
  if (x.stride(1) == 1 && x.size(2) > 1) {
    return torch::empty({x.size(0), x.size(2), x.size(1)}, x.options()).transpose(1, 2);
  }
  return torch::empty(x.sizes(), x.options());
}

kernels::CausalConv1dParams base_params(const torch::Tensor& x, const torch::Tensor& w2d,
                                        const torch::Tensor& bias_f, bool silu) {
  kernels::CausalConv1dParams p;
  p.batch = static_cast<int>(x.size(0));
  p.channels = static_cast<int>(x.size(1));
  p.len = static_cast<int>(x.size(2));
  p.width = static_cast<int>(w2d.size(1));
  p.x = x.data_ptr();
  p.x_batch_stride = x.stride(0);
  p.x_c_stride = x.stride(1);
  p.x_l_stride = x.stride(2);
  p.weight = w2d.data_ptr<float>();
  p.bias = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  p.silu = silu;
  return p;
}

torch::Tensor weight_2d_f32(const torch::Tensor& weight) {
  return weight.reshape({weight.size(0), weight.size(-1)}).to(torch::kFloat).contiguous();
}

class CausalConv1dFunction : public torch::autograd::Function<CausalConv1dFunction> {
 public:
  // bias is always defined here (zeros when the module has none; its grad is then dropped).
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, const torch::Tensor& bias,
                               bool silu) {
    ctx->save_for_backward({x, weight, bias});
    ctx->saved_data["silu"] = silu;
    DeviceGuard guard(x.device());
    const auto w2d = weight_2d_f32(weight);
    const auto bias_f = bias.to(torch::kFloat).contiguous();
    auto out = empty_like_layout(x);
    maybe_poison({out});
    auto p = base_params(x, w2d, bias_f, silu);
    p.out = out.data_ptr();
    p.out_batch_stride = out.stride(0);
    p.out_c_stride = out.stride(1);
    p.out_l_stride = out.stride(2);
    check_launch(kernels::causal_conv1d_fwd_cuda(p, elem_type(x),
                                                 current_stream()),
                 "causal_conv1d forward");
    return out;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& weight = saved[1];
    const auto& bias = saved[2];
    const bool silu = ctx->saved_data["silu"].toBool();
    DeviceGuard guard(x.device());
    const auto dout = grads[0].to(x.scalar_type());
    const auto w2d = weight_2d_f32(weight);
    const auto bias_f = bias.to(torch::kFloat).contiguous();
    // x's place in the gradient of the tensor it was split from (in_proj's output in a Mamba2
    // mixer), in x's strides: written there, it needs no concatenation.
    auto dx = split_grad_slot(x);
    if (!dx.defined()) dx = empty_like_layout(x);
    maybe_poison({dx});
    auto dw = torch::empty_like(w2d);
    auto db = torch::empty_like(bias_f);
    maybe_poison({dw, db});
    auto p = base_params(x, w2d, bias_f, silu);
    auto workspace = torch::empty({kernels::causal_conv1d_bwd_workspace_size(p)},
                                  w2d.options());
    p.workspace = workspace.data_ptr<float>();
    p.dout = dout.data_ptr();
    p.dout_batch_stride = dout.stride(0);
    p.dout_c_stride = dout.stride(1);
    p.dout_l_stride = dout.stride(2);
    p.dx = dx.data_ptr();
    p.dx_batch_stride = dx.stride(0);
    p.dx_c_stride = dx.stride(1);
    p.dx_l_stride = dx.stride(2);
    p.dweight = dw.data_ptr<float>();
    p.dbias = db.data_ptr<float>();
    check_launch(kernels::causal_conv1d_bwd_cuda(p, elem_type(x),
                                                 current_stream()),
                 "causal_conv1d backward");
    return {dx, dw.view(weight.sizes()).to(weight.scalar_type()), db.to(bias.scalar_type()),
            torch::Tensor()};
  }
};

}  // namespace

bool causal_conv1d_supported(const torch::Tensor& x, const torch::Tensor& weight,
                             const torch::Tensor& bias) {
  const auto dt = x.scalar_type();
  return on_kernel_device(x) && kernel_dtype(dt) &&
         weight.device() == x.device() && (!bias.defined() || bias.device() == x.device()) &&
         weight.size(-1) <= 8 && x.size(0) <= 65535 &&
         x.size(1) <= std::numeric_limits<int>::max() && x.size(2) <= std::numeric_limits<int>::max();
}

torch::Tensor causal_conv1d(const torch::Tensor& x, const torch::Tensor& weight,
                            const torch::Tensor& bias, bool silu) {
  const auto b = bias.defined() ? bias : torch::zeros({x.size(1)}, weight.options());
  return CausalConv1dFunction::apply(x, weight, b, silu);
}

bool causal_conv1d_update_supported(const torch::Tensor& x, const torch::Tensor& conv_state,
                                    const torch::Tensor& weight, const torch::Tensor& bias) {
  if (!on_kernel_device(x) || x.dim() != 2 || !kernel_dtype(x) || !kernel_dtype(conv_state) ||
      !kernel_dtype(weight) || (bias.defined() && !kernel_dtype(bias))) {
    return false;
  }
  const int64_t width = weight.size(-1);
  return conv_state.device() == x.device() && weight.device() == x.device() &&
         (!bias.defined() || bias.device() == x.device()) && width >= 1 && width <= 8 &&
         (width == 1 || conv_state.stride(2) == 1) && distinct_elements(conv_state) &&
         x.size(0) * x.size(1) <= std::numeric_limits<int>::max() &&
         !tracks_grad({&x, &conv_state, &weight, &bias});
}

torch::Tensor causal_conv1d_update(const torch::Tensor& x, torch::Tensor& conv_state,
                                   const torch::Tensor& weight, const torch::Tensor& bias,
                                   bool silu) {
  DeviceGuard guard(x.device());
  const int64_t channels = x.size(1), width = weight.size(-1);
  // [C, 1, W] parameters are viewed as [C, W]; a bias of another type than the weight's is
  // brought to it (the kernel reads both in one type).
  const auto w2d = weight.reshape({channels, width}).contiguous();
  const auto b = bias.defined() ? bias.to(weight.scalar_type()).contiguous() : torch::Tensor();
  auto out = torch::empty(x.sizes(), x.options());
  maybe_poison({out});
  kernels::CausalConv1dUpdateParams p;
  p.batch = static_cast<int>(x.size(0));
  p.channels = static_cast<int>(channels);
  p.width = static_cast<int>(width);
  p.x = x.data_ptr();
  p.x_batch_stride = x.stride(0);
  p.x_c_stride = x.stride(1);
  p.state = conv_state.data_ptr();
  p.state_batch_stride = conv_state.stride(0);
  p.state_c_stride = conv_state.stride(1);
  p.state_type = elem_type(conv_state);
  p.weight = w2d.data_ptr();
  p.bias = b.defined() ? b.data_ptr() : nullptr;
  p.weight_type = elem_type(w2d);
  p.silu = silu;
  p.out = out.data_ptr();
  p.out_batch_stride = out.stride(0);
  p.out_c_stride = out.stride(1);
  check_launch(kernels::causal_conv1d_update_cuda(p, elem_type(x), current_stream()),
               "causal_conv1d_update");
  return out;
}

}  // namespace aim::ops::AIM_OPS_CUDA_NS
