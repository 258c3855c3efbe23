// Process-wide switches of the op dispatch (see aim/ops/dispatch.h).
#include "aim/ops/dispatch.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace aim::ops {

namespace {
bool env_flag(const char* name, bool fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  return std::strcmp(v, "0") != 0;
}
std::atomic<bool>& kernels_flag() {
  static std::atomic<bool> flag{env_flag("AIM_CUDA_KERNELS", true)};
  return flag;
}
std::atomic<bool>& cpu_kernels_flag() {
  static std::atomic<bool> flag{env_flag("AIM_CPU_KERNELS", true)};
  return flag;
}
std::atomic<bool>& poison_flag() {
  static std::atomic<bool> flag{env_flag("AIM_POISON_OUTPUTS", false)};
  return flag;
}
}  // namespace

bool cuda_kernels_enabled() { return kernels_flag().load(std::memory_order_relaxed); }
void set_cuda_kernels(bool enabled) { kernels_flag().store(enabled, std::memory_order_relaxed); }
bool cpu_kernels_enabled() { return cpu_kernels_flag().load(std::memory_order_relaxed); }
void set_cpu_kernels(bool enabled) { cpu_kernels_flag().store(enabled, std::memory_order_relaxed); }
bool poison_outputs() { return poison_flag().load(std::memory_order_relaxed); }
void set_poison_outputs(bool enabled) { poison_flag().store(enabled, std::memory_order_relaxed); }

}  // namespace aim::ops
