#include "aim/train/flops.h"

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
    layer = 2 * D * (2 * E + 2 * GN + H) + 2 * E * D + 2 * (E + 2 * GN) * W + 6 * E * N;
  } else {
    const double R = static_cast<double>(m.dt_rank());
    layer = 2 * D * 2 * E + 2 * E * (R + 2 * N) + 2 * R * E + 2 * E * D + 2 * E * W + 6 * E * N;
  }
  return static_cast<double>(m.n_layer) * layer + 2 * D * static_cast<double>(m.vocab_size);
}

double training_flops_per_image(const ModelConfig& model) {
  return 3.0 * forward_flops_per_token(model) * static_cast<double>(model.num_tokens);
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
  if (has("H100")) return has("PCIe") ? 756.0 : 989.0;
  if (has("H200") || has("H800") || has("GH200")) return 989.0;
  if (has("A100") || has("A800")) return 312.0;
  if (has("L40S")) return 362.0;
  return 0.0;
}

}  // namespace aim::train
