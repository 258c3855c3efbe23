#pragma once
// What the launchers ask of the current device.
#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>

namespace aim::kernels {

/// The current device's SM count, or an H100's (132) when the query fails; a failed query's
/// error is cleared so that it does not surface as a later launch's.
inline int current_sm_count() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      sms < 1) {
    (void)cudaGetLastError();
    sms = 132;
  }
  return sms;
}

/// One kernel's opt-in to `bytes` of dynamic shared memory where that and its `static_bytes` pass
/// the default 48 KiB. The setting persists per device and function, so it is made once per
/// device (again only for a larger size): a launch captured into a CUDA graph then makes no other
/// CUDA call. Keep one, static, per kernel.
class DynamicSmemOptIn {
 public:
  template <typename Kernel>
  cudaError_t ensure(Kernel kernel, size_t bytes, size_t static_bytes = 0) {
    if (bytes + static_bytes <= 48 * 1024) return cudaSuccess;
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) return err;
    const int size = static_cast<int>(bytes);
    if (device < kMaxDevices && configured_[device].load() >= size) return cudaSuccess;
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, size);
    if (err == cudaSuccess && device < kMaxDevices) configured_[device].store(size);
    return err;
  }

 private:
  static constexpr int kMaxDevices = 64;
  std::atomic<int> configured_[kMaxDevices] = {};
};

}  // namespace aim::kernels
