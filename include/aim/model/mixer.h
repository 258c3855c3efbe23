#pragma once
// The interface both Mamba mixers implement, so a block holds either under the official key
// name `mixer`.
#include <torch/torch.h>

namespace aim {

/// Recurrent state of one mixer: conv_state [B, C, W] (last W conv inputs) and ssm_state
/// (Mamba2 [B, H, P, N], Mamba1 [B, E, N]), both fp32 unless asked otherwise (Mamba2's ssm state
/// may be bf16: half the state memory and traffic of decoding, at a measured cost in logits).
struct MixerState {
  torch::Tensor conv_state;
  torch::Tensor ssm_state;
  /// The step's parameter-derived fp32 values (A = -exp(A_log), D, the dt bias), made once by
  /// allocate_state on the state's device, so that a generated token launches no conversion or
  /// exp for them. Undefined: step derives them from the parameters.
  torch::Tensor A, D, dt_bias;
  /// int32 [B] zeros: the per-sequence counters of Mamba2's fused step kernel
  /// (ops::ssd_decode_step), which leaves them at zero. Undefined: made per step.
  torch::Tensor arrivals;
};

class MixerImpl : public torch::nn::Module {
 public:
  /// u [B, L, D] -> [B, L, D]. When `state` is given it receives the state after the last
  /// position (prefill).
  virtual torch::Tensor forward(const torch::Tensor& u, MixerState* state = nullptr) = 0;
  /// One token: u [B, D] -> [B, D], advancing `state`: step_projected of in_proj(u).
  torch::Tensor step(const torch::Tensor& u, MixerState& state) {
    return step_projected(input_projection()->forward(u), state);
  }
  /// One token from the input projection's output [B, N] (the AiM block computes it fused
  /// with its norm when decoding, ops::add_rms_norm_modulate_linear) -> [B, D].
  virtual torch::Tensor step_projected(const torch::Tensor& projected, MixerState& state) = 0;
  /// The input projection `in_proj` [N, D] that step() applies first.
  virtual torch::nn::Linear input_projection() const = 0;
  /// Zero state for `batch` sequences; conv state in `dtype`, ssm state in `ssm_dtype` (fp32,
  /// or bf16 for decoding with half the state traffic; other types are an error).
  virtual MixerState allocate_state(int64_t batch, torch::Device device, torch::ScalarType dtype,
                                    torch::ScalarType ssm_dtype = torch::kFloat) const = 0;
  /// Re-draws the parameters the way the official constructor does.
  virtual void reset_parameters() = 0;
};

}  // namespace aim
