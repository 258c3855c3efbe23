#include "aim/ops/split.h"

#include <torch/torch.h>

#include <algorithm>
#include <mutex>
#include <utility>

namespace aim::ops {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

using Dims = std::vector<std::pair<int64_t, int64_t>>;  // (stride, size)

// The dimensions of size > 1 as (stride, size) by increasing stride, each merged into the one
// before it when it continues it (its stride is that one's stride times size). Two views of one
// storage at the same storage offset with equal canonical dimensions address the same elements.
Dims canonical_dims(c10::IntArrayRef sizes, c10::IntArrayRef strides) {
  Dims dims;
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] > 1) dims.emplace_back(strides[d], sizes[d]);
  }
  std::sort(dims.begin(), dims.end());
  Dims merged;
  for (const auto& [stride, size] : dims) {
    if (!merged.empty() && merged.back().first * merged.back().second == stride) {
      merged.back().second *= size;
    } else {
      merged.emplace_back(stride, size);
    }
  }
  return merged;
}

// What a split keeps for split_grad_slot: its input's place and layout, and, during a backward
// pass, the gradient buffer in that layout with the parts' places handed out so far.
struct GradPack : torch::CustomClassHolder {
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;  // the input's, not kept alive by this
  int64_t offset = 0;                                 // the input's storage offset
  std::vector<int64_t> sizes, strides;                // the input's
  std::vector<int64_t> starts, widths;                // the parts along the last dimension
  torch::TensorOptions options;

  std::mutex mutex;
  torch::Tensor buffer;  // the input's sizes and strides; made by the first place handed out
  std::vector<bool> handed;

  GradPack(const torch::Tensor& t, const std::vector<int64_t>& parts)
      : storage(t.storage().getWeakStorageImpl()),
        offset(t.storage_offset()),
        sizes(t.sizes().vec()),
        strides(t.strides().vec()),
        options(t.options()),
        handed(parts.size(), false) {
    int64_t start = 0;
    for (int64_t w : parts) {
      starts.push_back(start);
      widths.push_back(w);
      start += w;
    }
  }

  std::vector<int64_t> part_sizes(size_t i) const {
    auto s = sizes;
    s.back() = widths[i];
    return s;
  }
  int64_t part_offset(size_t i) const { return offset + starts[i] * strides.back(); }

  // Whether g is part i of `buf` itself: its storage, offset, sizes and strides.
  bool is_part(const torch::Tensor& buf, const torch::Tensor& g, size_t i) const {
    if (!g.defined() || !g.has_storage() || !g.storage().is_alias_of(buf.storage()) ||
        g.storage_offset() != buf.storage_offset() + part_offset(i) - offset ||
        g.sizes() != c10::IntArrayRef(part_sizes(i))) {
      return false;
    }
    for (size_t d = 0; d < sizes.size(); ++d) {
      if (g.size(d) > 1 && g.stride(d) != strides[d]) return false;
    }
    return true;
  }

  torch::Tensor slot(const torch::Tensor& t) {
    const auto live = storage.lock();
    if (!live || live.get() != t.storage().unsafeGetStorageImpl() || t.dtype() != options.dtype()) {
      return {};
    }
    const auto dims = canonical_dims(t.sizes(), t.strides());
    std::lock_guard<std::mutex> lock(mutex);
    for (size_t i = 0; i < widths.size(); ++i) {
      if (handed[i] || t.storage_offset() != part_offset(i) ||
          dims != canonical_dims(part_sizes(i), strides)) {
        continue;
      }
      if (!buffer.defined()) buffer = torch::empty_strided(sizes, strides, options);
      handed[i] = true;
      return buffer.as_strided(t.sizes(), t.strides(),
                               buffer.storage_offset() + t.storage_offset() - offset);
    }
    return {};
  }

  // The pass's buffer, and which parts are in it already, for the split's backward; the next
  // pass starts afresh. Undefined when a place handed out did not come back as its part's
  // gradient: whoever holds it may still read it, so the gradient goes to a new tensor.
  torch::Tensor take(const tensor_list& grads, std::vector<bool>& placed) {
    std::lock_guard<std::mutex> lock(mutex);
    torch::Tensor buf = std::move(buffer);
    buffer = torch::Tensor();
    placed = handed;
    std::fill(handed.begin(), handed.end(), false);
    if (!buf.defined()) return {};
    for (size_t i = 0; i < placed.size(); ++i) {
      if (placed[i] && !is_part(buf, grads[i], i)) return {};
    }
    return buf;
  }
};

class SplitLastDimFunction;

c10::intrusive_ptr<GradPack> pack_in(const AutogradContext& ctx) {
  const auto it = ctx.saved_data.find("pack");
  if (it == ctx.saved_data.end()) return {};
  return c10::static_intrusive_pointer_cast<GradPack>(it->second.toCapsule());
}

class SplitLastDimFunction : public torch::autograd::Function<SplitLastDimFunction> {
 public:
  static tensor_list forward(AutogradContext* ctx, const torch::Tensor& t, std::vector<int64_t> sizes) {
    ctx->saved_data["sizes"] = sizes;
    ctx->saved_data["shape"] = t.sizes().vec();
    // For zeros in place of a missing gradient: the input's dtype and device, no data.
    ctx->saved_data["like"] = torch::empty({0}, t.options());
    // A gradient buffer in t's layout needs t to be one dense block; no gradient, no buffer.
    if (t.requires_grad() && t.has_storage() && t.numel() > 0 && t.is_non_overlapping_and_dense()) {
      ctx->saved_data["pack"] = c10::IValue::make_capsule(c10::make_intrusive<GradPack>(t, sizes));
    }
    ctx->set_materialize_grads(false);
    return t.split_with_sizes(sizes, -1);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    if (const auto pack = pack_in(*ctx)) {
      std::vector<bool> placed;
      auto buf = pack->take(grads, placed);
      if (buf.defined()) {
        for (size_t i = 0; i < grads.size(); ++i) {
          if (placed[i]) continue;
          auto part = buf.narrow(-1, pack->starts[i], pack->widths[i]);
          if (!grads[i].defined()) {
            part.zero_();
          } else {
            const auto& g = grads[i];
            part.copy_(g.has_storage() && g.storage().is_alias_of(buf.storage()) ? g.clone() : g);
          }
        }
        return {buf, torch::Tensor()};
      }
    }
    const auto shape = ctx->saved_data["shape"].toIntVector();
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

// The split that t's gradient reaches first: t's own node or one a few view nodes above it.
constexpr size_t kMaxNodesSearched = 8;

}  // namespace

torch::Tensor split_grad_slot(const torch::Tensor& t) {
  if (!t.defined() || !t.has_storage() || t.numel() == 0 || !t.grad_fn()) return {};
  std::vector<torch::autograd::Node*> nodes{t.grad_fn().get()};
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (auto* split = dynamic_cast<torch::autograd::CppNode<SplitLastDimFunction>*>(nodes[i])) {
      if (const auto pack = pack_in(split->ctx_)) {
        auto slot = pack->slot(t);
        if (slot.defined()) return slot;
      }
    }
    for (const auto& edge : nodes[i]->next_edges()) {
      if (edge.function && nodes.size() < kMaxNodesSearched) nodes.push_back(edge.function.get());
    }
  }
  return {};
}

torch::Tensor into_split_grad_slot(const torch::Tensor& t, const torch::Tensor& grad) {
  if (!grad.defined()) return grad;
  auto slot = split_grad_slot(t);
  if (!slot.defined()) return grad.to(t.scalar_type());
  slot.copy_(grad);
  return slot;
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
