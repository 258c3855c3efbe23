// Plain LibTorch lm_head + cross-entropy: the oracle for the chunked CUDA path.
#include <torch/torch.h>

#include "aim/ops/loss.h"

namespace aim::ops::ref {

torch::Tensor linear_cross_entropy(const torch::Tensor& hidden, const torch::Tensor& weight,
                                   const torch::Tensor& targets, int64_t ignore_index) {
  auto logits = torch::linear(hidden, weight.to(hidden.scalar_type()));
  return torch::nn::functional::cross_entropy(
      logits.to(torch::kFloat), targets,
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(ignore_index));
}

}  // namespace aim::ops::ref
