#pragma once
// Batches of one epoch of a code dataset for one rank, assembled by a background thread a few
// batches ahead. Batch k of epoch e is the same whatever happened before, so training resumes
// exactly from (epoch, batch).
#include <torch/types.h>

#include <memory>
#include <optional>
#include <thread>

#include "aim/data/code_dataset.h"
#include "aim/data/prefetch_queue.h"
#include "aim/data/sampler.h"

namespace aim {

struct CodeBatch {
  torch::Tensor codes;   ///< [B, T] int64
  torch::Tensor labels;  ///< [B] int64
  int64_t epoch = 0;
  int64_t batch = 0;     ///< index within the epoch
};

class CodeLoader {
 public:
  /// Serves batches start_batch, start_batch + 1, ... of `epoch` (incomplete last batch dropped).
  /// `sampler` must be built for dataset->valid_indices().size() samples.
  CodeLoader(std::shared_ptr<const CodeDataset> dataset, DistributedSampler sampler,
             int64_t batch_size, int64_t epoch, int64_t start_batch = 0, int64_t prefetch = 4);
  ~CodeLoader();
  CodeLoader(const CodeLoader&) = delete;
  CodeLoader& operator=(const CodeLoader&) = delete;

  /// The next batch, or nullopt after the epoch's last one. Rethrows a worker error.
  std::optional<CodeBatch> next();
  int64_t batches_per_epoch() const { return batches_; }

 private:
  void run();
  std::shared_ptr<const CodeDataset> dataset_;
  DistributedSampler sampler_;
  int64_t batch_size_, epoch_, next_batch_, batches_, prefetch_;
  std::vector<int64_t> order_;
  PrefetchQueue<CodeBatch> queue_;
  std::thread worker_;
};

}  // namespace aim
