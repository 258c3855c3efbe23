#pragma once
// Next-token selection: classifier-free guidance combine, then temperature, top-k, top-p (in
// that order; the most likely token is always kept) and a draw by inverse CDF from caller-given
// uniforms, so a sample's randomness can be keyed by (seed, sample, step) whatever the batch.
#include <torch/types.h>

#include <cstdint>

namespace aim::ops {

/// uncond + (cond - uncond) * scale.  // [B, V] each
torch::Tensor cfg_combine(const torch::Tensor& cond, const torch::Tensor& uncond, double scale);

/// Guidance confined to the conditional model's nucleus: cfg_combine in fp32, then -inf for every
/// token outside the top-p set of `cond` at mass `cond_top_p` (the rule of sample_tokens' top-p:
/// tokens leave from the unlikely end while their total conditional probability stays <=
/// 1 - cond_top_p; the conditional favourite always stays). cond_top_p = 1 is cfg_combine.
/// Why: at a large scale, guidance multiplies the gap between the two models' log-probabilities,
/// and in the tails, where both models put almost no mass, that gap is noise, so tokens that the
/// conditional model itself rules out can end up likely (docs/perf.md, "Guidance in the tails").
torch::Tensor cfg_combine_nucleus(const torch::Tensor& cond, const torch::Tensor& uncond,
                                  double scale, double cond_top_p);

/// logits [B, V], uniforms [B] in [0, 1) -> tokens [B] int64. top_k = 0 keeps all, top_k = 1
/// is argmax (uniforms unused); top_p = 1 keeps all: tokens are removed from the unlikely end
/// while their total probability stays <= 1 - top_p (the official filter).
torch::Tensor sample_tokens(const torch::Tensor& logits, double temperature, int64_t top_k,
                            double top_p, const torch::Tensor& uniforms);

/// The uniform in [0, 1) of sample `sample` at step `step` (kernels/keyed_uniform.h; the CUDA
/// kernel computes the same bits).
double keyed_uniform(uint64_t seed, int64_t sample, int64_t step);

/// Guidance, filters and draw in one op, each row's uniform keyed_uniform(seed,
/// sample_ids[b], step): cond, uncond [B, V] fp32 or bf16 (uncond undefined: no guidance, cfg
/// unused), sample_ids [B] int64 -> tokens [B] int64 on cond's device. Defined as
/// sample_tokens(cfg_combine(cond.float(), uncond.float(), cfg), temperature, top_k, top_p,
/// uniforms), which is what runs on the CPU. CUDA tensors run the fused kernel
/// (kernels/sample_tokens.h) unless top_k > 1024 (and < V), V > 32768 or kernels are off: tokens
/// equal the composition's except when u lies within 1e-9 of a boundary of the inverse CDF or
/// the top-p cut's cumulative mass within 1e-9 of 1 - top_p, and where tied logits are ordered
/// differently (torch leaves their order unspecified; the kernel ranks ties by lower index).
torch::Tensor sample_tokens_keyed(const torch::Tensor& cond, const torch::Tensor& uncond,
                                  double cfg, double temperature, int64_t top_k, double top_p,
                                  uint64_t seed, const torch::Tensor& sample_ids, int64_t step);

/// The same with the step read from `step`, an int64 scalar tensor on cond's device: on CUDA
/// the kernel reads it on the device, so a captured CUDA graph replays with a device counter.
torch::Tensor sample_tokens_keyed(const torch::Tensor& cond, const torch::Tensor& uncond,
                                  double cfg, double temperature, int64_t top_k, double top_p,
                                  uint64_t seed, const torch::Tensor& sample_ids,
                                  const torch::Tensor& step);

/// Whether sample_tokens_keyed on these inputs runs the fused CUDA kernel (and so reads a
/// device-side step without a host synchronisation, which CUDA-graph capture needs). The logits
/// given need only have the right device, dtype and shape.
bool sample_tokens_keyed_fused(const torch::Tensor& cond, const torch::Tensor& uncond,
                               double temperature, int64_t top_k, double top_p);

namespace ref {
/// [B, V] bool: the tokens that top-p filtering at mass `top_p` removes from `logits` (fp32 or
/// bf16 [B, V]; see sample_tokens). top_p = 1 removes none.
torch::Tensor top_p_removed(const torch::Tensor& logits, double top_p);

torch::Tensor sample_tokens(const torch::Tensor& logits, double temperature, int64_t top_k,
                            double top_p, const torch::Tensor& uniforms);
}  // namespace ref

}  // namespace aim::ops
