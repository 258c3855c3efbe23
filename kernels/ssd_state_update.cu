// Host entry: picks the instantiation for the element type.
#include "ssd_state_update_kernel.cuh"

namespace aim::kernels {

extern template cudaError_t ssd_state_update_launch<float>(const SsdStateUpdateParams&,
                                                           cudaStream_t);
extern template cudaError_t ssd_state_update_launch<__nv_bfloat16>(const SsdStateUpdateParams&,
                                                                   cudaStream_t);

cudaError_t ssd_state_update_cuda(const SsdStateUpdateParams& params, ElemType dtype,
                                  cudaStream_t stream) {
  return dtype == ElemType::kBFloat16 ? ssd_state_update_launch<__nv_bfloat16>(params, stream)
                                      : ssd_state_update_launch<float>(params, stream);
}

}  // namespace aim::kernels
