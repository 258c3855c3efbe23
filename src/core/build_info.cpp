#include "aim/core/build_info.h"

#include <torch/torch.h>

#include "aim/core/error.h"

namespace aim {

bool built_with_cuda() {
#ifdef AIM_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::string build_info() {
  const bool cuda = torch::cuda::is_available();
  return str_cat("aim ", AIM_VERSION, " | LibTorch ", TORCH_VERSION, " | CUDA kernels ",
                 built_with_cuda() ? "built" : "not built", " | GPUs visible ",
                 cuda ? static_cast<int>(torch::cuda::device_count()) : 0);
}

}  // namespace aim
