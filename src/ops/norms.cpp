// Checks and dispatch for the norm ops. The fused CUDA kernels slot in here; until then every
// device runs the reference (which is plain LibTorch and runs on CUDA tensors as well).
#include "aim/ops/norms.h"

#include <torch/torch.h>

namespace aim::ops {

namespace {
void check_weight(const torch::Tensor& x, const torch::Tensor& weight, const char* op) {
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least 1 dim, got ", x.sizes());
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1), op, ": weight must be [",
              x.size(-1), "], got ", weight.sizes());
  TORCH_CHECK(weight.device() == x.device(), op, ": weight on ", weight.device(), ", x on ",
              x.device());
}
}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  check_weight(x, weight, "rms_norm");
  return ref::rms_norm(x, weight, eps);
}

std::pair<torch::Tensor, torch::Tensor> add_rms_norm(const torch::Tensor& hidden,
                                                     const torch::Tensor& residual,
                                                     const torch::Tensor& weight, double eps,
                                                     bool residual_in_fp32) {
  check_weight(hidden, weight, "add_rms_norm");
  if (residual.defined()) {
    TORCH_CHECK(residual.sizes() == hidden.sizes(), "add_rms_norm: residual ", residual.sizes(),
                " != hidden ", hidden.sizes());
  }
  return ref::add_rms_norm(hidden, residual, weight, eps, residual_in_fp32);
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
  return ref::gated_rms_norm(x, z, weight, group_size, eps, norm_before_gate);
}

}  // namespace aim::ops
