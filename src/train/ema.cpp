#include "aim/train/ema.h"

#include "aim/core/error.h"

namespace aim::train {

Ema::Ema(const AimModel& model, double decay) : ema_(model->config), decay_(decay) {
  torch::NoGradGuard no_grad;
  ema_->to(model->parameters().front().device());
  const auto src = model->named_parameters(true);
  auto dst = ema_->named_parameters(true);
  for (const auto& item : src) {
    auto* d = dst.find(item.key());
    AIM_CHECK(d != nullptr, str_cat("EMA: parameter ", item.key(), " missing from the copy"));
    d->copy_(item.value());
  }
  ema_->eval();
  for (auto& p : ema_->parameters()) p.set_requires_grad(false);
}

void Ema::update(const AimModel& model) {
  torch::NoGradGuard no_grad;
  if (dst_.empty()) {
    // Tied weights appear under two names; lerp each storage once.
    std::set<const void*> seen;
    const auto src = model->named_parameters(true);
    const auto dst = ema_->named_parameters(true);
    for (const auto& item : src) {
      if (!seen.insert(item.value().unsafeGetTensorImpl()).second) continue;
      dst_.push_back(dst[item.key()]);
      src_.push_back(item.value());
    }
  }
  torch::_foreach_lerp_(dst_, src_, 1.0 - decay_);
}

}  // namespace aim::train
