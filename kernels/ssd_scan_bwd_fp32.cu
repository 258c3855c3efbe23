#include "ssd_scan_bwd_kernel.cuh"

namespace aim::kernels {
template cudaError_t ssd_bwd_launch<float>(const SsdScanParams&, cudaStream_t);
}  // namespace aim::kernels
