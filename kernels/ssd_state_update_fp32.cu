#include "ssd_state_update_kernel.cuh"

namespace aim::kernels {
template cudaError_t ssd_state_update_launch<float>(const SsdStateUpdateParams&, cudaStream_t);
}  // namespace aim::kernels
