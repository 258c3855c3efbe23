#pragma once
// Class-conditional generation with classifier-free guidance by recurrent decoding: the class
// slot first, then one token per step with constant cost (no prefix recomputation), the batch
// doubled [cond; null] when cfg != 1. Every draw uses a uniform keyed by (seed, global sample
// index, step), so a sample does not depend on the rank count, nor (on the CPU in fp32) on the
// batch it was made in; on the GPU the batch size picks the matrix kernels, whose rounding can
// move a draw that lands at a boundary between two tokens.
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "aim/model/aim.h"
#include "aim/model/vq.h"

namespace aim {

struct SamplingOptions {
  double cfg = 1.0;          ///< guidance scale; 1 runs the conditional half only
  double temperature = 1.0;  ///< applied first (the official sample() ignores it: 1 reproduces it)
  int64_t top_k = 0;         ///< 0: all tokens; 1: greedy
  double top_p = 1.0;        ///< nucleus mass kept, in (0, 1]
  /// Guidance only among the tokens of the conditional model's top-p set at this mass
  /// (ops::cfg_combine_nucleus), before temperature, top-k and top-p. 1 = off, the official
  /// sampler; unused without guidance.
  double cfg_top_p = 1.0;
  uint64_t seed = 0;
  /// The Mamba layers' recurrent ssm state in fp32 (default) or bf16: half the state memory and traffic
  /// per generated token; its cost in logits is measured in docs/perf.md.
  torch::ScalarType ssm_state_dtype = torch::kFloat;
  /// On CUDA, capture the per-token step (all layers, lm_head, guidance, filters, draw) once in
  /// a CUDA graph and replay it for the remaining tokens; same tokens as eager stepping. Used
  /// when the fused sampling kernel takes the settings (sample_tokens_keyed_fused).
  bool cuda_graph = true;
  /// Throws aim::Error naming the flag (--cfg, --temperature, --top-k, --top-p, --cfg-top-p).
  void validate() const;
};

#ifdef AIM_WITH_CUDA
}  // namespace aim
namespace at::cuda {
struct CUDAGraph;
}  // namespace at::cuda
namespace aim {
/// Records `body` into `graph` on the current CUDA stream (a side stream: the legacy default
/// stream cannot capture), launching nothing. An error in `body` ends the capture before it
/// propagates, so the stream and the caching allocator leave capture mode.
void capture_graph(at::cuda::CUDAGraph& graph, const std::function<void()>& body);
#endif

/// The uniform in [0, 1) used for sample `sample` at step `step`.
double sample_uniform(uint64_t seed, int64_t sample, int64_t step);

/// labels [B] (int64, < num_classes), sample_ids [B] (global indices) -> tokens [B, L] int64.
/// Whether a CUDA graph ran is reported through `used_graph` when given.
/// With `prompt` [B, P] (1 <= P < L image tokens) the sequences continue it: tokens[:, :P] are
/// the prompt, read in one parallel pass (prefill), and token t >= P is drawn as without a
/// prompt, from the uniform of (seed, sample, t): the same as if the prompt had been drawn, up
/// to the rounding by which the parallel pass and the steps differ (exact in fp64).
torch::Tensor generate_tokens(AimModel& model, const torch::Tensor& labels,
                              const std::vector<int64_t>& sample_ids, const SamplingOptions& options,
                              bool* used_graph = nullptr, const torch::Tensor& prompt = {});

/// tokens [N, L] -> images [N, 3, H, W] in [-1, 1] (not clamped), decoded `batch` at a time on
/// the tokenizer's device.
torch::Tensor decode_tokens(VqModel& vq, const torch::Tensor& tokens, int64_t batch);

/// Moves the tokenizer to `device` in `dtype` (float32, or bfloat16: half the memory traffic,
/// images within a few uint8 levels of float32's; docs/perf.md) for decode_tokens. On CUDA the
/// 4-d convolution weights become channels-last, so cuDNN runs the decoder in NHWC.
void prepare_vq_for_decoding(VqModel& vq, torch::Device device, torch::ScalarType dtype);

}  // namespace aim
