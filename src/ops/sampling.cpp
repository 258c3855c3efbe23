// Checks and dispatch for token selection.
#include "aim/ops/sampling.h"

#include <torch/torch.h>

namespace aim::ops {

torch::Tensor cfg_combine(const torch::Tensor& cond, const torch::Tensor& uncond, double scale) {
  TORCH_CHECK(cond.sizes() == uncond.sizes(), "cfg_combine: cond ", cond.sizes(), " != uncond ",
              uncond.sizes());
  return uncond + (cond - uncond) * scale;
}

torch::Tensor sample_tokens(const torch::Tensor& logits, double temperature, int64_t top_k,
                            double top_p, const torch::Tensor& uniforms) {
  TORCH_CHECK(logits.dim() == 2, "sample_tokens: logits must be [B, V], got ", logits.sizes());
  TORCH_CHECK(temperature > 0, "sample_tokens: temperature must be > 0, got ", temperature);
  TORCH_CHECK(top_k >= 0, "sample_tokens: top_k must be >= 0, got ", top_k);
  TORCH_CHECK(top_p > 0 && top_p <= 1, "sample_tokens: top_p must be in (0, 1], got ", top_p);
  TORCH_CHECK(top_k == 1 || (uniforms.dim() == 1 && uniforms.size(0) == logits.size(0)),
              "sample_tokens: uniforms must be [", logits.size(0), "], got ", uniforms.sizes());
  return ref::sample_tokens(logits, temperature, top_k, top_p,
                            top_k == 1 ? uniforms : uniforms.to(logits.device()));
}

}  // namespace aim::ops
