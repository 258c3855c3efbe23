#pragma once
// Stage-1 (tokenizer) training pieces, as LlamaGen trains VQ-16: the quantiser's training
// forward (straight-through estimator, codebook / commitment / entropy losses, usage history),
// the PatchGAN discriminator and the hinge losses, and reconstruction quality measures.
#include <torch/torch.h>

#include "aim/model/vq.h"

namespace aim::train {

struct QuantizeOutput {
  torch::Tensor z_q;            ///< quantised latent with straight-through gradients [B, D, h, w]
  torch::Tensor codes;          ///< nearest codes [B, h * w] int64
  torch::Tensor codebook_loss;  ///< mean (z_q - sg[z])^2: moves the codes
  torch::Tensor commit_loss;    ///< mean (sg[z_q] - z)^2: moves the encoder (times beta outside)
  torch::Tensor entropy_loss;   ///< sample entropy - entropy of the mean assignment (or undefined)
  torch::Tensor z_flat;         ///< the (normalised) encoder vectors, detached [B * h * w, D] fp32
};

/// The quantiser in training: z [B, D, h, w] (l2-normalised over D first when the codebook is),
/// nearest code by the same squared distance as VectorQuantizer::nearest, z_q = z + sg[e - z].
/// Computed in fp32 whatever the autocast state. `entropy_temperature` > 0 also computes the
/// entropy loss of softmax(-distance / temperature).
QuantizeOutput quantize_for_training(const VectorQuantizerImpl& quantizer, const torch::Tensor& z,
                                     double entropy_temperature = 0.0);

/// Appends `codes` to the quantiser's usage history (`codebook_used`, the newest codes last, as
/// LlamaGen keeps it) and returns the fraction of the codebook seen in the history.
double record_codebook_usage(VectorQuantizerImpl& quantizer, const torch::Tensor& codes);

/// Dead-code restart: codes with `counts` == 0 get the vectors of randomly drawn rows of
/// `z_flat` (the encoder's current outputs), so that they take part again. Returns how many.
int64_t restart_unused_codes(VectorQuantizerImpl& quantizer, const torch::Tensor& counts,
                             const torch::Tensor& z_flat);

/// PatchGAN discriminator (pix2pix / taming's NLayerDiscriminator): conv4x4/2 + LeakyReLU(0.2),
/// then `layers - 1` conv4x4/2 + BatchNorm + LeakyReLU doubling the width up to 8x, one conv4x4/1
/// + BatchNorm + LeakyReLU, and a conv4x4/1 to one logit per patch. Modules under `main.<i>`.
class PatchDiscriminatorImpl : public torch::nn::Module {
 public:
  PatchDiscriminatorImpl(int64_t channels, int64_t layers);
  /// images [B, 3, H, W] -> patch logits [B, 1, h, w].
  torch::Tensor forward(const torch::Tensor& images);
  torch::nn::Sequential main{nullptr};
};
TORCH_MODULE(PatchDiscriminator);

/// Hinge losses as LlamaGen's (and taming's) vq_loss.py: discriminator
/// 0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake))); generator -mean(fake).
torch::Tensor hinge_discriminator_loss(const torch::Tensor& logits_real, const torch::Tensor& logits_fake);
torch::Tensor hinge_generator_loss(const torch::Tensor& logits_fake);

/// Mean structural similarity (Wang et al. 2004) of images [B, C, H, W] in [-1, 1]: per channel,
/// local statistics under a Gaussian window (`window` taps, sigma 1.5, only where the window fits
/// inside the image), C1 = (0.01 * 2)^2, C2 = (0.03 * 2)^2 for the range of 2. Differentiable
/// (1 - ssim is the vq_train.ssim_weight loss); computed in fp32 whatever the autocast state.
/// Its contrast and structure terms are normalised by the local contrast, so a faint edge counts
/// as much as a strong one, which the pixel losses do not.
torch::Tensor ssim(const torch::Tensor& a, const torch::Tensor& b, int64_t window = 11);

/// PSNR in dB of images in [-1, 1] (both clamped to [-1, 1]; peak-to-peak 2), over the batch.
double psnr(const torch::Tensor& reference, const torch::Tensor& reconstruction);

}  // namespace aim::train
