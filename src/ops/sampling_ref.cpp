// Plain LibTorch token selection: the oracle for a fused sampling kernel.
#include <torch/torch.h>

#include "aim/ops/sampling.h"

namespace aim::ops::ref {

torch::Tensor top_p_removed(const torch::Tensor& logits, double top_p) {
  // Ascending order: drop the unlikely end while its mass is <= 1 - top_p.
  auto sorted = logits.sort(-1, /*descending=*/false);
  auto probs = torch::softmax(std::get<0>(sorted).to(torch::kDouble), -1);
  auto remove = probs.cumsum(-1) <= (1.0 - top_p);
  remove.select(-1, remove.size(-1) - 1).fill_(false);  // the most likely token stays
  return torch::zeros_like(remove).scatter(-1, std::get<1>(sorted), remove);
}

torch::Tensor sample_tokens(const torch::Tensor& logits, double temperature, int64_t top_k,
                            double top_p, const torch::Tensor& uniforms) {
  auto x = logits.to(torch::kFloat);
  if (top_k == 1) return x.argmax(-1);
  if (temperature != 1.0) x = x / temperature;
  torch::Tensor candidates;  // [B, K] indices into the vocabulary, or undefined for all
  if (top_k > 0 && top_k < x.size(-1)) {
    auto top = x.topk(top_k, -1, /*largest=*/true, /*sorted=*/true);
    x = std::get<0>(top);
    candidates = std::get<1>(top);
  }
  if (top_p < 1.0) x = x.masked_fill(top_p_removed(x, top_p), -std::numeric_limits<float>::infinity());
  // Inverse CDF in fp64: the first index whose cumulative probability exceeds u.
  auto probs = torch::softmax(x.to(torch::kDouble), -1);
  auto cdf = probs.cumsum(-1);
  auto u = uniforms.to(torch::kDouble).unsqueeze(-1) * cdf.select(-1, cdf.size(-1) - 1).unsqueeze(-1);
  auto idx = torch::searchsorted(cdf, u, /*out_int32=*/false, /*right=*/true).squeeze(-1);
  idx = idx.clamp_max(cdf.size(-1) - 1);
  // Never land on a removed (zero-probability) entry through rounding at the boundary.
  auto zero = probs.gather(-1, idx.unsqueeze(-1)).squeeze(-1) == 0;
  if (zero.any().item<bool>()) idx = torch::where(zero, probs.argmax(-1), idx);
  return candidates.defined() ? candidates.gather(-1, idx.unsqueeze(-1)).squeeze(-1) : idx;
}

}  // namespace aim::ops::ref
