#pragma once
// Small durable-file helpers shared by checkpoints and run directories.
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace aim {

/// The descriptor `path` names in this process: "-" is standard output (1); /dev/stdout,
/// /dev/stderr, /dev/stdin, /dev/fd/N and /proc/self/fd/N, or a symbolic link chain through one
/// of them, name N. -1 for anything else. (/dev/stdout of a command redirected to a file leads to
/// a regular file, but renaming over the name would replace the link in /dev, not write there.)
int process_stream_fd(const std::string& path);
/// Before an atomic write replaces `path` by rename (a symbolic link there is replaced, not
/// written through: a run directory forked with links keeps its original intact): throws
/// aim::Error naming it when it exists and is not a regular file, or links to something that is
/// not (a folder, a device such as /dev/full, a FIFO), or names one of this process's streams
/// (process_stream_fd).
void refuse_unreplaceable(const std::string& path);
/// Whether a report (a JSON of figures) given as `path` is written straight to a stream rather
/// than through a temporary file and a rename: one of this process's descriptors
/// (process_stream_fd: "-", /dev/stdout, ...) or an existing FIFO or character device.
bool is_stream_output(const std::string& path);
/// check_output_path() for a report that write_report() writes; a stream output passes where it
/// can be written (a descriptor open for writing, a FIFO or device with write permission).
void check_report_path(const std::string& flag, const std::string& path);
/// A report's text to `path`: to the stream itself where is_stream_output(path) (standard output
/// flushed first), else write_text_atomic(). Throws aim::Error naming the path and errno.
void write_report(const std::string& path, const std::string& text);
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
