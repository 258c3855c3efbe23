#pragma once
// Small durable-file helpers shared by checkpoints and run directories.
#include <string>

namespace aim {

/// Writes `text` to `path` through a temporary file beside it, fsync and rename: readers see
/// the old content or the new one, never a mix. Throws aim::Error naming the file and errno.
void write_text_atomic(const std::string& path, const std::string& text);
/// The whole file as a string. Throws aim::Error naming the file.
std::string read_text(const std::string& path);
/// fsync of a directory, so renames inside it survive a crash (best effort).
void sync_directory(const std::string& dir);

}  // namespace aim
