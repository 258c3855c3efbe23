#include "selective_scan_bwd_kernel.cuh"

namespace aim::kernels {
template cudaError_t selective_scan_bwd_launch<__nv_bfloat16>(const SelectiveScanParams&, cudaStream_t);
}  // namespace aim::kernels
