#pragma once
// What the CUDA adapters (src/ops/*_cuda.cpp) take from the CUDA runtime besides the kernels:
// the namespace they live in, a device guard, the current stream and the device's shared-memory
// limit.
//
// Built normally these are LibTorch's, and the kernels take CUDA tensors. Built for the kernel
// emulator (tests/emu defines AIM_OPS_EMULATED), the same adapter sources run on CPU tensors
// against the emulated kernels: they live in aim::ops::cuda_emu, `kernels::` names the
// emulator's copy of kernels/, the kernels take CPU tensors, there is no stream and no device to
// guard, and the limits are the emulated device's. The emulated tests thereby run the adapters'
// own code (buffers, strides, partial-sum reductions, autograd wiring), not a copy of it.
#include <ATen/MemoryOverlap.h>
#include <c10/core/GradMode.h>
#include <torch/types.h>

#include <cstdint>
#include <initializer_list>
#include <limits>

#include "aim/ops/dispatch.h"

#include "ops/cuda_ns.h"
#include "ssd_state_update.h"  // kernels::ElemType (the emulator's copy in its build)

#ifdef AIM_OPS_EMULATED

#include <cuda_runtime.h>  // the emulator's (tests/emu/include)

namespace aim::kernels_emu {}  // the emulator's copy of kernels/ (tests/emu/translate.cmake)

namespace aim::ops::cuda_emu {
namespace kernels = ::aim::kernels_emu;

/// The device whose tensors the kernels take: the emulated kernels read CPU memory.
inline bool on_kernel_device(const torch::Tensor& t) { return t.is_cpu(); }
struct DeviceGuard {
  explicit DeviceGuard(torch::Device) {}
};
inline cudaStream_t current_stream() { return nullptr; }
inline int64_t device_smem_optin(const torch::Device&) { return ::emu::device().smem_optin; }
}  // namespace aim::ops::cuda_emu

#else

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

namespace aim::ops::cuda {
/// A CUDA tensor on a device the kernels are built for: compute capability 9.0 and newer (sm_90a
/// code and compute_90 PTX, which no older device can run); on others the references run.
inline bool on_kernel_device(const torch::Tensor& t) {
  return t.is_cuda() && at::cuda::getDeviceProperties(t.device().index())->major >= 9;
}
using DeviceGuard = c10::cuda::CUDAGuard;
inline cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream().stream(); }
inline int64_t device_smem_optin(const torch::Device& device) {
  return static_cast<int64_t>(at::cuda::getDeviceProperties(device.index())->sharedMemPerBlockOptin);
}
}  // namespace aim::ops::cuda

#endif

namespace aim::ops::AIM_OPS_CUDA_NS {
/// The element types the kernels take: fp32 and bf16.
inline bool kernel_dtype(torch::ScalarType t) { return t == torch::kFloat || t == torch::kBFloat16; }
inline bool kernel_dtype(const torch::Tensor& t) { return kernel_dtype(t.scalar_type()); }

/// The kernels' name of a dtype kernel_dtype accepts.
inline kernels::ElemType elem_type(torch::ScalarType t) {
  return t == torch::kBFloat16 ? kernels::ElemType::kBFloat16 : kernels::ElemType::kFloat32;
}
inline kernels::ElemType elem_type(const torch::Tensor& t) { return elem_type(t.scalar_type()); }

/// Whether a state a kernel updates in place has no two elements at one address: in an expanded
/// tensor (a cache set up from one row with expand) several threads would read and write the
/// same element. Such a state goes to the reference, whose in-place copy refuses it.
inline bool distinct_elements(const torch::Tensor& t) {
  return !t.defined() || at::has_internal_overlap(t) != at::MemOverlap::Yes;
}

/// Whether an optional tensor (undefined counts as yes) is on x's device.
inline bool on_device_of(const torch::Tensor& t, const torch::Tensor& x) {
  return !t.defined() || t.device() == x.device();
}

/// A parameter vector (a norm's weight, shift, scale) as the kernels read it: fp32 or bf16 as
/// stored when contiguous (a bf16 model's step converts nothing), else a contiguous fp32 copy.
inline torch::Tensor as_param(const torch::Tensor& t) {
  if (!t.defined() || (kernel_dtype(t) && t.is_contiguous())) return t;
  return t.to(torch::kFloat).contiguous();
}

/// Fills the defined outputs with NaN when AIM_POISON_OUTPUTS is on (aim/ops/dispatch.h), so
/// that an element a kernel does not write fails the tests.
inline void maybe_poison(std::initializer_list<torch::Tensor> outputs) {
  if (!poison_outputs()) return;
  for (auto t : outputs) {
    if (t.defined()) t.fill_(std::numeric_limits<float>::quiet_NaN());
  }
}

/// A failed launch as an error naming the op.
inline void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " kernel launch failed: ", cudaGetErrorString(err));
}

/// Whether autograd would record an op over these tensors (undefined ones count as not): the
/// one-token kernels of sampling have no backward and leave such calls to the reference.
inline bool tracks_grad(std::initializer_list<const torch::Tensor*> ts) {
  if (!c10::GradMode::is_enabled()) return false;
  for (const auto* t : ts) {
    if (t->defined() && t->requires_grad()) return true;
  }
  return false;
}
}  // namespace aim::ops::AIM_OPS_CUDA_NS
