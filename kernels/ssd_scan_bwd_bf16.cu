#include "ssd_scan_bwd_kernel.cuh"

namespace aim::kernels {
template cudaError_t ssd_bwd_launch<__nv_bfloat16>(const SsdScanParams&, cudaStream_t);
template int ssd_bwd_active_clusters<__nv_bfloat16>(int, int, int);
}  // namespace aim::kernels
