// Fills the fused sampling kernel's parameters from tensors and launches it on the current
// stream: no host work per row, no synchronisation, so the step can be captured in a graph.
#include "ops/sampling_cuda.h"
#include "ops/cuda_backend.h"

#include <torch/torch.h>

#include <climits>
#include <limits>

#include "aim/ops/dispatch.h"
#include "sample_tokens.h"

namespace aim::ops::AIM_OPS_CUDA_NS {

namespace {


// [B, V] in `dtype` with unit column stride; rows keep their stride (0 for an expanded row).
torch::Tensor rows_in(const torch::Tensor& t, torch::ScalarType dtype) {
  auto r = t.to(dtype);
  return r.size(1) <= 1 || r.stride(1) == 1 ? r : r.contiguous();
}

}  // namespace

bool sample_tokens_keyed_supported(const torch::Tensor& cond, const torch::Tensor& uncond,
                                   double temperature, int64_t top_k, double top_p) {
  if (!on_kernel_device(cond) || cond.dim() != 2 || !kernel_dtype(cond.scalar_type())) {
    return false;
  }
  if (uncond.defined() &&
      (!kernel_dtype(uncond.scalar_type()) || uncond.device() != cond.device())) {
    return false;
  }
  if (!(temperature > 0) || top_k < 0 || !(top_p > 0 && top_p <= 1)) return false;
  if (cond.size(0) > INT_MAX || !kernels::sample_tokens_supported(cond.size(1), top_k)) {
    return false;
  }
  return device_smem_optin(cond.device()) >= kernels::sample_tokens_smem_bytes(cond.size(1), top_k);
}

torch::Tensor sample_tokens_keyed(const torch::Tensor& cond, const torch::Tensor& uncond,
                                  double cfg, double temperature, int64_t top_k, double top_p,
                                  uint64_t seed, const torch::Tensor& sample_ids,
                                  int64_t step_value, const torch::Tensor& step,
                                  const torch::Tensor& uniforms) {
  DeviceGuard guard(cond.device());
  const int64_t rows = cond.size(0), vocab = cond.size(1);
  // Mixed fp32 / bf16 inputs: both as fp32 (exact), the combine is fp32 either way.
  const auto dtype = uncond.defined() && uncond.scalar_type() != cond.scalar_type()
                         ? torch::kFloat
                         : cond.scalar_type();
  const auto c = rows_in(cond, dtype);
  const auto u = uncond.defined() ? rows_in(uncond, dtype) : torch::Tensor();
  const auto ids = sample_ids.to(cond.device(), torch::kLong).contiguous();
  const auto step_dev = step.defined() ? step.to(cond.device(), torch::kLong) : torch::Tensor();
  TORCH_CHECK(!step_dev.defined() || step_dev.numel() == 1,
              "sample_tokens_keyed: step must hold one value, got ", step_dev.sizes());
  TORCH_CHECK(!uniforms.defined() ||
                  (uniforms.device() == cond.device() && uniforms.scalar_type() == torch::kDouble &&
                   uniforms.numel() == rows && uniforms.is_contiguous()),
              "sample_tokens_keyed: uniforms must be contiguous fp64 [", rows, "] on ",
              cond.device());
  auto tokens = torch::empty({rows}, cond.options().dtype(torch::kLong));
  if (poison_outputs()) {
    tokens.fill_(std::numeric_limits<int64_t>::min());
    if (uniforms.defined()) uniforms.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  if (rows == 0) return tokens;

  kernels::SampleTokensParams p;
  p.rows = static_cast<int>(rows);
  p.vocab = static_cast<int>(vocab);
  p.cond = c.data_ptr();
  p.cond_row_stride = c.stride(0);
  if (u.defined()) {
    p.uncond = u.data_ptr();
    p.uncond_row_stride = u.stride(0);
  }
  p.cfg = static_cast<float>(cfg);  // ATen rounds a double scalar to the fp32 tensors' type
  p.temperature = static_cast<float>(temperature);
  p.top_k = top_k >= vocab && top_k != 1 ? 0 : static_cast<int>(top_k);
  p.top_p = top_p;
  p.seed = seed;
  p.sample_ids = ids.data_ptr<int64_t>();
  p.step = step_value;
  p.step_ptr = step_dev.defined() ? step_dev.data_ptr<int64_t>() : nullptr;
  p.tokens = tokens.data_ptr<int64_t>();
  p.uniforms = uniforms.defined() ? uniforms.data_ptr<double>() : nullptr;
  p.dependent_launch = dependent_launch_enabled();
  const cudaError_t err = kernels::sample_tokens_cuda(
      p, elem_type(dtype), current_stream());
  TORCH_CHECK(err == cudaSuccess, "sample_tokens_keyed kernel launch failed: ",
              cudaGetErrorString(err));
  return tokens;
}

}  // namespace aim::ops::AIM_OPS_CUDA_NS
