#pragma once
// AutocastScope: mixed-precision autocast (LibTorch's, as torch.autocast) for a scope.
#include <ATen/autocast_mode.h>
#include <c10/core/DeviceType.h>

namespace aim {

/// Autocast to `dtype` on `device` for the scope (parameters stay as stored); a no-op when not
/// enabled. Restores the previous state, and drops autocast's cast-weight cache on leaving the
/// outermost scope, as torch.autocast does.
class AutocastScope {
 public:
  AutocastScope(bool enabled, c10::DeviceType device, at::ScalarType dtype = at::kBFloat16)
      : enabled_(enabled), device_(device) {
    if (!enabled_) return;
    prev_enabled_ = at::autocast::is_autocast_enabled(device_);
    prev_dtype_ = at::autocast::get_autocast_dtype(device_);
    at::autocast::set_autocast_enabled(device_, true);
    at::autocast::set_autocast_dtype(device_, dtype);
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

}  // namespace aim
