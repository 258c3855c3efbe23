#pragma once
// Pieces shared by the stage-1 (tokenizer) and stage-2 (AiM) trainers. Internal to src/train.
#include <ATen/autocast_mode.h>
#include <c10/core/DeviceType.h>

#include <cstdint>
#include <string>

namespace aim::train {

/// bf16 autocast for a forward pass (parameters stay fp32); a no-op when not enabled.
class AutocastScope {
 public:
  AutocastScope(bool enabled, c10::DeviceType device) : enabled_(enabled), device_(device) {
    if (!enabled_) return;
    prev_enabled_ = at::autocast::is_autocast_enabled(device_);
    prev_dtype_ = at::autocast::get_autocast_dtype(device_);
    at::autocast::set_autocast_enabled(device_, true);
    at::autocast::set_autocast_dtype(device_, at::kBFloat16);
    at::autocast::increment_nesting();
  }
  ~AutocastScope() {
    if (!enabled_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(device_, prev_enabled_);
    at::autocast::set_autocast_dtype(device_, prev_dtype_);
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool enabled_;
  c10::DeviceType device_;
  bool prev_enabled_ = false;
  at::ScalarType prev_dtype_ = at::kBFloat16;
};

/// Seed of the random draws of one micro-batch: a pure function of (seed, step, micro-batch,
/// rank), so a resumed run draws exactly what the uninterrupted one would have drawn without
/// saving generator states.
uint64_t micro_seed(int64_t seed, int64_t step, int64_t micro, int64_t rank);

/// The signal that asked the running training to stop (0 = none); see install_stop_handlers().
int stop_signal();

/// `v` with `precision` significant digits.
std::string fmt(double v, int precision = 4);
/// 12, 3.4k, 5.6M.
std::string fmt_count(double v);

}  // namespace aim::train
