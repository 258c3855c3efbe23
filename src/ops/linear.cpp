#include "aim/ops/linear.h"

#include <torch/torch.h>

#include <cstdlib>
#include <string>

#include "aim/ops/dispatch.h"
#include "ops/kernel_table.h"
#ifdef AIM_WITH_CUDA
#include "ops/linear_cuda.h"
#endif

namespace aim::ops {

namespace {

// AIM_SMALL_LINEAR=0: torch's linear (cuBLAS) where the small-batch kernel would run; 1 or unset:
// the kernel. Read at every call, so a benchmark can compare both in one process.
bool small_linear_enabled() {
  const char* v = std::getenv("AIM_SMALL_LINEAR");
  if (v == nullptr || *v == '\0') return true;
  const std::string s(v);
  TORCH_CHECK(s == "0" || s == "1", "environment variable AIM_SMALL_LINEAR: expected 0 or 1, found '", s, "'");
  return s == "1";
}

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
