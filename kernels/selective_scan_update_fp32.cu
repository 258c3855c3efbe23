#include "selective_scan_update_kernel.cuh"

namespace aim::kernels {
template cudaError_t selective_state_update_launch<float>(const SelectiveStateUpdateParams&,
                                                      cudaStream_t);
}  // namespace aim::kernels
