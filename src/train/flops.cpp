#include "aim/train/flops.h"

#include "aim/eval/lpips.h"

#include <torch/cuda.h>

namespace aim::train {

#ifdef AIM_WITH_CUDA
std::string cuda_device_name(int index);  // flops_cuda.cpp
#endif

double forward_flops_per_token(const ModelConfig& m) {
  const double D = static_cast<double>(m.d_model), E = static_cast<double>(m.d_inner());
  const double N = static_cast<double>(m.ssm.d_state), W = static_cast<double>(m.ssm.d_conv);
  double layer = 0.0;
  if (m.is_mamba2()) {
    const double GN = static_cast<double>(m.ssm.ngroups) * N, H = static_cast<double>(m.nheads());
    layer = 2 * D * (2 * E + 2 * GN + H) + 2 * E * D + 2 * (E + 2 * GN) * W + 5 * E * N;
  } else {
    const double R = static_cast<double>(m.dt_rank());
    layer = 2 * D * 2 * E + 2 * E * (R + 2 * N) + 2 * R * E + 2 * E * D + 2 * E * W + 5 * E * N;
  }
  return static_cast<double>(m.n_layer) * layer + 2 * D * static_cast<double>(m.vocab_size);
}

double training_flops_per_image(const ModelConfig& model) {
  return 3.0 * forward_flops_per_token(model) * static_cast<double>(model.num_tokens);
}

double vq_forward_flops_per_image(const VqConfig& c, int64_t image_size) {
  // 2 FLOPs per multiply-add of a k x k convolution from `in` to `out` channels at `side` x `side`
  // output pixels.
  auto conv = [](double in, double out, double k, double side) { return 2.0 * in * out * k * k * side * side; };
  auto res = [&](double in, double out, double side) {
    return conv(in, out, 3, side) + conv(out, out, 3, side) + (in != out ? conv(in, out, 1, side) : 0.0);
  };
  auto attn = [&](double ch, double side) {
    const double hw = side * side;
    return 4 * conv(ch, ch, 1, side) + 4.0 * ch * hw * hw;  // q, k, v, proj_out; q k^T and v w^T
  };
  const auto levels = static_cast<int64_t>(c.ch_mult.size());
  const double ch = static_cast<double>(c.ch), z = static_cast<double>(c.z_channels);
  const double d = static_cast<double>(c.codebook_embed_dim), k = static_cast<double>(c.codebook_size);
  double side = static_cast<double>(image_size);
  double f = conv(3, ch, 3, side);  // encoder
  double in = ch;
  for (int64_t i = 0; i < levels; ++i) {
    const double out = ch * static_cast<double>(c.ch_mult[static_cast<size_t>(i)]);
    for (int64_t j = 0; j < c.num_res_blocks; ++j) {
      f += res(in, out, side) + (i == levels - 1 ? attn(out, side) : 0.0);
      in = out;
    }
    if (i != levels - 1) {
      side /= 2;
      f += conv(in, in, 3, side);  // stride-2 downsample
    }
  }
  f += 2 * res(in, in, side) + attn(in, side) + conv(in, z, 3, side);  // mid, conv_out
  const double codes = side * side;
  f += conv(z, d, 1, side) + 2.0 * codes * d * k + conv(d, z, 1, side);  // quant_conv, distances, post_quant_conv
  f += conv(z, in, 3, side) + 2 * res(in, in, side) + attn(in, side);  // decoder conv_in, mid
  for (int64_t i = levels - 1; i >= 0; --i) {
    const double out = ch * static_cast<double>(c.ch_mult[static_cast<size_t>(i)]);
    for (int64_t j = 0; j < c.num_res_blocks + 1; ++j) {
      f += res(in, out, side) + (i == levels - 1 ? attn(out, side) : 0.0);
      in = out;
    }
    if (i != 0) {
      side *= 2;
      f += conv(in, in, 3, side);  // nearest 2x, then a 3x3 convolution
    }
  }
  return f + conv(in, 3, 3, side);  // conv_out
}

double vq_training_flops_per_image(const VqConfig& vq, int64_t image_size) {
  return 3.0 * vq_forward_flops_per_image(vq, image_size);
}

double vq_training_flops_per_image(const VqConfig& vq, const VqTrainConfig& vt, int64_t image_size) {
  double f = vq_training_flops_per_image(vq, image_size);
  if (vt.perceptual_weight > 0) f += 3.0 * eval::lpips_vgg_flops(image_size, image_size);
  return f;
}

double device_peak_tflops(const torch::Device& device, double configured, std::string* name) {
  std::string n = device.is_cuda() ? "cuda" : "cpu";
#ifdef AIM_WITH_CUDA
  if (device.is_cuda()) n = cuda_device_name(device.has_index() ? device.index() : 0);
#endif
  if (name) *name = n;
  if (configured > 0) return configured;
  if (!device.is_cuda()) return 0.0;
  auto has = [&](const char* s) { return n.find(s) != std::string::npos; };
  // (NVL cards run lower clocks: 835 dense bf16 for H100 NVL and H200 NVL.)
  if (has("H100") || has("H800")) return has("PCIe") ? 756.0 : has("NVL") ? 835.0 : 989.0;
  if (has("H200") || has("GH200")) return has("NVL") ? 835.0 : 989.0;
  if (has("A100") || has("A800")) return 312.0;
  if (has("L40S")) return 362.0;
  return 0.0;
}

}  // namespace aim::train
