#pragma once
// LlamaGen's VQ tokenizer (VQ-16 and its reduced-width variants), in the official module and key
// layout (`encoder.*`, `decoder.*`, `quantize.embedding.weight`, `quant_conv`, `post_quant_conv`).
//
// encode:  z = quant_conv(encoder(x)); code = argmin_k ||n(z) - n(e_k)||^2 (n: l2 normalisation
//          over the embed dim when codebook_l2_norm); codes raster order over the latent grid.
// decode:  x = decoder(post_quant_conv(n(e)[codes])) with images in [-1, 1] (not clamped).
#include <torch/torch.h>

#include <map>
#include <string>

#include "aim/core/config.h"

namespace aim {

/// GroupNorm(groups) -> SiLU -> conv3x3 -> GroupNorm(32) -> SiLU -> dropout -> conv3x3, plus a 1x1
/// `nin_shortcut` when the width changes.
class VqResnetBlockImpl : public torch::nn::Module {
 public:
  VqResnetBlockImpl(int64_t in_channels, int64_t out_channels, double dropout, int64_t groups = 32);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::GroupNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, nin_shortcut{nullptr};
  double dropout;
};
TORCH_MODULE(VqResnetBlock);

/// Single-head spatial self-attention with 1x1 q, k, v, proj_out and a residual.
class VqAttnBlockImpl : public torch::nn::Module {
 public:
  explicit VqAttnBlockImpl(int64_t channels, int64_t groups = 32);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::GroupNorm norm{nullptr};
  torch::nn::Conv2d q{nullptr}, k{nullptr}, v{nullptr}, proj_out{nullptr};
};
TORCH_MODULE(VqAttnBlock);

/// One resolution level: `res` blocks, `attn` blocks (lowest resolution only) and an optional
/// `downsample` / `upsample` holding `conv`.
class VqLevelImpl : public torch::nn::Module {
 public:
  torch::nn::ModuleList res{nullptr}, attn{nullptr};
  std::shared_ptr<torch::nn::Module> resample;  ///< holds `conv`; null at the last level
  torch::nn::Conv2d resample_conv{nullptr};
  bool down = true;
  torch::Tensor forward(torch::Tensor h);
};
TORCH_MODULE(VqLevel);

class VqEncoderImpl : public torch::nn::Module {
 public:
  explicit VqEncoderImpl(const VqConfig& config);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  torch::nn::ModuleList conv_blocks{nullptr}, mid{nullptr};
  torch::nn::GroupNorm norm_out{nullptr};
};
TORCH_MODULE(VqEncoder);

class VqDecoderImpl : public torch::nn::Module {
 public:
  explicit VqDecoderImpl(const VqConfig& config);
  torch::Tensor forward(const torch::Tensor& z);
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  torch::nn::ModuleList conv_blocks{nullptr}, mid{nullptr};
  torch::nn::GroupNorm norm_out{nullptr};
};
TORCH_MODULE(VqDecoder);

/// The codebook: `embedding` [K, D] and the usage buffer `codebook_used` [65536] (kept for
/// checkpoint compatibility).
class VectorQuantizerImpl : public torch::nn::Module {
 public:
  VectorQuantizerImpl(int64_t codebook_size, int64_t embed_dim, bool l2_norm);
  /// Codebook rows as used for lookup (l2-normalised when configured) [K, D].
  torch::Tensor codebook() const;
  /// z [B, D, h, w] -> codes [B, h * w] int64 (nearest code, raster order).
  torch::Tensor nearest(const torch::Tensor& z) const;
  /// codes [B, h * w] -> quantised latent [B, D, h, w].
  torch::Tensor lookup(const torch::Tensor& codes, int64_t h, int64_t w) const;
  torch::nn::Embedding embedding{nullptr};
  torch::Tensor codebook_used;
  bool l2_norm;
};
TORCH_MODULE(VectorQuantizer);

class VqModelImpl : public torch::nn::Module {
 public:
  explicit VqModelImpl(const VqConfig& config);

  /// images [B, 3, H, W] in [-1, 1] -> pre-quantisation latent [B, D, H / f, W / f].
  torch::Tensor encode_latent(const torch::Tensor& images);
  /// images [B, 3, H, W] in [-1, 1] -> codes [B, (H / f) * (W / f)] int64.
  torch::Tensor encode(const torch::Tensor& images);
  /// Quantised latent of the codes (normalised code vectors) [B, D, h, w].
  torch::Tensor quantized(const torch::Tensor& codes, int64_t h, int64_t w);
  /// codes [B, h * w] -> images [B, 3, h * f, w * f] (not clamped).
  torch::Tensor decode(const torch::Tensor& codes, int64_t h, int64_t w);
  /// decode(encode(images)).
  torch::Tensor reconstruct(const torch::Tensor& images);
  /// The square latent side for `tokens` codes (throws when not a square).
  static int64_t side_of(int64_t tokens);

  VqConfig config;
  VqEncoder encoder{nullptr};
  VqDecoder decoder{nullptr};
  VectorQuantizer quantize{nullptr};
  torch::nn::Conv2d quant_conv{nullptr}, post_quant_conv{nullptr};
};
TORCH_MODULE(VqModel);

/// Throws aim::Error naming `flag` unless `size` px images fit the tokenizer: a multiple of its
/// downsampling factor, from one code to 4096 px.
void check_tokenizer_image_size(const std::string& flag, int64_t size, const VqConfig& config);

/// Loads tokenizer weights by official names: entries starting with `prefix` (e.g. "vqvae." in
/// AiM checkpoints, "" for LlamaGen files) are taken, others ignored when a prefix is given.
/// Missing, unexpected and mis-shaped keys are reported in one aim::Error naming `what`.
void load_vq_state_dict(VqModel& model, const std::map<std::string, torch::Tensor>& sd,
                        const std::string& what, const std::string& prefix = "");

/// Tokenizer weights with official names (parameters and the usage buffer), `prefix` prepended.
std::vector<std::pair<std::string, torch::Tensor>> vq_state_dict(const VqModel& model,
                                                                  const std::string& prefix = "");

}  // namespace aim
