#pragma once
// Code extraction: images -> augmented views -> VQ codes -> a code dataset file. Sharded over
// ranks (each writes its own shard file, rank 0 merges them), resumable after interruption
// (finished chunks are logged in the dataset's progress sidecar), also with another number of
// ranks (the chunks an earlier launch's shards, or an unfinished single-process output, hold are
// copied, not encoded again; its shards are removed once the dataset is finished), unreadable
// images skipped, counted and listed.
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "aim/core/liveness.h"
#include "aim/data/image.h"
#include "aim/data/image_folder.h"
#include "aim/model/vq.h"

namespace aim {

struct ExtractOptions {
  std::string out;                 ///< dataset file
  std::string aug = "tencrop";     ///< "none" | "flip" | "tencrop"
  int64_t image_size = 256;
  double crop_range = 1.1;         ///< tencrop: center crop at image_size * crop_range first
  int64_t batch_size = 32;         ///< images per chunk (each with all its views)
  int64_t threads = 4;             ///< decode/preprocess threads
  torch::Device device = torch::kCPU;
  int rank = 0, world_size = 1;
  std::string tokenizer_id;        ///< recorded in the header, checked on resume
  double merge_timeout_s = 86400;  ///< rank 0: how long to wait for the other shards
  /// rank 0: how long another rank's "stopped at max_chunks" marker must stay before rank 0 stops
  /// waiting for it (an earlier run's marker goes as soon as that rank starts again)
  double stopped_grace_s = 10;
  bool began = false;              ///< begin_extraction() was called (else extract_codes calls it)
  int64_t max_chunks = 0;          ///< stop after this many new chunks (0: all); stays resumable
  bool quiet = false;
};

struct ExtractReport {
  int64_t images = 0;              ///< images this rank handled (including resumed ones)
  int64_t skipped = 0;             ///< unreadable, marked -1 and listed
  int64_t resumed = 0;             ///< images found already done in a previous run
  std::vector<std::string> skipped_files;
  double seconds = 0;
  bool finished = true;            ///< false when max_chunks stopped the run early
};

/// Views per image for an augmentation name (throws for an unknown one).
int64_t views_per_image(const std::string& aug);

/// The augmented views of one image, [A, 3, S, S] in [-1, 1]: `none` the ADM center crop,
/// `flip` that crop and its mirror, `tencrop` LlamaGen's (center crop at S * crop_range, then
/// torchvision's TenCrop).
torch::Tensor extraction_views(const Image& image, const std::string& aug, int64_t image_size,
                               double crop_range);

/// First thing on every rank of a launch of several (before listing images or loading the
/// tokenizer): removes this rank's markers of an earlier run that stopped at max_chunks or with
/// an error. Rank 0
/// believes a marker once it has stayed ExtractOptions::stopped_grace_s, so an earlier run's,
/// which its rank removes as it starts, does not stop the merge this run should do (a rank that
/// starts later than that only costs one more run: nothing is lost and nothing waits).
/// Returns the heartbeat of a rank other than 0 (aim/core/liveness.h), beside its shard, which
/// rank 0 watches while it waits to merge: keep it while this rank works (null for rank 0 and a
/// single process).
std::unique_ptr<Heartbeat> begin_extraction(const std::string& out, int rank, int world_size);

/// Extracts this rank's share of `list` (on every rank) and, on rank 0 of several, merges
/// the shards into options.out once all are finished. A rank stopped by max_chunks leaves a
/// marker beside its shard; rank 0 then returns unfinished without merging. A rank stopped by an
/// error leaves one with the message; rank 0 then throws, naming the rank and the error. Shards
/// made with different settings are not merged.
ExtractReport extract_codes(VqModel& vq, const ImageList& list, const ExtractOptions& options);

}  // namespace aim
