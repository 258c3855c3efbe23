// Device names for the MFU peak table and compute capabilities (CUDA builds only).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAFunctions.h>

#include <string>

namespace aim::train {

std::string cuda_device_name(int index) {
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(index);
  return prop ? std::string(prop->name) : std::string("cuda");
}

int cuda_compute_major(int index) {
  const cudaDeviceProp* prop =
      at::cuda::getDeviceProperties(index < 0 ? c10::cuda::current_device() : static_cast<c10::DeviceIndex>(index));
  return prop ? prop->major : 0;
}

}  // namespace aim::train

#include <ATen/Context.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>

namespace aim::train {
namespace {

// The caching allocator's statistics exist only once CUDA is initialised (its device table is
// sized then), and they are kept per device index: a Device("cuda") without one (index -1) means
// the current device, as it does for tensors.
c10::DeviceIndex allocator_device(int index) {
  at::globalContext().lazyInitDevice(c10::DeviceType::CUDA);
  return index < 0 ? c10::cuda::current_device() : static_cast<c10::DeviceIndex>(index);
}

}  // namespace

int64_t cuda_peak_memory_bytes(int index) {
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(allocator_device(index));
  return stats.allocated_bytes[0].peak;
}

void cuda_reset_peak_memory(int index) {
  c10::cuda::CUDACachingAllocator::resetPeakStats(allocator_device(index));
}

}  // namespace aim::train
