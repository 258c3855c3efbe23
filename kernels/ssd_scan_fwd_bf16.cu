#include "ssd_scan_fwd_kernel.cuh"

namespace aim::kernels {
template cudaError_t ssd_fwd_launch<__nv_bfloat16, true, false>(const SsdScanParams&, cudaStream_t);
}  // namespace aim::kernels
