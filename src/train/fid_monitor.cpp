#include "fid_monitor.h"

#include <chrono>
#include <limits>
#include <string>
#include <vector>

#include "aim/core/error.h"
#include "aim/core/fileio.h"
#include "aim/core/progress.h"
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
  AIM_CHECK(vq_->config.codebook_size == config.model.vocab_size, "vq.weights ", config.vq.weights, ": a codebook of ",
            vq_->config.codebook_size, " codes, but model.vocab_size is ", config.model.vocab_size,
            ": the FID samples could not be decoded");
  const int64_t size = VqModel::Impl::side_of(config.model.num_tokens) * vq_->config.downsample();
  std::optional<eval::ImageBatchSource> ref;
  on_every_rank_or_none(dist, [&] {
    try {
      // aim eval's default batch: the same convolution shapes as the evaluation of `aim sample`'s images.
      inception_.emplace(t.fid_inception, device, eval::EvalOptions{}.batch_size);
    } catch (const Error& e) {
      throw Error(str_cat("train.fid_inception: ", e.what()));
    }
    try {
      ref.emplace(t.fid_ref);
    } catch (const Error& e) {
      throw Error(str_cat("train.fid_ref: ", e.what()));
    }
    // As aim eval: FIDs of images of another size than the reference's measure the resize.
    AIM_CHECK(ref->height() == size && ref->width() == size, "train.fid_ref ", t.fid_ref, ": ", ref->width(), "x",
              ref->height(), " images, but the model's samples are ", size, "x", size,
              "\n---> HINT: a reference batch of the model's resolution (ADM's VIRTUAL_imagenet256_labeled.npz for 256)");
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
  on_every_rank_or_none(dist, [&] {
    const int64_t n = ref->size(), b = inception_->batch_size();
    for (int64_t start = static_cast<int64_t>(dist.rank()) * b; start < n; start += b * dist.world_size())
      sums.add(inception_->extract(ref->read(start, std::min(b, n - start))).pool3);
  }, str_cat("FID: the statistics of train.fid_ref ", t.fid_ref));
  all_reduce_sums(dist, sums);
  ref_ = sums.stats();
  say(str_cat("FID: every ", t.fid_every, " steps, ", t.fid_samples, " images at cfg ", guidance(config), " against ",
              t.fid_ref, " (statistics of its ", ref->size(), " images, ",
              format_duration(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()), ")"));
}

FidMonitor::Result FidMonitor::evaluate(AimModel& model, bool show_progress) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto& c = config_;
  // The sampling weights: the model's own, or a replica in sample.dtype (auto: bf16 on CUDA)
  // made once and refreshed with the current weights.
  const std::string& want = c.sample.dtype;
  const auto own = model->backbone->norm_f->weight.scalar_type();
  const auto dtype = want == "bf16" || (want == "auto" && device_.is_cuda()) ? torch::kBFloat16 : torch::kFloat;
  AimModel m = model;
  if (dtype != own) {
    torch::NoGradGuard no_grad;
    if (!replica_) {
      replica_ = AimModel(c.model);
      replica_->to(device_, dtype);
      replica_->eval();
    }
    const auto src = model->named_parameters(true), dst = replica_->named_parameters(true);
    for (const auto& item : src) dst[item.key()].copy_(item.value());
    const auto src_b = model->named_buffers(true), dst_b = replica_->named_buffers(true);
    for (const auto& item : src_b) dst_b[item.key()].copy_(item.value());
    m = replica_;
  }
  const bool was_training = m->is_training();
  m->eval();
  SamplingOptions so;  // the fid preset: no filters
  so.cfg = guidance(c);
  so.seed = static_cast<uint64_t>(c.sample.seed);
  const int64_t total = c.train.fid_samples, batch = c.sample.batch_size;
  const auto labels = plan_labels("random", total, c.model.num_classes, so.seed);
  // Rounds of one batch per rank. Between rounds the ranks agree whether a stop was asked for
  // (a batch system's signal ahead of its time limit): a long FID is then abandoned, so that the
  // checkpoint is written in the grace period; the trainer runs it again on resume.
  const int64_t per_round = batch * dist_.world_size(), rounds = (total + per_round - 1) / per_round;
  Progress progress("fid", total, "img", show_progress && dist_.is_main());
  eval::FeatureSums sums(kPoolDim);
  Result r;
  for (int64_t round = 0; round < rounds; ++round) {
    const int64_t start = round * per_round + static_cast<int64_t>(dist_.rank()) * batch;
    on_every_rank_or_none(dist_, [&] {
      if (start >= total) return;
      const int64_t n = std::min(batch, total - start);
      std::vector<int64_t> ids(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = start + i;
      const auto lab = torch::tensor(std::vector<int64_t>(labels.begin() + start, labels.begin() + start + n));
      const auto tokens = generate_tokens(m, lab, ids, so);
      sums.add(inception_->extract(to_uint8_hwc(decode_tokens(vq_, tokens, batch))).pool3);
    }, "FID: sampling and scoring");
    const int64_t drawn = std::min(total, (round + 1) * per_round);
    progress.update(drawn - progress.done());
    if (round + 1 < rounds && dist_.any_true(stop_signal() != 0)) {
      r.abandoned = true;
      r.samples = drawn;
      break;
    }
  }
  if (was_training) m->train();
  r.cfg = so.cfg;
  r.dtype = dtype == torch::kBFloat16 ? "bf16" : "fp32";
  if (r.abandoned) {
    r.fid = std::numeric_limits<double>::quiet_NaN();
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
  }
  all_reduce_sums(dist_, sums);
  // The matrix square root once, where the result is reported.
  r.fid = dist_.is_main() ? eval::frechet_distance(sums.stats(), ref_) : std::numeric_limits<double>::quiet_NaN();
  r.samples = sums.rows();
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace aim::train
