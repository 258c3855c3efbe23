#pragma once
// What the launchers ask of the current device.
#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <map>
#include <mutex>
#include <utility>

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

/// The dynamic shared memory each (device, kernel) has been opted in to, for the whole process:
/// every launch site of a kernel shares it, and under its lock a setting is only ever raised, so
/// one thread cannot lower it between another's raise and that one's launch.
struct SmemOptInRecord {
  std::mutex mutex;
  std::map<std::pair<int, const void*>, int> bytes;
};
inline SmemOptInRecord& smem_opt_in_record() {
  static SmemOptInRecord record;
  return record;
}

/// One kernel's opt-in to `bytes` of dynamic shared memory where that and its `static_bytes` pass
/// the default 48 KiB. The setting persists per device and function, so it is made once per
/// device (again only for a larger size; never lowered, see SmemOptInRecord): a launch captured
/// into a CUDA graph then makes no other CUDA call. A failure's error is returned and cleared (it
/// would otherwise surface as a later launch's). Keep one, static, per launch site.
class DynamicSmemOptIn {
 public:
  template <typename Kernel>
  cudaError_t ensure(Kernel kernel, size_t bytes, size_t static_bytes = 0) {
    if (bytes + static_bytes <= 48 * 1024) return cudaSuccess;
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      return err;
    }
    const int size = static_cast<int>(bytes);
    if (device < kMaxDevices && configured_[device].load() >= size) return cudaSuccess;
    auto& record = smem_opt_in_record();
    std::lock_guard<std::mutex> lock(record.mutex);
    int& done = record.bytes[{device, reinterpret_cast<const void*>(kernel)}];
    if (done < size) {
      err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, size);
      if (err != cudaSuccess) {
        (void)cudaGetLastError();
        return err;
      }
      done = size;
    }
    if (device < kMaxDevices && configured_[device].load() < done) configured_[device].store(done);
    return cudaSuccess;
  }

 private:
  static constexpr int kMaxDevices = 64;
  std::atomic<int> configured_[kMaxDevices] = {};
};

}  // namespace aim::kernels
