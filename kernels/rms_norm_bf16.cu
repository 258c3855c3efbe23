#include "rms_norm_kernel.cuh"

namespace aim::kernels {
template cudaError_t add_rms_norm_fwd_launch<__nv_bfloat16, float>(const AddRmsNormParams&,
                                                                   cudaStream_t);
template cudaError_t add_rms_norm_fwd_launch<__nv_bfloat16, __nv_bfloat16>(
    const AddRmsNormParams&, cudaStream_t);
template cudaError_t add_rms_norm_bwd_launch<__nv_bfloat16, float>(const AddRmsNormParams&,
                                                                   cudaStream_t);
template cudaError_t add_rms_norm_bwd_launch<__nv_bfloat16, __nv_bfloat16>(
    const AddRmsNormParams&, cudaStream_t);
template cudaError_t gated_rms_norm_fwd_launch<__nv_bfloat16>(const GatedRmsNormParams&,
                                                              cudaStream_t);
template cudaError_t gated_rms_norm_bwd_launch<__nv_bfloat16>(const GatedRmsNormParams&,
                                                              cudaStream_t);
}  // namespace aim::kernels
