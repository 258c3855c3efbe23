#include "sample_tokens_kernel.cuh"

namespace aim::kernels {
template cudaError_t sample_tokens_launch<__nv_bfloat16>(const SampleTokensParams&, cudaStream_t);
}  // namespace aim::kernels
