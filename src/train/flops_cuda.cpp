// Device names for the MFU peak table (CUDA builds only).
#include <ATen/cuda/CUDAContext.h>

#include <string>

namespace aim::train {

std::string cuda_device_name(int index) {
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(index);
  return prop ? std::string(prop->name) : std::string("cuda");
}

}  // namespace aim::train

#include <c10/cuda/CUDACachingAllocator.h>

namespace aim::train {

int64_t cuda_peak_memory_bytes(int index) {
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(index));
  return stats.allocated_bytes[0].peak;
}

void cuda_reset_peak_memory(int index) {
  c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(index));
}

}  // namespace aim::train
