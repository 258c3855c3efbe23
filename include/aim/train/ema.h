#pragma once
// Exponential moving average of the weights, kept as a second model (fp32) so that it can be
// saved in the official layout (ema.safetensors) and sampled from directly.
#include "aim/model/aim.h"

namespace aim::train {

class Ema {
 public:
  /// Starts as an exact copy of `model` (same device), in eval mode.
  Ema(const AimModel& model, double decay);
  /// ema <- decay * ema + (1 - decay) * model, for every parameter and buffer.
  void update(const AimModel& model);
  AimModel& model() { return ema_; }
  const AimModel& model() const { return ema_; }
  double decay() const { return decay_; }

 private:
  AimModel ema_;
  double decay_;
  std::vector<torch::Tensor> dst_, src_;
};

}  // namespace aim::train
