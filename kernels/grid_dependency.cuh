#pragma once
// Programmatic dependent launch (sm_90 and later) for the decoding step's chain of small kernels.
//
// A decoding step is a chain of kernels, each a few microseconds long, each starting with loads
// that do not depend on the kernel before it (a layer's weights) and ending in a tail where few
// SMs are busy. Launched as a programmatic dependent of the previous kernel in its stream, a
// kernel's blocks may start before that kernel finishes: they issue those loads (into registers,
// or into L2 with prefetch_to_l2), then
// `wait_for_prior_grid()` holds them until the previous grid has completed and its writes are
// visible; `allow_dependent_grid()` lets the next kernel's blocks start once every block of this
// one has called it (or exited).
//
// The rules that make the overlap safe:
//   - before wait_for_prior_grid(), a thread reads into registers only a layer's weights, and
//     asks for L2 prefetches (of weights, or of the fused SSD step's own state: a prefetch
//     reads nothing into the thread, so it cannot see a stale value); it writes nothing. The
//     launcher asks for a dependent launch only where the previous kernel cannot write those
//     weights: inside a decoding step (aim::ops::DependentLaunchScope), not for an op called on
//     tensors just written (AimModel::logits closes it around a weight it converts);
//   - allow_dependent_grid() comes after wait_for_prior_grid() in every thread. The previous
//     grid then lets this one start only after it has itself waited for its own predecessor, so
//     every grid before the previous one has completed when a dependent starts: its early reads
//     see the recurrent state as written at the previous token.
// (The CPU emulator checks the second rule. Its ThreadSanitizer run checks the first between
// kernels: a dependent grid's accesses before its wait are ordered after no access of the grid
// before it. ATen's own ops are not seen there; the GPU tests' graph-replay and parity checks of
// the decoding step exercise the rest.)
//
// A plain launch, or one on a device before sm_90, serialises as usual and both calls return at
// once.
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

namespace aim::kernels {

/// Waits until the stream's previous grid has completed and its memory operations are visible.
__device__ __forceinline__ void wait_for_prior_grid() {
#if defined(__CUDACC__)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
#else
  ::emu::wait_for_prior_grid();
#endif
}

/// Lets the stream's next grid start (once every block of this one has called it or exited).
__device__ __forceinline__ void allow_dependent_grid() {
#if defined(__CUDACC__)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
#else
  ::emu::allow_dependent_grid();
#endif
}

/// Asks for bytes [p, p + bytes) of global memory in L2 (bulk prefetches, sm_90 and later),
/// without waiting and without holding registers: what a block will read once
/// wait_for_prior_grid() returns. Only the range's 16-byte aligned interior is asked for (the
/// instruction's rule). A hint: nothing is read into the thread.
__device__ __forceinline__ void prefetch_to_l2(const void* p, int64_t bytes) {
  constexpr uintptr_t kAlign = 16;
  // One instruction takes less than 1 MiB: the SASS keeps 16 bits of the size in 16-byte units.
  constexpr int64_t kMaxChunk = (int64_t(1) << 20) - 16;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t begin = (a + kAlign - 1) & ~(kAlign - 1);
  const uintptr_t end = (a + static_cast<uintptr_t>(bytes)) & ~(kAlign - 1);
  for (uintptr_t at = begin; at < end; at += static_cast<uintptr_t>(kMaxChunk)) {
    const int64_t left = static_cast<int64_t>(end - at);
    const uint32_t size = static_cast<uint32_t>(left < kMaxChunk ? left : kMaxChunk);
#if defined(__CUDACC__)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;"
                 :
                 : "l"(__cvta_generic_to_global(reinterpret_cast<const void*>(at))), "r"(size)
                 : "memory");
#endif
#else
    ::emu::prefetch_to_l2(reinterpret_cast<const void*>(at), size);
#endif
  }
}

/// Whether the current device runs programmatic dependent launches (compute capability 9.0 or
/// later); false when the query fails (its error cleared).
inline bool device_has_dependent_launch() {
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return major >= 9;
}

/// Launches kernel<<<grid, block, smem, stream>>>(args...), as a programmatic dependent of the
/// stream's previous kernel when `dependent` is true and the device supports it. Returns the
/// launch status.
template <typename... P, typename... A>
cudaError_t launch_maybe_dependent(bool dependent, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem,
                                   cudaStream_t stream, A&&... args) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  const bool on = dependent && device_has_dependent_launch();
  cfg.attrs = on ? &attr : nullptr;
  cfg.numAttrs = on ? 1 : 0;
  const cudaError_t err = cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...);
  if (err != cudaSuccess) (void)cudaGetLastError();  // reported here, not by a later launch's check
  return err;
}

}  // namespace aim::kernels
