// Checks and dispatch for the loss op.
#include "aim/ops/loss.h"

#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include "aim/ops/dispatch.h"
#include "ops/kernel_table.h"
#ifdef AIM_WITH_CUDA
#include "ops/loss_cuda.h"
#endif

namespace aim::ops {

torch::Tensor linear_cross_entropy(const torch::Tensor& hidden, const torch::Tensor& weight,
                                   const torch::Tensor& targets, int64_t ignore_index,
                                   int64_t chunk_rows) {
  TORCH_CHECK(hidden.dim() == 2, "linear_cross_entropy: hidden must be [N, D], got ",
              hidden.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == hidden.size(1),
              "linear_cross_entropy: weight must be [V, ", hidden.size(1), "], got ",
              weight.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == hidden.size(0) &&
                  targets.scalar_type() == torch::kLong,
              "linear_cross_entropy: targets must be int64 [", hidden.size(0), "], got ",
              targets.scalar_type(), " ", targets.sizes());
  TORCH_CHECK(chunk_rows >= 0, "linear_cross_entropy: chunk_rows must be >= 0, got ", chunk_rows);
  // Under autocast the product runs in autocast's dtype, as the model's torch::linear lm_head
  // would (bf16 logits, the loss in fp32). Both operands are cast here, once, and every path
  // below runs with autocast off: a matmul inside the kernel path must not change the logits'
  // dtype behind the kernel, which reads them as hidden's dtype.
  const auto device_type = hidden.device().type();
  if (at::autocast::is_autocast_enabled(device_type)) {
    const auto dtype = at::autocast::get_autocast_dtype(device_type);
    const auto h = at::autocast::cached_cast(dtype, hidden, device_type);
    const auto w = at::autocast::cached_cast(dtype, weight, device_type);
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    return linear_cross_entropy(h, w, targets, ignore_index, chunk_rows);
  }
#ifdef AIM_WITH_CUDA
  if (hidden.is_cuda() && cuda_kernels_enabled() &&
      cuda::linear_cross_entropy_supported(hidden, weight, targets)) {
    return cuda::linear_cross_entropy(hidden, weight, targets, ignore_index, chunk_rows);
  }
#endif
  if (const auto* k = emulated_kernels_for(hidden);
      k && k->linear_cross_entropy_supported(hidden, weight, targets)) {
    return k->linear_cross_entropy(hidden, weight, targets, ignore_index, chunk_rows);
  }
  return ref::linear_cross_entropy(hidden, weight, targets, ignore_index);
}

}  // namespace aim::ops
