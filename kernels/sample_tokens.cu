// Host entry of the fused next-token kernel: argument checks and the element type.
#include "sample_tokens_kernel.cuh"

namespace aim::kernels {

extern template cudaError_t sample_tokens_launch<float>(const SampleTokensParams&, cudaStream_t);
extern template cudaError_t sample_tokens_launch<__nv_bfloat16>(const SampleTokensParams&,
                                                                cudaStream_t);

cudaError_t sample_tokens_cuda(const SampleTokensParams& p, ElemType dtype, cudaStream_t stream) {
  if (p.rows < 0 || !sample_tokens_supported(p.vocab, p.top_k) || p.top_k < 0 ||
      !(p.temperature > 0.f) || !(p.top_p > 0.0 && p.top_p <= 1.0) || p.cond == nullptr ||
      p.cond_row_stride < 0 || p.tokens == nullptr ||
      (p.uncond != nullptr && p.uncond_row_stride < 0) ||
      (p.top_k != 1 && p.sample_ids == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (p.rows == 0) return cudaSuccess;
  return dtype == ElemType::kBFloat16 ? sample_tokens_launch<__nv_bfloat16>(p, stream)
                                      : sample_tokens_launch<float>(p, stream);
}

}  // namespace aim::kernels
