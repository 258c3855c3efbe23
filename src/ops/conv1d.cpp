// Checks and dispatch for the causal conv1d ops.
#include "aim/ops/conv1d.h"

#include <torch/torch.h>

#include "aim/ops/dispatch.h"
#include "ops/kernel_table.h"
#include "ops/conv1d_cpu.h"
#ifdef AIM_WITH_CUDA
#include "ops/conv1d_cuda.h"
#endif

namespace aim::ops {

namespace {
int64_t check_weight(const torch::Tensor& weight, const torch::Tensor& bias, int64_t channels,
                     const char* op) {
  const bool ok3 = weight.dim() == 3 && weight.size(1) == 1;
  TORCH_CHECK((weight.dim() == 2 || ok3) && weight.size(0) == channels, op,
              ": weight must be [C, W] or [C, 1, W] with C = ", channels, ", got ",
              weight.sizes());
  const int64_t width = weight.size(-1);
  TORCH_CHECK(width >= 1 && width <= 8, op, ": width must be in [1, 8], got ", width);
  if (bias.defined()) {
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == channels, op, ": bias must be [", channels,
                "], got ", bias.sizes());
  }
  return width;
}
}  // namespace

std::pair<torch::Tensor, torch::Tensor> causal_conv1d(const torch::Tensor& x,
                                                      const torch::Tensor& weight,
                                                      const torch::Tensor& bias, bool silu,
                                                      bool return_state) {
  TORCH_CHECK(x.dim() == 3, "causal_conv1d: x must be [B, C, L], got ", x.sizes());
  const int64_t width = check_weight(weight, bias, x.size(1), "causal_conv1d");
#ifdef AIM_WITH_CUDA
  if (x.is_cuda() && cuda_kernels_enabled() && cuda::causal_conv1d_supported(x, weight, bias)) {
    auto out = cuda::causal_conv1d(x, weight, bias, silu);
    return {out, return_state ? ref::conv_state(x, width) : torch::Tensor()};
  }
#endif
  if (const auto* k = emulated_kernels_for(x); k && k->causal_conv1d_supported(x, weight, bias)) {
    auto out = k->causal_conv1d(x, weight, bias, silu);
    return {out, return_state ? ref::conv_state(x, width) : torch::Tensor()};
  }
  if (x.device().is_cpu() && cpu_kernels_enabled() && cpu::causal_conv1d_supported(x, weight, bias)) {
    auto out = cpu::causal_conv1d(x, weight, bias, silu);
    return {out, return_state ? ref::conv_state(x, width) : torch::Tensor()};
  }
  return ref::causal_conv1d(x, weight, bias, silu, return_state);
}

torch::Tensor causal_conv1d_update(const torch::Tensor& x, torch::Tensor& conv_state,
                                   const torch::Tensor& weight, const torch::Tensor& bias,
                                   bool silu) {
  TORCH_CHECK(x.dim() == 2, "causal_conv1d_update: x must be [B, C], got ", x.sizes());
  const int64_t width = check_weight(weight, bias, x.size(1), "causal_conv1d_update");
  TORCH_CHECK(conv_state.dim() == 3 && conv_state.size(0) == x.size(0) &&
                  conv_state.size(1) == x.size(1) && conv_state.size(2) == width,
              "causal_conv1d_update: conv_state must be [", x.size(0), ", ", x.size(1), ", ",
              width, "], got ", conv_state.sizes());
#ifdef AIM_WITH_CUDA
  if (x.is_cuda() && cuda_kernels_enabled() &&
      cuda::causal_conv1d_update_supported(x, conv_state, weight, bias)) {
    return cuda::causal_conv1d_update(x, conv_state, weight, bias, silu);
  }
#endif
  if (const auto* k = emulated_kernels_for(x);
      k && k->causal_conv1d_update_supported(x, conv_state, weight, bias)) {
    return k->causal_conv1d_update(x, conv_state, weight, bias, silu);
  }
  return ref::causal_conv1d_update(x, conv_state, weight, bias, silu);
}

}  // namespace aim::ops
