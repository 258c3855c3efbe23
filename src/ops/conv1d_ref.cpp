// Plain LibTorch causal depthwise conv1d: the oracle for the CUDA kernels.
#include <torch/torch.h>

#include "aim/ops/conv1d.h"

namespace aim::ops::ref {

namespace {
torch::Tensor weight_2d(const torch::Tensor& weight) {
  return weight.dim() == 3 ? weight.squeeze(1) : weight;  // [C, 1, W] -> [C, W]
}
}  // namespace

std::pair<torch::Tensor, torch::Tensor> causal_conv1d(const torch::Tensor& x,
                                                      const torch::Tensor& weight,
                                                      const torch::Tensor& bias, bool silu,
                                                      bool return_state) {
  const auto w = weight_2d(weight);
  const int64_t channels = x.size(1), len = x.size(2), width = w.size(1);
  auto out = torch::conv1d(x, w.unsqueeze(1).to(x.scalar_type()),
                           bias.defined() ? bias.to(x.scalar_type()) : torch::Tensor(),
                           /*stride=*/1, /*padding=*/width - 1, /*dilation=*/1,
                           /*groups=*/channels);
  out = out.narrow(2, 0, len);
  if (silu) out = torch::silu(out);
  return {out, return_state ? conv_state(x, width) : torch::Tensor()};
}

torch::Tensor conv_state(const torch::Tensor& x, int64_t width) {
  // Last W inputs, left zero-padded for short sequences: what the step continues from.
  const int64_t len = x.size(2);
  auto state = len >= width ? x.narrow(2, len - width, width)
                            : torch::constant_pad_nd(x, {width - len, 0});
  return state.contiguous();
}

torch::Tensor causal_conv1d_update(const torch::Tensor& x, torch::Tensor& conv_state,
                                   const torch::Tensor& weight, const torch::Tensor& bias,
                                   bool silu) {
  const auto w = weight_2d(weight);
  const int64_t width = w.size(1);
  auto shifted = torch::cat({conv_state.narrow(2, 1, width - 1),
                             x.unsqueeze(2).to(conv_state.scalar_type())},
                            2);
  conv_state.copy_(shifted);
  auto out = (conv_state.to(torch::kFloat) * w.to(torch::kFloat)).sum(-1);
  if (bias.defined()) out = out + bias.to(torch::kFloat);
  if (silu) out = torch::silu(out);
  return out.to(x.scalar_type());
}

}  // namespace aim::ops::ref
