#pragma once
// Small durable-file helpers shared by checkpoints and run directories.
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace aim {

/// Before an atomic write replaces `path` by rename (a symbolic link there is replaced, not
/// written through: a run directory forked with links keeps its original intact): throws
/// aim::Error naming it when it exists and is not a regular file, or links to something that is
/// not (a folder, a device such as /dev/full or /dev/stdout, a FIFO).
void refuse_unreplaceable(const std::string& path);
/// Before the work whose result goes to `path` (given to `flag`; empty: nothing to check): throws
/// aim::Error naming the flag when it could not be written there: a folder that cannot be made
/// or written, or a target refuse_unreplaceable() refuses.
void check_output_path(const std::string& flag, const std::string& path);
/// Writes `text` to `path` through a temporary file beside it, fsync and rename: readers see
/// the old content or the new one, never a mix. Throws aim::Error naming the file and errno.
void write_text_atomic(const std::string& path, const std::string& text);
/// The whole file as a string. Throws aim::Error naming the file.
std::string read_text(const std::string& path);
/// FNV-1a 64 over `n` bytes, continuing from `h` (start from kFnv1aOffset).
constexpr uint64_t kFnv1aOffset = 0xcbf29ce484222325ull;
uint64_t fnv1a64(uint64_t h, const void* data, size_t n);
/// `v` as 16 hex digits.
std::string hex16(uint64_t v);
/// FNV-1a 64 digest of a file's bytes as 16 hex digits (identifies weights: the Inception
/// network of the feature caches, the tokenizer that made a code dataset). Throws aim::Error
/// naming the file.
std::string file_digest(const std::string& path);
/// "<file name> (<bytes> bytes, fnv64 <digest>)": a file by its content, as code datasets and
/// sample settings record the tokenizer and weights they came from.
std::string file_identity(const std::string& path);
/// Whether `path` is a file torch.save wrote (a zip archive, or a bare pickle of protocol 2-5):
/// what LlamaGen, AiM and pytorch-fid ship, and what aim reads only after
/// tools/convert_checkpoint.py. False for anything else, a missing file included.
bool is_torch_pickle(const std::string& path);
/// Throws aim::Error saying how to convert `path` when is_torch_pickle(path).
void refuse_torch_pickle(const std::string& path);
/// Throws aim::Error when `out` (given to `out_flag`) names an existing file or folder that is
/// one of `inputs` ({flag, path}, empty paths skipped): writing it would destroy that input.
void refuse_output_over_input(const std::string& out_flag, const std::string& out,
                              const std::vector<std::pair<std::string, std::string>>& inputs);
/// fsync of a directory, so renames inside it survive a crash (best effort).
void sync_directory(const std::string& dir);

}  // namespace aim
