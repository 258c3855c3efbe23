#pragma once
// Normalisation and class-conditioning pieces of the AiM backbone: RMSNorm, the label
// embedder with its null class, and the adaLN modulation (per layer or grouped) and final layer.
#include <torch/torch.h>

namespace aim {

struct RMSNormOptions {
  explicit RMSNormOptions(int64_t dim) : dim_(dim) {}
  /// D: normalised width.
  TORCH_ARG(int64_t, dim);
  /// Added to mean(x^2); the official value is 1e-5.
  TORCH_ARG(double, eps) = 1e-5;
};

/// rms(x) * weight over the last dim; `weight` [D], no bias.
class RMSNormImpl : public torch::nn::Module {
 public:
  explicit RMSNormImpl(const RMSNormOptions& options);
  torch::Tensor forward(const torch::Tensor& x);
  void reset_parameters();
  RMSNormOptions options;
  torch::Tensor weight;
};
TORCH_MODULE(RMSNorm);

/// Class embeddings: `embedding_table` [num_classes + 1, D]; the last row is the null class.
class LabelEmbedderImpl : public torch::nn::Module {
 public:
  LabelEmbedderImpl(int64_t num_classes, int64_t dim);
  /// labels [B] (int64, in [0, num_classes]) -> [B, D]. With `drop_prob` > 0 each label is
  /// replaced by the null class with that probability (classifier-free guidance training).
  torch::Tensor forward(const torch::Tensor& labels, double drop_prob = 0.0);
  int64_t num_classes;
  torch::nn::Embedding embedding_table{nullptr};
};
TORCH_MODULE(LabelEmbedder);

/// adaLN parameters of one block: each [B, D].
struct Modulation {
  torch::Tensor shift, scale, gate;
};

/// x * (1 + scale) + shift with x [B, L, D] or [B, D] and shift/scale [B, D].
torch::Tensor modulate(const torch::Tensor& x, const torch::Tensor& shift,
                       const torch::Tensor& scale);

/// The last adaLN: x = rms(x) * norm_final.weight * (1 + scale) + shift, with
/// [shift, scale] = adaLN_modulation(c) = Linear(SiLU(c)) [B, 2D].
class FinalLayerImpl : public torch::nn::Module {
 public:
  FinalLayerImpl(int64_t dim, double eps);
  /// c [B, D] -> {shift, scale}, each [B, D]. Computed once per sequence.
  std::pair<torch::Tensor, torch::Tensor> modulation(const torch::Tensor& c);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& shift,
                        const torch::Tensor& scale);
  RMSNorm norm_final{nullptr};
  torch::nn::Sequential adaLN_modulation{nullptr};
};
TORCH_MODULE(FinalLayer);

}  // namespace aim
