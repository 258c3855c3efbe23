#include "rms_norm_kernel.cuh"

namespace aim::kernels {
template cudaError_t add_rms_norm_fwd_launch<float, float>(const AddRmsNormParams&, cudaStream_t);
template cudaError_t add_rms_norm_bwd_launch<float, float>(const AddRmsNormParams&, cudaStream_t);
template cudaError_t gated_rms_norm_fwd_launch<float>(const GatedRmsNormParams&, cudaStream_t);
template cudaError_t gated_rms_norm_bwd_launch<float>(const GatedRmsNormParams&, cudaStream_t);
}  // namespace aim::kernels
