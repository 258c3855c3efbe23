#include "selective_scan_bwd_kernel.cuh"

namespace aim::kernels {
template cudaError_t selective_scan_bwd_launch<float>(const SelectiveScanParams&, cudaStream_t);
}  // namespace aim::kernels
