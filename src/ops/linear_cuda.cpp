// Fills kernels/skinny_linear.h from LibTorch tensors (no autograd: decoding only).
#include "ops/linear_cuda.h"
#include "ops/cuda_backend.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "skinny_linear.h"

namespace aim::ops::AIM_OPS_CUDA_NS {

namespace {

bool on_16_bytes(const torch::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

}  // namespace

bool linear_supported(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  if (!on_kernel_device(x) || x.dim() < 1 || x.scalar_type() != torch::kBFloat16 || weight.dim() != 2 ||
      weight.scalar_type() != torch::kBFloat16 || weight.device() != x.device() || !weight.is_contiguous() ||
      weight.size(1) != x.size(-1) || !on_16_bytes(weight)) {
    return false;
  }
  if (bias.defined() && (bias.scalar_type() != torch::kBFloat16 || bias.device() != x.device() ||
                         bias.dim() != 1 || bias.size(0) != weight.size(0))) {
    return false;
  }
  const int64_t in = x.size(-1), out = weight.size(0), rows = x.numel() / std::max<int64_t>(in, 1);
  if (in > std::numeric_limits<int>::max() || out > std::numeric_limits<int>::max() ||
      !kernels::skinny_linear_supported(static_cast<int>(std::min<int64_t>(rows, kernels::kSkinnyLinearMaxRows + 1)),
                                        static_cast<int>(in), static_cast<int>(out))) {
    return false;
  }
  // The rows as one [rows, K] matrix with a unit last stride (a view; no copy).
  const auto x2 = x.reshape({rows, in});
  if (x2.stride(1) != 1 || x2.stride(0) % 8 != 0 || !on_16_bytes(x2)) return false;
  return !tracks_grad({&x, &weight, &bias});
}

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  DeviceGuard guard(x.device());
  const int64_t in = x.size(-1), out_features = weight.size(0), rows = x.numel() / in;
  const auto x2 = x.reshape({rows, in});
  const auto b = bias.defined() ? bias.contiguous() : torch::Tensor();
  auto sizes = x.sizes().vec();
  sizes.back() = out_features;
  auto out = torch::empty({rows, out_features}, x.options());
  maybe_poison({out});
  kernels::SkinnyLinearParams p;
  p.rows = static_cast<int>(rows);
  p.in_features = static_cast<int>(in);
  p.out_features = static_cast<int>(out_features);
  p.x = x2.data_ptr();
  p.x_row_stride = x2.stride(0);
  p.weight = weight.data_ptr();
  p.bias = b.defined() ? b.data_ptr() : nullptr;
  p.out = out.data_ptr();
  p.out_row_stride = out.stride(0);
  p.dependent_launch = dependent_launch_enabled();
  check_launch(kernels::skinny_linear_cuda(p, current_stream()), "linear (small batch)");
  return out.view(sizes);
}

}  // namespace aim::ops::AIM_OPS_CUDA_NS
