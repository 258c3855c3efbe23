#include "aim/ops/linear.h"

#include <torch/torch.h>

#include "aim/ops/dispatch.h"
#include "ops/kernel_table.h"
#ifdef AIM_WITH_CUDA
#include "ops/linear_cuda.h"
#endif

namespace aim::ops {

namespace {

// AIM_SMALL_LINEAR=0: torch's linear (cuBLAS) where the small-batch kernel would run; 1 or unset:
// the kernel.
bool small_linear_enabled() { return env_switch("AIM_SMALL_LINEAR", true); }

}  // namespace

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
#ifdef AIM_WITH_CUDA
  if (x.is_cuda() && cuda_kernels_enabled() && small_linear_enabled() && cuda::linear_supported(x, weight, bias)) {
    return cuda::linear(x, weight, bias);
  }
#endif
  if (const auto* k = emulated_kernels_for(x); k && small_linear_enabled() && k->linear_supported(x, weight, bias)) {
    return k->linear(x, weight, bias);
  }
  return torch::nn::functional::linear(x, weight, bias);
}

}  // namespace aim::ops
