#pragma once
// LPIPS (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric",
// version 0.1, VGG16): the perceptual distance LlamaGen's tokenizer training uses as its
// perceptual loss (tokenizer/tokenizer_image/lpips.py, weight 1.0) and tokenizer papers report.
//
//   d(x, y) = sum over k of mean over (h, w) of  w_k . (n(f_k(x')) - n(f_k(y')))^2
//
// x' = (x - shift) / scale with shift (-0.030, -0.088, -0.188), scale (0.458, 0.448, 0.450)
// (images in [-1, 1]); f_k = VGG16's relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (3x3 convs with
// bias, ReLU, 2x2 max pools between the five stages); n(f) = f / (sqrt(sum_c f^2) + 1e-10) per
// position; w_k a 1x1 conv without bias to one channel.
//
// Registered names are the state-dict names of LlamaGen's and the lpips package's LPIPS module
// (`net.slice1.0.weight`, `net.slice5.28.bias`, `lin0.model.1.weight`: 31 tensors), so weights
// load with no mapping; tools/convert_checkpoint.py --kind lpips writes them from torchvision's
// vgg16-397923af.pth and LPIPS's linear layers (vgg.pth), or from a saved LPIPS state dict.
#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace aim::eval {

class LpipsImpl : public torch::nn::Module {
 public:
  static constexpr std::array<int64_t, 5> kChannels = {64, 128, 256, 512, 512};
  static constexpr int64_t kMinSize = 16;  ///< four 2x2 pools before relu5_3
  static constexpr double kDropout = 0.5;  ///< the linear layers' nn.Dropout()

  /// Random weights (PyTorch's default initialisation); load real ones with load_lpips().
  /// Every parameter has requires_grad false: LPIPS is a fixed metric, its gradient goes to the
  /// images only.
  LpipsImpl();

  /// x, y [N, 3, H, W] in [-1, 1], H and W >= 16 -> [N] distances: float32 (also under bf16
  /// autocast), float64 for float64 inputs.
  /// `dropout`: drop each squared feature difference with probability 0.5 (and scale the rest by
  /// 2) before the linear layers, as the module does in training mode. LlamaGen's trainer calls
  /// train() on the loss module that holds it, so its perceptual loss is computed that way;
  /// evaluation uses none. The images go through VGG16 one after the other (as the reference),
  /// so a gradient reaches each input that requires one, and only through its own pass.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& y, bool dropout = false);

  /// VGG16's five taps (relu1_2 .. relu5_3) of already scaled images [N, 3, H, W].
  std::vector<torch::Tensor> features(const torch::Tensor& scaled);

  /// (x - shift) / scale with float32 constants (a bf16 or float32 x gives float32). The
  /// constants are made once per device (no host-to-device copy per call).
  torch::Tensor scale_input(const torch::Tensor& x);

  /// The 13 convolutions in network order and the five linear layers.
  std::vector<torch::nn::Conv2d> convs;
  std::vector<torch::nn::Conv2d> lins;

 private:
  std::map<std::string, std::pair<torch::Tensor, torch::Tensor>> constants_;  // device -> shift, scale
};
TORCH_MODULE(Lpips);

/// Names and shapes of the 31 tensors a weights file holds, in registration order.
std::vector<std::pair<std::string, std::vector<int64_t>>> lpips_keys();

/// Copies `sd` into `model` strictly: every key of lpips_keys() with its shape and a floating
/// dtype; any other key is an error. Throws one aim::Error naming `what` (the file) and, per
/// problem, the key and the expected and found shape or dtype, with a conversion hint.
void load_lpips_state_dict(Lpips& model, const std::map<std::string, torch::Tensor>& sd, const std::string& what);

/// load_lpips_state_dict() from a safetensors file; a missing file or a PyTorch pickle (vgg.pth,
/// vgg16-*.pth) is refused with the conversion command.
void load_lpips(Lpips& model, const std::string& path);

/// FLOPs of one image's pass through LPIPS's VGG16 at H x W (multiply-adds counted as 2; the
/// convolutions only), for the training FLOPs estimate.
double lpips_vgg_flops(int64_t height, int64_t width);

}  // namespace aim::eval
