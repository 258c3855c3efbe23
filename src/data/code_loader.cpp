#include "aim/data/code_loader.h"

#include <torch/torch.h>

#include "aim/core/error.h"

namespace aim {

CodeLoader::CodeLoader(std::shared_ptr<const CodeDataset> dataset, DistributedSampler sampler,
                       int64_t batch_size, int64_t epoch, int64_t start_batch, int64_t prefetch)
    : dataset_(std::move(dataset)), sampler_(sampler), batch_size_(batch_size), epoch_(epoch),
      next_batch_(start_batch), prefetch_(std::max<int64_t>(1, prefetch)) {
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
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void CodeLoader::run() {
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
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [&] { return stop_ || static_cast<int64_t>(queue_.size()) < prefetch_; });
      if (stop_) return;
      queue_.push_back(std::move(batch));
      cv_.notify_all();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mutex_);
    error_ = std::current_exception();
  }
  std::lock_guard<std::mutex> lock(mutex_);
  done_ = true;
  cv_.notify_all();
}

std::optional<CodeBatch> CodeLoader::next() {
  std::unique_lock<std::mutex> lock(mutex_);
  cv_.wait(lock, [&] { return !queue_.empty() || done_; });
  if (!queue_.empty()) {
    auto batch = std::move(queue_.front());
    queue_.pop_front();
    cv_.notify_all();
    return batch;
  }
  if (error_) std::rethrow_exception(error_);
  return std::nullopt;
}

}  // namespace aim
