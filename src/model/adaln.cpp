#include "aim/model/adaln.h"

#include "aim/ops/norms.h"

namespace aim {

RMSNormImpl::RMSNormImpl(const RMSNormOptions& options_) : options(options_) {
  weight = register_parameter("weight", torch::ones({options.dim()}));
}

void RMSNormImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  weight.fill_(1.0);
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  return ops::rms_norm(x, weight, options.eps());
}

LabelEmbedderImpl::LabelEmbedderImpl(int64_t num_classes_, int64_t dim)
    : num_classes(num_classes_) {
  embedding_table = register_module("embedding_table", torch::nn::Embedding(num_classes + 1, dim));
}

torch::Tensor LabelEmbedderImpl::forward(const torch::Tensor& labels, double drop_prob) {
  TORCH_CHECK(labels.dim() == 1, "LabelEmbedder: labels must be [B], got ", labels.sizes());
  auto ids = labels;
  if (drop_prob > 0.0) {
    auto drop = torch::rand({labels.size(0)}, labels.options().dtype(torch::kFloat)) < drop_prob;
    ids = torch::where(drop, torch::full_like(labels, num_classes), labels);
  }
  return embedding_table->forward(ids);
}

torch::Tensor modulate(const torch::Tensor& x, const torch::Tensor& shift,
                       const torch::Tensor& scale) {
  if (x.dim() == 3) return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1);
  return x * (1 + scale) + shift;
}

FinalLayerImpl::FinalLayerImpl(int64_t dim, double eps) {
  norm_final = register_module("norm_final", RMSNorm(RMSNormOptions(dim).eps(eps)));
  adaLN_modulation = register_module(
      "adaLN_modulation", torch::nn::Sequential(torch::nn::SiLU(), torch::nn::Linear(dim, 2 * dim)));
}

std::pair<torch::Tensor, torch::Tensor> FinalLayerImpl::modulation(const torch::Tensor& c) {
  auto chunks = adaLN_modulation->forward(c).chunk(2, 1);
  return {chunks[0], chunks[1]};
}

// modulate(norm_final(x), shift, scale) as one op: the fused norm + modulate kernel on CUDA
// (one pass instead of the norm's and modulate's elementwise ops, forward and backward), the
// same ATen ops as written here otherwise.
torch::Tensor FinalLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& shift,
                                      const torch::Tensor& scale) {
  return ops::add_rms_norm_modulate(x, /*residual=*/{}, norm_final->weight,
                                    norm_final->options.eps(), /*residual_in_fp32=*/false, shift,
                                    scale)
      .first;
}

}  // namespace aim
