#include "aim/data/code_loader.h"

#include <torch/torch.h>

#include "aim/core/error.h"

namespace aim {

CodeLoader::CodeLoader(std::shared_ptr<const CodeDataset> dataset, DistributedSampler sampler,
                       int64_t batch_size, int64_t epoch, int64_t start_batch, int64_t prefetch)
    : dataset_(std::move(dataset)), sampler_(sampler), batch_size_(batch_size), epoch_(epoch),
      next_batch_(start_batch), prefetch_(std::max<int64_t>(1, prefetch)),
      queue_(static_cast<size_t>(prefetch_)) {
  AIM_CHECK(batch_size >= 1, "loader: batch size must be >= 1, got ", batch_size);
  // The sampler ranks positions among the valid (readable) samples.
  const auto& valid = dataset_->valid_indices();
  order_ = sampler_.indices(epoch_);
  for (auto& i : order_) {
    AIM_CHECK(i < static_cast<int64_t>(valid.size()), "loader: sampler built for ", i + 1,
              "+ samples, dataset has ", valid.size(), " valid ones");
    i = valid[i];
  }
  batches_ = static_cast<int64_t>(order_.size()) / batch_size_;
  AIM_CHECK(start_batch >= 0 && start_batch <= batches_, "loader: start batch ", start_batch,
            " outside the epoch's ", batches_, " batches");
  worker_ = std::thread([this] { run(); });
}

CodeLoader::~CodeLoader() {
  queue_.stop();
  if (worker_.joinable()) worker_.join();
}

void CodeLoader::run() {
  std::exception_ptr error;
  try {
    const int64_t num_aug = dataset_->info().num_aug;
    for (int64_t b = next_batch_; b < batches_; ++b) {
      std::vector<int64_t> idx(order_.begin() + b * batch_size_, order_.begin() + (b + 1) * batch_size_);
      std::vector<int64_t> augs(idx.size());
      for (size_t k = 0; k < idx.size(); ++k) augs[k] = sampler_.augmentation(idx[k], epoch_, num_aug);
      CodeBatch batch;
      dataset_->gather(idx, augs, batch.codes, batch.labels);
      batch.epoch = epoch_;
      batch.batch = b;
      if (!queue_.push(std::move(batch))) return;
    }
  } catch (...) {
    error = std::current_exception();
  }
  queue_.finish(error);
}

std::optional<CodeBatch> CodeLoader::next() { return queue_.pop(); }

}  // namespace aim
