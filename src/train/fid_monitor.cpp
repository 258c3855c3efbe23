#include "fid_monitor.h"

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "aim/core/error.h"
#include "aim/core/fileio.h"
#include "aim/data/image.h"
#include "aim/eval/evaluator.h"
#include "aim/sample/generate.h"
#include "aim/sample/plan.h"

namespace aim::train {

namespace {

constexpr int64_t kPoolDim = 2048;

/// Adds all ranks' sums into every rank's.
void all_reduce_sums(DistContext& dist, eval::FeatureSums& s) {
  for (auto* t : {&s.sum, &s.outer, &s.count}) {
    auto on_device = t->to(dist.device());
    dist.all_reduce_(on_device, ReduceOp::kSum);
    *t = on_device.to(torch::kCPU);
  }
}

}  // namespace

double FidMonitor::guidance(const Config& config) {
  if (config.train.fid_cfg > 0) return config.train.fid_cfg;
  return config.model.adaln_group ? 1.75 : 2.0;  // aim sample --preset fid
}

FidMonitor::FidMonitor(const Config& config, DistContext& dist, torch::Device device, VqModel vq,
                       const Say& say)
    : config_(config), dist_(dist), device_(device), vq_(std::move(vq)) {
  const auto& t = config.train;
  AIM_CHECK(vq_, "train.fid_every ", t.fid_every, ": FIDs need the tokenizer that decodes the samples\n",
            "---> HINT: set vq.weights");
  std::optional<eval::ImageBatchSource> ref;
  on_every_rank_or_none(dist, [&] {
    try {
      inception_.emplace(t.fid_inception, device, std::max<int64_t>(1, config.sample.batch_size));
    } catch (const Error& e) {
      throw Error(str_cat("train.fid_inception: ", e.what()));
    }
    try {
      ref.emplace(t.fid_ref);
    } catch (const Error& e) {
      throw Error(str_cat("train.fid_ref: ", e.what()));
    }
  }, "FID: loading train.fid_inception and train.fid_ref");
  if (ref->has_stored_stats()) {
    ref_ = ref->stored_stats();
    say(str_cat("FID: every ", t.fid_every, " steps, ", t.fid_samples, " images at cfg ", guidance(config),
                " against ", t.fid_ref, "'s stored statistics"));
    return;
  }
  // No stored statistics: the features of its images, each rank taking every world-th batch.
  const auto t0 = std::chrono::steady_clock::now();
  eval::FeatureSums sums(kPoolDim);
  const int64_t n = ref->size(), b = inception_->batch_size();
  for (int64_t start = static_cast<int64_t>(dist.rank()) * b; start < n; start += b * dist.world_size())
    sums.add(inception_->extract(ref->read(start, std::min(b, n - start))).pool3);
  all_reduce_sums(dist, sums);
  ref_ = sums.stats();
  say(str_cat("FID: every ", t.fid_every, " steps, ", t.fid_samples, " images at cfg ", guidance(config), " against ",
              t.fid_ref, " (statistics of its ", n, " images, ",
              format_duration(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()), ")"));
}

FidMonitor::Result FidMonitor::evaluate(AimModel& model) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto& c = config_;
  // The sampling weights: the model's own, or a copy in sample.dtype (auto: bf16 on CUDA).
  const std::string& want = c.sample.dtype;
  const auto own = model->backbone->norm_f->weight.scalar_type();
  const auto dtype = want == "bf16" || (want == "auto" && device_.is_cuda()) ? torch::kBFloat16 : torch::kFloat;
  AimModel m = model;
  if (dtype != own) {
    m = AimModel(c.model);
    std::map<std::string, torch::Tensor> sd;
    for (const auto& [k, v] : official_state_dict(model)) sd[k] = v;
    load_official_state_dict(m, sd, "FID sampling copy");
    m->to(device_, dtype);
  }
  const bool was_training = m->is_training();
  m->eval();
  SamplingOptions so;  // the fid preset: no filters
  so.cfg = guidance(c);
  so.seed = static_cast<uint64_t>(c.sample.seed);
  const int64_t total = c.train.fid_samples, batch = c.sample.batch_size;
  const auto labels = plan_labels("random", total, c.model.num_classes, so.seed);
  eval::FeatureSums sums(kPoolDim);
  for (int64_t start = static_cast<int64_t>(dist_.rank()) * batch; start < total;
       start += batch * dist_.world_size()) {
    const int64_t n = std::min(batch, total - start);
    std::vector<int64_t> ids(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = start + i;
    const auto lab = torch::tensor(std::vector<int64_t>(labels.begin() + start, labels.begin() + start + n));
    torch::Tensor tokens;
    {
      torch::NoGradGuard no_grad;
      tokens = generate_tokens(m, lab, ids, so);
    }
    const auto images = to_uint8_hwc(decode_tokens(vq_, tokens, batch));
    sums.add(inception_->extract(images).pool3);
  }
  if (was_training) m->train();
  all_reduce_sums(dist_, sums);
  Result r;
  r.fid = eval::frechet_distance(sums.stats(), ref_);
  r.samples = sums.rows();
  r.cfg = so.cfg;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace aim::train
