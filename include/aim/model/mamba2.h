#pragma once
// Mamba2 mixer, as mamba_ssm v2.2.2's `Mamba2` computes it (non-fused path):
//   [z, xBC, dt] = in_proj(u); xBC = silu(causal_conv1d(xBC)); [x, B, C] = xBC;
//   y = SSD(x, dt, A = -exp(A_log), B, C, D, dt_bias, softplus); y = gated_rms(y, z); out_proj(y)
#include <torch/torch.h>

#include "aim/core/config.h"
#include "aim/model/adaln.h"
#include "aim/model/mixer.h"

namespace aim {

struct Mamba2MixerOptions {
  Mamba2MixerOptions(int64_t d_model, const SsmConfig& ssm) : d_model_(d_model), ssm_(ssm) {}
  /// D: model width.
  TORCH_ARG(int64_t, d_model);
  /// The official `ssm_cfg` (resolved: d_state > 0).
  TORCH_ARG(SsmConfig, ssm);
};

class Mamba2MixerImpl : public MixerImpl {
 public:
  explicit Mamba2MixerImpl(const Mamba2MixerOptions& options);

  torch::Tensor forward(const torch::Tensor& u, MixerState* state = nullptr) override;
  torch::Tensor step_projected(const torch::Tensor& projected, MixerState& state) override;
  torch::nn::Linear input_projection() const override { return in_proj; }
  MixerState allocate_state(int64_t batch, torch::Device device, torch::ScalarType dtype,
                            torch::ScalarType ssm_dtype = torch::kFloat) const override;
  void reset_parameters() override;

  Mamba2MixerOptions options;
  int64_t d_inner, nheads, conv_dim;
  torch::Tensor dt_bias, A_log, D;  ///< [H], [H], [H] (or [H * P] with d_has_hdim)
  torch::nn::Linear in_proj{nullptr}, out_proj{nullptr};
  torch::nn::Conv1d conv1d{nullptr};
  RMSNorm norm{nullptr};  ///< only its weight [E]: applied as the gated group norm

 private:
  torch::Tensor output(const torch::Tensor& y, const torch::Tensor& z);
  torch::Tensor d_param() const;
};
TORCH_MODULE(Mamba2Mixer);

}  // namespace aim
