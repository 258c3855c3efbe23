#include "ssd_state_update_kernel.cuh"

namespace aim::kernels {
template cudaError_t ssd_state_update_launch<__nv_bfloat16>(const SsdStateUpdateParams&,
                                                            cudaStream_t);
}  // namespace aim::kernels
