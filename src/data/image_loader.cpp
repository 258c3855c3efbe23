#include "aim/data/image_loader.h"

#include <torch/torch.h>

#include <cstdio>
#include <random>
#include <string>

#include "aim/core/error.h"
#include "aim/data/image.h"

namespace aim {

ImageLoader::ImageLoader(const ImageList& list, VqModel vq, torch::Device device,
                         DistributedSampler sampler, int64_t epoch, int64_t start_batch,
                         ImageLoaderOptions options)
    : list_(list), vq_(std::move(vq)), device_(device), sampler_(sampler), options_(options),
      epoch_(epoch), next_batch_(start_batch), queue_(static_cast<size_t>(std::max<int64_t>(1, options.prefetch))) {
  AIM_CHECK(options_.batch_size >= 1, "image loader: batch size must be >= 1");
  order_ = sampler_.indices(epoch_);
  for (auto i : order_) {
    AIM_CHECK(i < static_cast<int64_t>(list_.entries.size()), "image loader: sampler built for more samples than the list has");
  }
  batches_ = static_cast<int64_t>(order_.size()) / options_.batch_size;
  AIM_CHECK(start_batch >= 0 && start_batch <= batches_, "image loader: start batch ", start_batch,
            " outside the epoch's ", batches_, " batches");
  worker_ = std::thread([this] { run(); });
}

ImageLoader::~ImageLoader() {
  queue_.stop();
  if (worker_.joinable()) worker_.join();
}

void ImageLoader::run() {
  std::exception_ptr error;
  try {
    const int64_t b = options_.batch_size, size = options_.image_size;
    for (int64_t k = next_batch_; k < batches_; ++k) {
      std::vector<torch::Tensor> views(static_cast<size_t>(b));
      std::vector<char> ok(static_cast<size_t>(b), 0);
      std::vector<std::string> errors(static_cast<size_t>(b));
      std::atomic<int64_t> next{0};
      auto work = [&] {
        for (int64_t j = next++; j < b; j = next++) {
          const int64_t sample = order_[k * b + j];
          // The crop depends on (seed, epoch, sample) only.
          std::mt19937_64 rng(splitmix64(options_.seed ^ splitmix64(static_cast<uint64_t>(epoch_) << 32 ^
                                                                     static_cast<uint64_t>(sample))));
          try {
            const auto img = decode_image(list_.entries[sample].path);
            Image view = options_.llamagen_crop ? random_crop_arr(img, static_cast<int>(size), rng)
                                                : aim_train_transform(img, static_cast<int>(size), rng, options_.mid_ratio);
            if (options_.hflip && (rng() & 1) != 0) view = hflip(view);
            views[j] = to_tensor(view);
            ok[j] = 1;
          } catch (const std::exception& e) {  // aim::Error, or c10::Error / bad_alloc from a corrupt file
            errors[j] = e.what();
          }
        }
      };
      std::vector<std::thread> pool;
      for (int64_t t = 1; t < std::min(options_.threads, b); ++t) pool.emplace_back(work);
      work();
      for (auto& t : pool) t.join();
      // Unreadable images: the batch's readable ones take their places in turn.
      std::vector<int64_t> readable;
      for (int64_t j = 0; j < b; ++j)
        if (ok[j]) readable.push_back(j);
      if (readable.empty()) {
        std::string files;
        for (int64_t j = 0; j < b && j < 4; ++j) files += "\n  " + errors[j];
        throw Error(str_cat("training images: none of the ", b, " images of batch ", k, " (epoch ", epoch_,
                            ") could be read:", files, b > 4 ? "\n  ..." : ""));
      }
      std::vector<torch::Tensor> kept;
      std::vector<int64_t> labels;
      size_t turn = 0;
      for (int64_t j = 0; j < b; ++j) {
        int64_t from = j;
        if (!ok[j]) {
          from = readable[turn++ % readable.size()];
          skipped_.fetch_add(1);
          std::fprintf(stderr, "[data] %s\n  (epoch %lld, batch %lld): replaced by %s\n", errors[j].c_str(),
                       static_cast<long long>(epoch_), static_cast<long long>(k),
                       list_.entries[order_[k * b + from]].path.c_str());
        }
        kept.push_back(views[from]);
        labels.push_back(list_.entries[order_[k * b + from]].label);
      }
      Decoded d;
      d.batch = k;
      d.labels = torch::tensor(labels, torch::kLong);
      d.images = torch::stack(kept);
      if (!queue_.push(std::move(d))) return;
    }
  } catch (...) {
    error = std::current_exception();
  }
  queue_.finish(error);
}

std::optional<ImageBatch> ImageLoader::next_images() {
  auto next = queue_.pop();
  if (!next) return std::nullopt;
  ImageBatch batch;
  batch.images = std::move(next->images);
  batch.labels = std::move(next->labels);
  batch.epoch = epoch_;
  batch.batch = next->batch;
  return batch;
}

std::optional<CodeBatch> ImageLoader::next() {
  AIM_CHECK(vq_, "image loader: next() needs a tokenizer; use next_images()");
  auto next = queue_.pop();
  if (!next) return std::nullopt;
  Decoded d = std::move(*next);
  CodeBatch batch;
  batch.epoch = epoch_;
  batch.batch = d.batch;
  batch.labels = d.labels;
  torch::NoGradGuard no_grad;
  batch.codes = vq_->encode(d.images.to(device_)).to(torch::kCPU);
  return batch;
}

}  // namespace aim
