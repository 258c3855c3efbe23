#pragma once
// The official optimisation recipe: AdamW (decoupled weight decay, torch.optim.AdamW semantics)
// with two parameter groups (weight decay on parameters with >= 2 dimensions only), global
// gradient-norm clipping and the learning-rate schedules of Hugging Face's Trainer.
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "aim/core/config.h"

namespace aim::train {

/// A named trainable tensor (each tensor once, even when tied under two names).
struct NamedParam {
  std::string name;
  torch::Tensor tensor;
};

/// The unique trainable parameters of `module`, in registration order.
std::vector<NamedParam> unique_parameters(const torch::nn::Module& module);

/// AdamW over named parameters. The update for parameter p with gradient g at step t (1-based):
///   p <- p * (1 - lr * wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
///   p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
/// State is fp32 beside fp32 master weights. `fused` uses ATen's multi-tensor kernel
/// (_fused_adamw_, CPU and CUDA); otherwise the formula above with plain tensor ops (the
/// reference the fused path is tested against).
class AdamW {
 public:
  AdamW(std::vector<NamedParam> params, const OptimConfig& config, bool fused = true);

  /// One update at learning rate `lr` using the parameters' current .grad. Parameters without a
  /// gradient are left alone (their moments too).
  void step(double lr);
  /// Number of updates done.
  int64_t steps() const { return step_; }
  /// Before the first update: counts `steps` updates as done, which (with zero moments) is what
  /// `steps` updates with all-zero gradients and no weight decay leave behind. LlamaGen steps its
  /// discriminator's Adam every step, with a zero loss before the GAN starts, so its first real
  /// update is bias-corrected as update `steps` + 1, not as update 1.
  void start_at(int64_t steps);
  const std::vector<NamedParam>& params() const { return params_; }
  /// Whether weight decay applies to parameter `i` (>= 2 dims).
  bool decays(size_t i) const { return decay_[i]; }

  /// Moments as tensors named "exp_avg/<param>", "exp_avg_sq/<param>" (CPU, fp32) and metadata.
  std::vector<std::pair<std::string, torch::Tensor>> state_tensors() const;
  std::map<std::string, std::string> state_metadata() const;
  /// Restores what state_tensors()/state_metadata() saved. Every parameter must be present
  /// with its shape; errors name `what` (the file) and the tensor.
  void load_state(const std::map<std::string, torch::Tensor>& tensors,
                  const std::map<std::string, std::string>& metadata, const std::string& what);

 private:
  void step_reference(double lr);
  void step_fused(double lr);

  std::vector<NamedParam> params_;
  std::vector<bool> decay_;
  std::vector<torch::Tensor> exp_avg_, exp_avg_sq_;
  std::map<std::string, torch::Tensor> step_by_device_;  // the fused kernel's step count t
  OptimConfig config_;
  bool fused_;
  int64_t step_ = 0;
};

/// Global L2 norm of the gradients (fp32, over parameters that have one).
double grad_norm(const std::vector<NamedParam>& params);
/// Scales every gradient by min(1, max_norm / (norm + 1e-6)) as torch's clip_grad_norm_ does,
/// given the norm computed by grad_norm().
void clip_gradients(const std::vector<NamedParam>& params, double norm, double max_norm);

/// Learning-rate multiplier for optimizer step `step` (0-based) of `total_steps`, as the
/// Hugging Face schedules compute it: linear warm-up from 0 over the warm-up steps, then
/// constant, linear decay or half-cosine decay to min_lr_ratio at total_steps.
double lr_factor(const ScheduleConfig& schedule, int64_t step, int64_t total_steps);
/// Warm-up length in steps: warmup_steps, or ceil(warmup_ratio * total_steps).
int64_t warmup_steps(const ScheduleConfig& schedule, int64_t total_steps);

}  // namespace aim::train
