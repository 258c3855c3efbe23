#pragma once
// Reconstruction quality of a tokenizer on an image collection (aim eval-vq): PSNR and SSIM of
// the uint8 reconstructions, and how much of the codebook the images use.
#include <cstdint>
#include <string>
#include <vector>

#include <torch/types.h>

#include "aim/data/image_folder.h"
#include "aim/model/vq.h"

namespace aim {

struct TokenizerEvalOptions {
  int64_t image_size = 256;  ///< center_crop_arr (ADM / LlamaGen) to this size
  int64_t batch_size = 32;
  int64_t max_images = 0;    ///< 0 = all; else this many, spread evenly over the list
  torch::Device device = torch::kCPU;
  bool progress = true;
  /// When set, reconstructions are written as <recon_dir>/<class>/<the image's path under its
  /// class folder, as .png> (x.jpg.png where x.jpg and x.png would meet): an ImageFolder tree that
  /// aim analyse-shapes and other tools can score, each file paired with its original. A folder
  /// holding other PNGs (an earlier run's) is refused before the work.
  std::string recon_dir;
  /// When set, LPIPS weights (.safetensors, convert_checkpoint.py --kind lpips): the mean LPIPS
  /// (VGG16, v0.1) between the uint8 originals and reconstructions is measured too.
  std::string lpips_weights;
};

struct TokenizerEval {
  int64_t images = 0;        ///< images scored (unreadable ones skipped)
  int64_t skipped = 0;       ///< unreadable images, skipped
  std::vector<std::string> skipped_examples;  ///< the first few of their errors
  int64_t upscaled = 0;      ///< images whose short side was below image_size (enlarged by the crop)
  double psnr = 0.0;         ///< dB, mean over images, on uint8 images (peak 255)
  double psnr_min = 0.0;     ///< the worst image
  double mse = 0.0;          ///< mean squared error in [0, 1] units
  double ssim = 0.0;         ///< mean SSIM (train::ssim: Gaussian 11-tap window) of the uint8
                             ///< images; NaN below 11 px
  double ssim_llamagen = 0.0;  ///< LlamaGen's reconstruction SSIM (ssim_llamagen below); NaN below 7 px
  double lpips = 0.0;        ///< mean LPIPS of the uint8 images; NaN without options.lpips_weights
  int64_t codes_used = 0;    ///< distinct codes over all images
  double usage = 0.0;        ///< codes_used / codebook size
  double perplexity = 0.0;   ///< exp(entropy) of the code histogram
};

/// SSIM as LlamaGen's tokenizer evaluation computes it (skimage's structural_similarity with
/// data_range=2.0 on images in [0, 1], channel_axis=-1): 7x7 uniform windows over the valid
/// region, sample covariances, the mean over channels and positions, per image. `a` and `b` are
/// uint8 [N, H, W, 3]; returns [N] float64. Its figures are comparable with LlamaGen's tables
/// (the range of 2 on [0, 1] images makes them higher than the Gaussian-window SSIM).
torch::Tensor ssim_llamagen(const torch::Tensor& a, const torch::Tensor& b);

/// Encodes and decodes the images of `list` and measures the reconstructions.
TokenizerEval evaluate_tokenizer(VqModel& model, const ImageList& list, const TokenizerEvalOptions& options);

}  // namespace aim
