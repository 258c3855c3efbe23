// libFuzzer target for the safetensors header parser: any input must either parse or throw
// aim::Error, never crash, read out of bounds or allocate without bound. Inputs that parse are
// re-serialised (offsets laid out contiguously) and parsed again; the result must match.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "aim/core/error.h"
#include "aim/core/safetensors_header.h"

namespace {

void check_round_trip(const aim::StHeader& header) {
  std::vector<aim::StTensorInfo> tensors = header.tensors;
  uint64_t offset = 0;
  for (aim::StTensorInfo& t : tensors) {
    const uint64_t size = t.end - t.begin;
    t.begin = offset;
    t.end = offset + size;
    offset = t.end;
  }
  const std::string bytes = aim::serialize_safetensors_header(tensors, header.metadata);
  if (bytes.size() % 8 != 0) std::abort();
  const aim::StHeader again = aim::parse_safetensors_header(
      reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), bytes.size() + offset,
      "round trip");
  if (again.metadata != header.metadata || again.tensors.size() != tensors.size() ||
      again.data_offset != bytes.size()) {
    std::abort();
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    const aim::StTensorInfo& a = tensors[i];
    const aim::StTensorInfo& b = again.tensors[i];
    // Empty tensors sharing an offset may come back in another order; compare the rest.
    if (a.begin == a.end) continue;
    if (a.name != b.name || a.dtype != b.dtype || a.shape != b.shape || a.begin != b.begin ||
        a.end != b.end) {
      std::abort();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const aim::StHeader header = aim::parse_safetensors_header(data, size, size, "fuzz");
    check_round_trip(header);
  } catch (const aim::Error&) {
  }
  return 0;
}
