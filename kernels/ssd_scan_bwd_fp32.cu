#include "ssd_scan_bwd_kernel.cuh"

namespace aim::kernels {
template cudaError_t ssd_bwd_launch<float>(const SsdScanParams&, cudaStream_t);
template int ssd_bwd_active_clusters<float>(int, int, int);
}  // namespace aim::kernels
