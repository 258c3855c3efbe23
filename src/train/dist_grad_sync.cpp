// Gradient averaging for data parallelism through c10d::Reducer, the engine of PyTorch's DDP
// (see aim/train/dist.h). The Reducer hooks every parameter's gradient accumulator: when armed by
// prepare_for_backward(), each hook copies its gradient (divided by the world size) into a flat
// bucket and all-reduces the bucket once it is full; at the end of the backward pass the averaged
// buckets are copied back into .grad. When not armed, the hooks do nothing.
#include "aim/train/dist.h"

#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <algorithm>
#include <unordered_set>
#include <utility>

#include "aim/core/error.h"
#include "dist_backends.h"

namespace aim::train {

struct GradSync::Impl {
  std::unique_ptr<c10d::Reducer> reducer;
};

GradSync::GradSync(std::vector<torch::Tensor> params, DistContext& ctx, GradSyncOptions options)
    : impl_(std::make_unique<Impl>()) {
  AIM_CHECK(!params.empty(), "GradSync: expected parameters, found none");
  AIM_CHECK(options.first_bucket_bytes > 0 && options.bucket_bytes > 0,
            "GradSync: expected positive bucket sizes, found first_bucket_bytes=",
            options.first_bucket_bytes, ", bucket_bytes=", options.bucket_bytes);
  std::unordered_set<const c10::TensorImpl*> seen;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    AIM_CHECK(p.defined(), "GradSync: parameter ", i, " is undefined");
    AIM_CHECK(p.is_leaf() && p.requires_grad(), "GradSync: parameter ", i,
              ": expected a leaf tensor that requires grad");
    AIM_CHECK(seen.insert(p.unsafeGetTensorImpl()).second, "GradSync: parameter ", i,
              " was passed before (pass tied weights once)");
    const bool same_device = p.device().type() == ctx.device().type() &&
                             (!ctx.device().has_index() || p.device() == ctx.device());
    AIM_CHECK(same_device, "GradSync: parameter ", i, ": expected device ", ctx.device().str(),
              ", found ", p.device().str());
  }
  if (!ctx.distributed()) return;

  const auto& group = ctx.impl_->group;
  try {
    // Same count, shapes and dtypes on every rank, or a message saying which differs.
    c10d::verify_params_across_processes(group, params, std::nullopt);
  } catch (const std::exception& e) {
    throw Error(str_cat("GradSync on rank ", ctx.rank(), ": the ranks' parameters differ: ",
                        detail::message_of(e)));
  }
  const std::vector<size_t> limits{static_cast<size_t>(options.first_bucket_bytes),
                                   static_cast<size_t>(options.bucket_bytes)};
  auto assignment = c10d::compute_bucket_assignment_by_size(params, limits);
  auto buckets = std::move(std::get<0>(assignment));
  // Gradients arrive roughly last parameter first; DDP hands the buckets over reversed.
  std::reverse(buckets.begin(), buckets.end());
  const size_t n = params.size();
  impl_->reducer = std::make_unique<c10d::Reducer>(
      std::move(params), std::move(buckets), group, std::vector<bool>(n, false),
      options.bucket_bytes, /*find_unused_parameters=*/false, /*gradient_as_bucket_view=*/false,
      std::unordered_map<size_t, std::string>{}, options.first_bucket_bytes,
      /*skip_all_reduce_unused_params=*/false, /*use_python_reducer=*/false,
      /*bucket_bytes_cap_list=*/std::vector<int64_t>{});
}

GradSync::GradSync(GradSync&&) noexcept = default;
GradSync& GradSync::operator=(GradSync&&) noexcept = default;
GradSync::~GradSync() = default;

void GradSync::prepare_for_backward(bool sync) {
  if (!impl_ || !impl_->reducer) return;
  auto& reducer = *impl_->reducer;
  // As DDP before each forward: throws if the last synchronised backward left parameters
  // without gradient, and after the first synchronised backward re-buckets the parameters in
  // the order their gradients arrived (collective: every rank calls this at the same step).
  reducer.rebuild_buckets();
  if (sync) {
    reducer.prepare_for_forward();
    reducer.prepare_for_backward({});
  }
}

int64_t GradSync::bucket_count() const {
  if (!impl_ || !impl_->reducer) return 0;
  return static_cast<int64_t>(impl_->reducer->get_grad_buckets(false).size());
}

}  // namespace aim::train
