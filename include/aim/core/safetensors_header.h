#pragma once
// The safetensors header parser, free of LibTorch so the fuzzer builds it alone.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace aim {

enum class StDType { F64, F32, F16, BF16, I64, I32, I16, U16, U8 };

/// "F32" -> StDType::F32; throws aim::Error for an unknown name.
StDType st_dtype_from_string(const std::string& name);
const char* st_dtype_name(StDType dtype);
size_t st_dtype_size(StDType dtype);

/// One tensor of the header. `begin`/`end` are byte offsets into the data section.
struct StTensorInfo {
  std::string name;
  StDType dtype = StDType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
  int64_t numel() const;
};

struct StHeader {
  std::vector<StTensorInfo> tensors;          ///< sorted by `begin`
  std::map<std::string, std::string> metadata;
  uint64_t data_offset = 0;                   ///< 8 + header length: where the data section starts
};

/// Parses and validates the first bytes of a safetensors file of total size `file_size`.
/// `bytes` holds `available` bytes from the start of the file (at least the whole header).
/// Checks: header length within the file and below a sane cap, valid UTF-8 JSON object, known
/// dtypes, non-negative shapes without overflow, end - begin == numel * itemsize, every range
/// inside the data section, no overlaps, no duplicate names. Throws aim::Error mentioning
/// `what` (usually the path) on any violation; never reads outside [bytes, bytes + available).
StHeader parse_safetensors_header(const uint8_t* bytes, size_t available, uint64_t file_size,
                                  const std::string& what);

/// Serialises a header (offsets taken from `tensors`, which must be contiguous from 0) to the
/// 8-byte length + JSON padded with spaces to a multiple of 8.
std::string serialize_safetensors_header(const std::vector<StTensorInfo>& tensors,
                                         const std::map<std::string, std::string>& metadata);

}  // namespace aim
