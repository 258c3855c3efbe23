#pragma once
// safetensors files: a memory-mapped reader and an atomic writer.
//
// Format: 8-byte little-endian header length N, N bytes of JSON
// {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// then the raw little-endian row-major data. Every offset and size is checked against the file
// before any byte is read (see safetensors_header.h).
#include <torch/types.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "aim/core/safetensors_header.h"

namespace aim {

/// Maps a safetensors dtype to the torch scalar type (and back).
torch::ScalarType to_torch_dtype(StDType dtype);
StDType from_torch_dtype(torch::ScalarType dtype);

/// A safetensors file opened read-only through mmap. Tensors returned by get() share the
/// mapping (zero copy) and keep it alive; they must not be written to.
class SafetensorsFile {
 public:
  /// Opens and validates `path`; throws aim::Error naming the file and the problem.
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  /// Entries in file order of their data offsets.
  const std::vector<StTensorInfo>& entries() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  bool contains(const std::string& name) const;
  /// Throws aim::Error naming the file and the key when absent.
  const StTensorInfo& info(const std::string& name) const;
  /// A read-only CPU tensor viewing the mapped bytes. Throws when absent.
  torch::Tensor get(const std::string& name) const;
  /// All tensors, by name.
  std::map<std::string, torch::Tensor> load_all() const;

 private:
  struct Mapping;
  std::string path_;
  std::shared_ptr<Mapping> mapping_;
  StHeader header_;
  std::map<std::string, size_t> index_;
};

/// Writes tensors (any device, made contiguous and moved to CPU) to `path`: first to
/// `path + ".tmp"`, fsync, then rename, so a crash or a full disk never leaves a half-written
/// file under `path`. Names must be unique. Throws aim::Error naming the file on failure.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// Convenience: load every tensor of a file into memory (copies, writable).
std::map<std::string, torch::Tensor> load_safetensors(const std::string& path);

}  // namespace aim
