// Checks and dispatch for token selection.
#include "aim/ops/sampling.h"

#include <torch/torch.h>

#include <limits>

#include "aim/ops/dispatch.h"
#include "ops/kernel_table.h"
#include "keyed_uniform.h"  // kernels/: header-only, in every build
#ifdef AIM_WITH_CUDA
#include "ops/sampling_cuda.h"
#endif

namespace aim::ops {

namespace {

void check_keyed(const torch::Tensor& cond, const torch::Tensor& uncond,
                 const torch::Tensor& sample_ids) {
  TORCH_CHECK(cond.dim() == 2 && cond.is_floating_point(),
              "sample_tokens_keyed: cond must be floating [B, V], got ", cond.scalar_type(), " ",
              cond.sizes());
  TORCH_CHECK(!uncond.defined() || (uncond.sizes() == cond.sizes() &&
                                    uncond.is_floating_point() && uncond.device() == cond.device()),
              "sample_tokens_keyed: uncond must be floating ", cond.sizes(), " on ", cond.device(),
              ", got ", uncond.defined() ? uncond.sizes() : torch::IntArrayRef{});
  TORCH_CHECK(sample_ids.dim() == 1 && sample_ids.size(0) == cond.size(0) &&
                  sample_ids.scalar_type() == torch::kLong,
              "sample_tokens_keyed: sample_ids must be int64 [", cond.size(0), "], got ",
              sample_ids.scalar_type(), " ", sample_ids.sizes());
}

// The definition: fp32 guidance, host uniforms, then sample_tokens (the reference).
torch::Tensor keyed_composition(const torch::Tensor& cond, const torch::Tensor& uncond,
                                double cfg, double temperature, int64_t top_k, double top_p,
                                uint64_t seed, const torch::Tensor& sample_ids, int64_t step) {
  auto logits = cond.to(torch::kFloat);
  if (uncond.defined()) logits = cfg_combine(logits, uncond.to(torch::kFloat), cfg);
  const auto ids = sample_ids.to(torch::kCPU).contiguous();
  auto uniforms = torch::empty({cond.size(0)}, torch::kDouble);
  const auto* id = ids.data_ptr<int64_t>();
  auto* u = uniforms.data_ptr<double>();
  for (int64_t b = 0; b < cond.size(0); ++b) u[b] = keyed_uniform(seed, id[b], step);
  return sample_tokens(logits, temperature, top_k, top_p, uniforms);
}

}  // namespace

torch::Tensor cfg_combine(const torch::Tensor& cond, const torch::Tensor& uncond, double scale) {
  TORCH_CHECK(cond.sizes() == uncond.sizes(), "cfg_combine: cond ", cond.sizes(), " != uncond ",
              uncond.sizes());
  return uncond + (cond - uncond) * scale;
}

torch::Tensor cfg_combine_nucleus(const torch::Tensor& cond, const torch::Tensor& uncond,
                                  double scale, double cond_top_p) {
  TORCH_CHECK(cond_top_p > 0 && cond_top_p <= 1, "cfg_combine_nucleus: cond_top_p must be in (0, 1], got ",
              cond_top_p);
  const auto c = cond.to(torch::kFloat);
  auto guided = cfg_combine(c, uncond.to(torch::kFloat), scale);
  if (cond_top_p >= 1.0) return guided;
  return guided.masked_fill(ref::top_p_removed(c, cond_top_p), -std::numeric_limits<float>::infinity());
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

bool sample_tokens_keyed_fused(const torch::Tensor& cond, const torch::Tensor& uncond,
                               double temperature, int64_t top_k, double top_p) {
  if (const auto* k = emulated_kernels_for(cond)) {
    return k->sample_tokens_keyed_supported(cond, uncond, temperature, top_k, top_p);
  }
#ifdef AIM_WITH_CUDA
  return cond.is_cuda() && cuda_kernels_enabled() &&
         cuda::sample_tokens_keyed_supported(cond, uncond, temperature, top_k, top_p);
#else
  return false;
#endif
}

double keyed_uniform(uint64_t seed, int64_t sample, int64_t step) {
  return kernels::keyed_uniform(seed, sample, step);
}

torch::Tensor sample_tokens_keyed(const torch::Tensor& cond, const torch::Tensor& uncond,
                                  double cfg, double temperature, int64_t top_k, double top_p,
                                  uint64_t seed, const torch::Tensor& sample_ids, int64_t step) {
  check_keyed(cond, uncond, sample_ids);
#ifdef AIM_WITH_CUDA
  if (cond.is_cuda() && cuda_kernels_enabled() &&
      cuda::sample_tokens_keyed_supported(cond, uncond, temperature, top_k, top_p)) {
    return cuda::sample_tokens_keyed(cond, uncond, cfg, temperature, top_k, top_p, seed,
                                     sample_ids, step, torch::Tensor());
  }
#endif
  if (const auto* k = emulated_kernels_for(cond);
      k && k->sample_tokens_keyed_supported(cond, uncond, temperature, top_k, top_p)) {
    return k->sample_tokens_keyed(cond, uncond, cfg, temperature, top_k, top_p, seed, sample_ids,
                                  step, torch::Tensor(), torch::Tensor());
  }
  return keyed_composition(cond, uncond, cfg, temperature, top_k, top_p, seed, sample_ids, step);
}

torch::Tensor sample_tokens_keyed(const torch::Tensor& cond, const torch::Tensor& uncond,
                                  double cfg, double temperature, int64_t top_k, double top_p,
                                  uint64_t seed, const torch::Tensor& sample_ids,
                                  const torch::Tensor& step) {
  check_keyed(cond, uncond, sample_ids);
  TORCH_CHECK(step.numel() == 1 && step.scalar_type() == torch::kLong &&
                  step.device() == cond.device(),
              "sample_tokens_keyed: step must be one int64 on ", cond.device(), ", got ",
              step.scalar_type(), " ", step.sizes(), " on ", step.device());
#ifdef AIM_WITH_CUDA
  if (cond.is_cuda() && cuda_kernels_enabled() &&
      cuda::sample_tokens_keyed_supported(cond, uncond, temperature, top_k, top_p)) {
    return cuda::sample_tokens_keyed(cond, uncond, cfg, temperature, top_k, top_p, seed,
                                     sample_ids, 0, step);
  }
#endif
  if (const auto* k = emulated_kernels_for(cond);
      k && k->sample_tokens_keyed_supported(cond, uncond, temperature, top_k, top_p)) {
    return k->sample_tokens_keyed(cond, uncond, cfg, temperature, top_k, top_p, seed, sample_ids,
                                  0, step, torch::Tensor());
  }
  return keyed_composition(cond, uncond, cfg, temperature, top_k, top_p, seed, sample_ids,
                           step.item<int64_t>());
}

}  // namespace aim::ops
