#pragma once
// Mamba1 mixer, as mamba_ssm v2.2.2's `Mamba` ("simple") computes it without the fused path:
//   [x, z] = in_proj(u); x = silu(causal_conv1d(x)); [dt, B, C] = x_proj(x);
//   y = selective_scan(x, dt_proj.weight dt, A = -exp(A_log), B, C, D, z, dt_proj.bias, softplus)
#include <torch/torch.h>

#include "aim/core/config.h"
#include "aim/model/mixer.h"

namespace aim {

struct Mamba1MixerOptions {
  Mamba1MixerOptions(int64_t d_model, const SsmConfig& ssm, int64_t dt_rank)
      : d_model_(d_model), ssm_(ssm), dt_rank_(dt_rank) {}
  /// D: model width.
  TORCH_ARG(int64_t, d_model);
  /// The official `ssm_cfg` (resolved).
  TORCH_ARG(SsmConfig, ssm);
  /// R: rank of the dt projection.
  TORCH_ARG(int64_t, dt_rank);
};

class Mamba1MixerImpl : public MixerImpl {
 public:
  explicit Mamba1MixerImpl(const Mamba1MixerOptions& options);

  torch::Tensor forward(const torch::Tensor& u, MixerState* state = nullptr) override;
  torch::Tensor step_projected(const torch::Tensor& projected, MixerState& state) override;
  torch::nn::Linear input_projection() const override { return in_proj; }
  MixerState allocate_state(int64_t batch, torch::Device device, torch::ScalarType dtype,
                            torch::ScalarType ssm_dtype = torch::kFloat) const override;
  void reset_parameters() override;

  Mamba1MixerOptions options;
  int64_t d_inner;
  torch::Tensor A_log, D;  ///< [E, N], [E]
  torch::nn::Linear in_proj{nullptr}, x_proj{nullptr}, dt_proj{nullptr}, out_proj{nullptr};
  torch::nn::Conv1d conv1d{nullptr};
};
TORCH_MODULE(Mamba1Mixer);

/// Inverse softplus of dt drawn log-uniform in [dt_min, dt_max] and floored at dt_init_floor:
/// the official initialisation of dt biases. Returns [n].
torch::Tensor init_dt_bias(int64_t n, double dt_min, double dt_max, double dt_init_floor);

}  // namespace aim
