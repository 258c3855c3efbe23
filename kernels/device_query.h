#pragma once
// What the launchers ask of the current device.
#include <cuda_runtime.h>

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

}  // namespace aim::kernels
