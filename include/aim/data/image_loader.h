#pragma once
// Training straight from images, as the official AiM trainer does: each step decodes a batch,
// applies AiM's transform (short side to 1.125x with LANCZOS, random crop; a fresh crop every
// epoch) on worker threads and encodes it with the tokenizer. Batches are the same whatever
// the number of threads: the crop of sample i in epoch e depends only on (seed, e, i).
// An unreadable image is named on stderr and its place in the batch taken by another image of
// the same batch (with its label), so every batch keeps its size on every rank: the ranks'
// losses stay equal-weight means and no rank meets an empty batch. A batch with no readable
// image is an error naming its files.
#include <torch/types.h>

#include <atomic>
#include <optional>
#include <thread>

#include "aim/data/code_loader.h"
#include "aim/data/image_folder.h"
#include "aim/data/prefetch_queue.h"
#include "aim/data/sampler.h"
#include "aim/model/vq.h"

namespace aim {

struct ImageLoaderOptions {
  int64_t batch_size = 32;
  int64_t image_size = 256;
  double mid_ratio = 1.125;   ///< short side resized to round(mid_ratio * image_size) first
  int64_t threads = 4;        ///< decode/transform threads
  int64_t prefetch = 2;       ///< decoded batches held ahead
  uint64_t seed = 0;
  bool hflip = false;         ///< random horizontal flip after the crop (tokenizer training)
  bool llamagen_crop = false; ///< random_crop_arr (LlamaGen's tokenizer training) instead of
                              ///< AiM's resize to mid_ratio x size + random crop
};

/// A batch of transformed images (no tokenizer).
struct ImageBatch {
  torch::Tensor images;  ///< [B, 3, S, S] float32 in [-1, 1]
  torch::Tensor labels;  ///< [B] int64
  int64_t epoch = 0;
  int64_t batch = 0;     ///< index within the epoch
};

class ImageLoader {
 public:
  /// Serves batches start_batch, ... of `epoch` of this rank's share of `list`; `sampler` is
  /// built for list.entries.size() samples. Codes come from `vq` on `device`; with a null `vq`
  /// only next_images() may be called.
  ImageLoader(const ImageList& list, VqModel vq, torch::Device device, DistributedSampler sampler,
              int64_t epoch, int64_t start_batch, ImageLoaderOptions options);
  ~ImageLoader();
  ImageLoader(const ImageLoader&) = delete;
  ImageLoader& operator=(const ImageLoader&) = delete;

  /// The next batch (codes [B, T], labels [B]); unreadable images are replaced (above) and
  /// counted. nullopt after the epoch's last batch.
  std::optional<CodeBatch> next();
  /// The next batch of images themselves, as next() would have encoded them.
  std::optional<ImageBatch> next_images();
  int64_t batches_per_epoch() const { return batches_; }
  int64_t skipped() const { return skipped_.load(); }

 private:
  struct Decoded {
    torch::Tensor images;  // [B, 3, S, S]
    torch::Tensor labels;  // [B]
    int64_t batch = 0;
  };
  void run();
  const ImageList& list_;
  VqModel vq_;
  torch::Device device_;
  DistributedSampler sampler_;
  ImageLoaderOptions options_;
  int64_t epoch_, next_batch_, batches_;
  std::vector<int64_t> order_;
  PrefetchQueue<Decoded> queue_;
  std::atomic<int64_t> skipped_{0};
  std::thread worker_;
};

}  // namespace aim
