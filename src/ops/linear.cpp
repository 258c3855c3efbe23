#include "aim/ops/linear.h"

#include <torch/torch.h>

#include "aim/ops/dispatch.h"
#include "ops/kernel_table.h"
#ifdef AIM_WITH_CUDA
#include "ops/linear_cuda.h"
#endif

namespace aim::ops {

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
#ifdef AIM_WITH_CUDA
  if (x.is_cuda() && cuda_kernels_enabled() && cuda::linear_supported(x, weight, bias)) {
    return cuda::linear(x, weight, bias);
  }
#endif
  if (const auto* k = emulated_kernels_for(x); k && k->linear_supported(x, weight, bias)) {
    return k->linear(x, weight, bias);
  }
  return torch::nn::functional::linear(x, weight, bias);
}

}  // namespace aim::ops
