#pragma once
// Model FLOPs for throughput and model FLOPs utilisation (MFU), counted the usual way: 2 FLOPs
// per multiply-add, a training step = 3x the forward pass (backward = 2x forward), no
// recomputation counted. Per token of a forward pass:
//   Mamba2 layer: 2 * d_model * (2 d_inner + 2 G N + H)   in_proj
//                 2 * d_inner * d_model                     out_proj
//                 2 * (d_inner + 2 G N) * d_conv            depthwise causal conv
//                 5 * d_inner * N                           scan, per state element: the input
//                                                           B (dt x) (1), the decay h a + that
//                                                           (2) and the readout C h (2)
//   Mamba1 layer: 2 * d_model * 2 d_inner + 2 * d_inner * (R + 2N) + 2 * R * d_inner
//                 + 2 * d_inner * d_model + 2 * d_inner * d_conv + 5 * d_inner * N
//   lm_head:      2 * d_model * V
// An image is num_tokens positions (class slot + num_tokens - 1 inputs). The per-image adaLN
// projections (well under 1% of the total) are left out.
#include <string>

#include <torch/types.h>

#include "aim/core/config.h"

namespace aim::train {

/// Forward FLOPs per token position.
double forward_flops_per_token(const ModelConfig& model);
/// Training FLOPs (forward + backward) per image.
double training_flops_per_image(const ModelConfig& model);
/// The VQ tokenizer's forward FLOPs per image of `image_size` pixels: its convolutions, the
/// attention blocks' 1x1 projections and two batched products (4 C (HW)^2 each block), and the
/// codebook distances (2 D K per code), counted as the matrix products the modules run; the
/// norms, activations and resampling are left out. Training = 3x (`vq_training_flops_per_image`).
double vq_forward_flops_per_image(const VqConfig& vq, int64_t image_size);
double vq_training_flops_per_image(const VqConfig& vq, int64_t image_size);
/// A tokenizer training step's FLOPs per image with its losses: the above plus, with
/// vq_train.perceptual_weight > 0, LPIPS's VGG16 three times (the image's forward, the
/// reconstruction's forward and its backward to the input); the PatchGAN is not counted.
double vq_training_flops_per_image(const VqConfig& vq, const VqTrainConfig& vt, int64_t image_size);
/// Dense bf16 peak of `device` in TFLOP/s: `configured` when > 0, else a table of known GPUs
/// (H100/H800 SXM 989, PCIe 756, H100/H200 NVL 835, H200 989, A100/A800 312, L40S 362); 0 when
/// unknown (MFU is then not reported). `name` receives the device name.
double device_peak_tflops(const torch::Device& device, double configured, std::string* name = nullptr);

}  // namespace aim::train
