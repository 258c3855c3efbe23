// Chunked lm_head + cross-entropy on CUDA. The forward pass also computes the gradients (for an
// upstream gradient of 1) while each chunk of logits is alive: per chunk, logits = h W^T
// (cuBLAS), the kernel turns them into the loss rows and d(loss)/d(logits) in place, then
// dh = dlogits W and dW += dlogits^T h. The backward pass only scales the saved gradients.
#include "ops/loss_cuda.h"
#include "ops/cuda_backend.h"

#include <torch/torch.h>

#include <algorithm>
#include <limits>

#include "cross_entropy.h"

namespace aim::ops::AIM_OPS_CUDA_NS {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

constexpr int64_t kChunkBytes = int64_t{256} << 20;

class LinearCrossEntropyFunction
    : public torch::autograd::Function<LinearCrossEntropyFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& hidden,
                               const torch::Tensor& weight, const torch::Tensor& targets,
                               int64_t ignore_index, int64_t chunk_rows, bool need_grads) {
    DeviceGuard guard(hidden.device());
    const auto dtype = hidden.scalar_type();
    const auto h = hidden.contiguous();
    const auto w = weight.to(dtype).contiguous();  // [V, D]
    const auto tgt = targets.contiguous();
    const int64_t n = h.size(0), vocab = w.size(0);
    const int64_t elem = dtype == torch::kBFloat16 ? 2 : 4;
    const int64_t rows = chunk_rows > 0 ? chunk_rows
                                        : std::max<int64_t>(1, kChunkBytes / (vocab * elem));
    // Rows that count towards the mean, kept on the device (no synchronisation).
    const auto inv_count =
        1.0 / (tgt != ignore_index).sum().to(torch::kFloat).clamp_min(1.0);
    auto losses = torch::empty({n}, h.options().dtype(torch::kFloat));
    // Without gradients (evaluation), the kernel's in-place gradients are simply dropped.
    auto dh = need_grads ? torch::empty_like(h) : torch::Tensor();
    auto dw = need_grads ? torch::zeros({vocab, h.size(1)}, h.options().dtype(torch::kFloat))
                         : torch::Tensor();
    maybe_poison({losses, dh});  // (tests: a row the kernel or the products leave unwritten shows)
    const auto stream = current_stream();
    const auto kernel_type = elem_type(dtype);
    for (int64_t start = 0; start < n; start += rows) {
      const int64_t len = std::min(rows, n - start);
      const auto hc = h.narrow(0, start, len);
      auto logits = torch::mm(hc, w.t());  // [len, V], becomes dlogits
      TORCH_CHECK(logits.scalar_type() == dtype && logits.stride(1) == 1,
                  "linear_cross_entropy: logits of ", dtype, " [*, 1] strides expected, found ",
                  logits.scalar_type(), " ", logits.strides(), " (is autocast on inside?)");
      kernels::SoftmaxXentParams p;
      p.rows = static_cast<int>(len);
      p.vocab = static_cast<int>(vocab);
      p.logits = logits.data_ptr();
      p.row_stride = logits.stride(0);
      p.targets = tgt.data_ptr<int64_t>() + start;
      p.ignore_index = ignore_index;
      p.losses = losses.data_ptr<float>() + start;
      p.inv_count = inv_count.data_ptr<float>();
      const cudaError_t err = kernels::softmax_xent_fwd_bwd_cuda(p, kernel_type, stream);
      TORCH_CHECK(err == cudaSuccess, "linear_cross_entropy kernel launch failed: ",
                  cudaGetErrorString(err));
      if (need_grads) {
        dh.narrow(0, start, len).copy_(torch::mm(logits, w));
        dw.add_(torch::mm(logits.t(), hc));
      }
    }
    ctx->save_for_backward({dh, dw});
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    return (losses.sum() * inv_count).squeeze();
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto g = grads[0].to(torch::kFloat);
    const auto weight_dtype =
        static_cast<torch::ScalarType>(ctx->saved_data["weight_dtype"].toInt());
    auto dh = (saved[0].to(torch::kFloat) * g).to(saved[0].scalar_type());
    auto dw = (saved[1] * g).to(weight_dtype);
    return {dh, dw, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

bool linear_cross_entropy_supported(const torch::Tensor& hidden, const torch::Tensor& weight,
                                    const torch::Tensor& targets) {
  const auto dt = hidden.scalar_type();
  return on_kernel_device(hidden) && kernel_dtype(dt) &&
         weight.device() == hidden.device() && targets.device() == hidden.device() &&
         weight.size(0) >= 1 && weight.size(0) <= std::numeric_limits<int>::max();
}

torch::Tensor linear_cross_entropy(const torch::Tensor& hidden, const torch::Tensor& weight,
                                   const torch::Tensor& targets, int64_t ignore_index,
                                   int64_t chunk_rows) {
  const bool need_grads =
      torch::GradMode::is_enabled() && (hidden.requires_grad() || weight.requires_grad());
  return LinearCrossEntropyFunction::apply(hidden, weight, targets, ignore_index, chunk_rows,
                                           need_grads);
}

}  // namespace aim::ops::AIM_OPS_CUDA_NS
