#pragma once
// The code dataset: VQ codes of every image under every augmentation, in one memory-mapped file.
//
// Layout (little-endian):
//   [0, 8)            magic "AIMCODE1"
//   [8, 16)           u64 header length H
//   [16, 16 + H)      JSON header (padded with spaces)
//   codes_offset      u16 codes [N, A, T]     (64-byte aligned)
//   labels_offset     i16 labels [N]          (64-byte aligned; -1: image skipped as unreadable)
// While an extraction is unfinished a sidecar `<path>.progress` exists and readers refuse the file;
// its header also says "finished": false until the end, so a copy made before then, without the
// sidecar, is refused too (files written before the key existed count as finished).
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace aim {

struct CodeDatasetInfo {
  int64_t num_samples = 0;  ///< N images
  int64_t num_aug = 1;      ///< A augmentations per image
  int64_t tokens = 256;     ///< T codes per image
  int64_t vocab_size = 16384;
  int64_t image_size = 256;
  std::string aug = "none"; ///< "none" | "flip" | "tencrop"
  double crop_range = 0.0;  ///< tencrop's first centre crop (image_size x this); 0 for other augs;
                            ///< -1 in files written before it was recorded (unknown)
  std::vector<std::string> classes;  ///< class names; labels index them
  std::string tokenizer;    ///< identity of the tokenizer (file name, size, checksum)
  std::string source;       ///< where the images came from
  int64_t codes_offset = 0;
  int64_t labels_offset = 0;
};

/// Read-only view of a finished code dataset; constant memory whatever its size.
class CodeDataset {
 public:
  /// Opens and validates `path` (magic, header, every size against the file); throws aim::Error
  /// naming the file. An extraction's unfinished file is refused unless `allow_unfinished`;
  /// then only the samples its progress sidecar lists as done hold codes, and valid_indices()
  /// also lists the ones not yet written (class 0, zero codes): the caller picks from the sidecar.
  explicit CodeDataset(const std::string& path, bool allow_unfinished = false);
  ~CodeDataset();
  CodeDataset(const CodeDataset&) = delete;
  CodeDataset& operator=(const CodeDataset&) = delete;

  const CodeDatasetInfo& info() const { return info_; }
  const std::string& path() const { return path_; }
  int64_t size() const { return info_.num_samples; }
  /// Samples with a label (images that were readable), ascending: what training iterates over.
  const std::vector<int64_t>& valid_indices() const { return valid_; }
  /// Codes of sample i under augmentation a: pointer to T uint16 values.
  const uint16_t* codes(int64_t i, int64_t a) const;
  int16_t label(int64_t i) const;
  /// Batch gather: codes [B, T] int64 and labels [B] int64 for indices/augs [B].
  void gather(const std::vector<int64_t>& indices, const std::vector<int64_t>& augs,
              torch::Tensor& codes_out, torch::Tensor& labels_out) const;

 private:
  std::string path_;
  CodeDatasetInfo info_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  std::vector<int64_t> valid_;
};

/// Writes a code dataset: creates the full-size file up front, then samples in any order with
/// positional writes (several processes may write disjoint samples of one file). finish()
/// syncs, checks every sample was written and removes the progress sidecar.
class CodeDatasetWriter {
 public:
  /// New file (replacing an unfinished one); throws aim::Error naming the file.
  static std::unique_ptr<CodeDatasetWriter> create(const std::string& path, CodeDatasetInfo info);
  /// Continues an unfinished file; `expected` must describe the same dataset.
  static std::unique_ptr<CodeDatasetWriter> resume(const std::string& path,
                                                   const CodeDatasetInfo& expected);
  ~CodeDatasetWriter();

  const CodeDatasetInfo& info() const { return info_; }
  /// codes [n, A, T] (any integer dtype, values < vocab_size), labels [n] (-1 marks a skipped
  /// image); samples start .. start + n - 1.
  void write(int64_t start, const torch::Tensor& codes, const torch::Tensor& labels);
  /// Syncs data to disk.
  void sync();

 private:
  CodeDatasetWriter() = default;
  std::string path_;
  CodeDatasetInfo info_;
  int fd_ = -1;
};

/// "" when a file with header `found` holds what a run asking for `wanted` would write (images,
/// views, tokens, codebook, image size, augmentation and crop, classes, tokenizer; not the source
/// path), else the first difference as "<field> <found> in the file, <wanted> in this run".
std::string code_dataset_difference(const CodeDatasetInfo& found, const CodeDatasetInfo& wanted);

/// Whether `path` is an unfinished dataset (its progress sidecar exists).
bool code_dataset_unfinished(const std::string& path);
std::string code_dataset_progress_path(const std::string& path);
/// Where two class lists give a label different names: "" when they agree, or when either is
/// empty or names its classes by number ("0", "1", ...: extract-codes --list without --classes);
/// one list may stop where the other goes on. Else "label N is class 'x' ... it is 'y'", with
/// `theirs_what` naming where `theirs` comes from.
std::string class_order_difference(const std::vector<std::string>& ours, const std::vector<std::string>& theirs,
                                   const std::string& theirs_what);

/// After every writer has synced: rewrites the header's "finished" in place (synced), then
/// removes the progress sidecar. Throws aim::Error naming the file.
void code_dataset_mark_finished(const std::string& path);

}  // namespace aim
