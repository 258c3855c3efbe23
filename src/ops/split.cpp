#include "aim/ops/split.h"

#include <torch/torch.h>

#include <algorithm>
#include <utility>

namespace aim::ops {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

class SplitLastDimFunction : public torch::autograd::Function<SplitLastDimFunction> {
 public:
  static tensor_list forward(AutogradContext* ctx, const torch::Tensor& t, std::vector<int64_t> sizes) {
    ctx->saved_data["sizes"] = sizes;
    ctx->saved_data["shape"] = t.sizes().vec();
    // For zeros in place of a missing gradient: the input's dtype and device, no data.
    ctx->saved_data["like"] = torch::empty({0}, t.options());
    ctx->set_materialize_grads(false);
    return t.split_with_sizes(sizes, -1);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto shape = ctx->saved_data["shape"].toIntVector();
    if (packed_along_last_dim(grads)) {
      const auto& g0 = grads[0];
      return {g0.as_strided(shape, g0.strides(), g0.storage_offset()), torch::Tensor()};
    }
    const auto sizes = ctx->saved_data["sizes"].toIntVector();
    const auto like = ctx->saved_data["like"].toTensor();
    std::vector<torch::Tensor> parts;
    parts.reserve(grads.size());
    for (size_t i = 0; i < grads.size(); ++i) {
      if (grads[i].defined()) {
        parts.push_back(grads[i]);
      } else {
        auto part_shape = shape;
        part_shape.back() = sizes[i];
        parts.push_back(torch::zeros(part_shape, like.options()));
      }
    }
    return {torch::cat(parts, -1), torch::Tensor()};
  }
};

}  // namespace

bool packed_along_last_dim(const std::vector<torch::Tensor>& parts) {
  if (parts.empty()) return false;
  for (const auto& p : parts) {
    if (!p.defined()) return false;
  }
  const auto& g0 = parts[0];
  const int64_t nd = g0.dim();
  if (nd < 1 || !g0.has_storage()) return false;
  int64_t width = 0;
  for (const auto& p : parts) {
    if (p.dim() != nd || p.scalar_type() != g0.scalar_type() || p.device() != g0.device() ||
        !p.has_storage() || !p.storage().is_alias_of(g0.storage()) || p.size(-1) < 1 ||
        (p.size(-1) > 1 && p.stride(-1) != 1)) {
      return false;
    }
    for (int64_t d = 0; d + 1 < nd; ++d) {
      if (p.size(d) != g0.size(d) || p.stride(d) != g0.stride(d)) return false;
    }
    if (p.storage_offset() != g0.storage_offset() + width) return false;
    width += p.size(-1);
  }
  // The covering view must not overlap itself: the outer dimensions, by increasing stride,
  // each step over everything the ones inside it span, starting from the whole width.
  std::vector<std::pair<int64_t, int64_t>> outer;  // (stride, size)
  for (int64_t d = 0; d + 1 < nd; ++d) {
    if (g0.size(d) > 1) outer.emplace_back(g0.stride(d), g0.size(d));
  }
  std::sort(outer.begin(), outer.end());
  int64_t span = width;
  for (const auto& [stride, size] : outer) {
    if (stride < span) return false;
    span = stride * size;
  }
  return true;
}

std::vector<torch::Tensor> split_last_dim(const torch::Tensor& t, c10::IntArrayRef sizes) {
  TORCH_CHECK(t.dim() >= 1, "split_last_dim: expected a tensor with a last dimension, found ",
              t.sizes());
  int64_t total = 0;
  for (int64_t s : sizes) {
    TORCH_CHECK(s >= 0, "split_last_dim: sizes must be >= 0, found ", sizes);
    total += s;
  }
  TORCH_CHECK(total == t.size(-1), "split_last_dim: sizes ", sizes, " add up to ", total,
              ", expected the last dimension ", t.size(-1));
  return SplitLastDimFunction::apply(t, sizes.vec());
}

}  // namespace aim::ops
