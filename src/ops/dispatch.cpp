// Process-wide switches of the op dispatch (see aim/ops/dispatch.h).
#include "aim/ops/dispatch.h"

#include <torch/torch.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "ops/kernel_table.h"

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
std::atomic<const KernelTable*>& emulated_table() {
  static std::atomic<const KernelTable*> table{nullptr};
  return table;
}
std::atomic<bool>& poison_flag() {
  static std::atomic<bool> flag{env_flag("AIM_POISON_OUTPUTS", false)};
  return flag;
}
}  // namespace

bool env_switch(const char* name, bool fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  const std::string s(v);
  TORCH_CHECK(s == "0" || s == "1", "environment variable ", name, ": expected 0 or 1, found '", s, "'");
  return s == "1";
}

bool cuda_kernels_enabled() { return kernels_flag().load(std::memory_order_relaxed); }
void set_cuda_kernels(bool enabled) { kernels_flag().store(enabled, std::memory_order_relaxed); }
bool cpu_kernels_enabled() { return cpu_kernels_flag().load(std::memory_order_relaxed); }
void set_cpu_kernels(bool enabled) { cpu_kernels_flag().store(enabled, std::memory_order_relaxed); }
void set_emulated_kernels(const KernelTable* table) {
  emulated_table().store(table, std::memory_order_release);
}
const KernelTable* emulated_kernels_for(const torch::Tensor& t) {
  const KernelTable* table = emulated_table().load(std::memory_order_acquire);
  return table != nullptr && t.is_cpu() && cuda_kernels_enabled() ? table : nullptr;
}
namespace {
thread_local bool t_dependent_scope = false;
}  // namespace

DependentLaunchScope::DependentLaunchScope(bool enabled) : outer_(t_dependent_scope) {
  t_dependent_scope = enabled;
}
DependentLaunchScope::~DependentLaunchScope() { t_dependent_scope = outer_; }
bool dependent_launch_enabled() { return t_dependent_scope && env_switch("AIM_PDL", true); }

bool poison_outputs() { return poison_flag().load(std::memory_order_relaxed); }
void set_poison_outputs(bool enabled) { poison_flag().store(enabled, std::memory_order_relaxed); }

}  // namespace aim::ops
