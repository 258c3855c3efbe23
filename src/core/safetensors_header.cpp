// The safetensors header parser and writer. Everything here treats the file as hostile: every
// number read from it is checked before it sizes, offsets or multiplies anything, and every
// problem becomes an aim::Error naming the file, the tensor and what was expected and found.
// No LibTorch here: the fuzzer (tests/fuzz/safetensors_header_fuzz.cpp) builds this file alone.
#include "aim/core/safetensors_header.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <unordered_set>
#include <utility>
#include <vector>

#include "aim/core/error.h"

namespace aim {
namespace {

using Json = nlohmann::json;

/// Headers larger than this are refused before any allocation; real ones are a few MB at most.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;
/// Containers may start only at depths 0 (root), 1 (entry or __metadata__), 2 (shape, offsets).
constexpr size_t kMaxJsonDepth = 3;
/// The longest array a valid header holds is a shape; no tensor has more dimensions than this.
constexpr size_t kMaxRank = 64;
constexpr const char* kMetadataKey = "__metadata__";
constexpr const char* kKnownDtypes = "F64 F32 F16 BF16 I64 I32 I16 U16 U8";

struct DtypeName {
  StDType dtype;
  const char* name;
  size_t size;
};
constexpr DtypeName kDtypes[] = {
    {StDType::F64, "F64", 8},  {StDType::F32, "F32", 4}, {StDType::F16, "F16", 2},
    {StDType::BF16, "BF16", 2}, {StDType::I64, "I64", 8}, {StDType::I32, "I32", 4},
    {StDType::I16, "I16", 2},  {StDType::U16, "U16", 2}, {StDType::U8, "U8", 1},
};

bool lookup_dtype(const std::string& name, StDType* out) {
  for (const auto& d : kDtypes) {
    if (name == d.name) {
      *out = d.dtype;
      return true;
    }
  }
  return false;
}

/// A short, printable rendering of a JSON value for error messages (never the whole header).
std::string describe(const Json& j) {
  if (j.is_object() || j.is_array()) {
    return str_cat(j.type_name(), " of ", j.size(), " elements");
  }
  std::string s = j.dump(-1, ' ', false, Json::error_handler_t::replace);
  constexpr size_t kMax = 80;
  if (s.size() > kMax) {
    size_t cut = kMax;
    // Cut on a UTF-8 character boundary so the message stays valid text.
    while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
    s = s.substr(0, cut) + "...";
  }
  return str_cat(s, " (", j.type_name(), ")");
}

/// Reads a non-negative JSON integer; false for floats, negatives and non-numbers.
bool as_u64(const Json& j, uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer()) {
    const int64_t v = j.get<int64_t>();
    if (v < 0) return false;
    *out = static_cast<uint64_t>(v);
    return true;
  }
  return false;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += str_cat(i ? ", " : "", shape[i]);
  return s + "]";
}

/// numel of `shape`, or false when a dimension is negative or the product (with zero
/// dimensions counted as one, so that strides stay representable too) overflows int64.
bool checked_numel(const std::vector<int64_t>& shape, int64_t* numel) {
  int64_t product = 1;
  bool has_zero = false;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (d == 0) {
      has_zero = true;
      continue;
    }
    if (__builtin_mul_overflow(product, d, &product)) return false;
  }
  *numel = has_zero ? 0 : product;
  return true;
}

/// Builds the JSON DOM from nlohmann's SAX events, checking the structure on the way. Neither of
/// nlohmann's own DOM builders fits: the plain one silently keeps the last of duplicate keys,
/// and the one with a filter callback rescans the parent object at every nested object's end
/// (quadratic: minutes for a header of 100k tensors). Deep or long structures, which no valid
/// header has, are refused as they open, before they cost memory.
class HeaderSax {
 public:
  HeaderSax(const std::string& what, Json* root) : what_(what), root_(root) {}

  bool null() { return add(Json(nullptr)); }
  bool boolean(bool v) { return add(Json(v)); }
  bool number_integer(Json::number_integer_t v) { return add(Json(v)); }
  bool number_unsigned(Json::number_unsigned_t v) { return add(Json(v)); }
  bool number_float(Json::number_float_t v, const std::string& /*text*/) { return add(Json(v)); }
  bool string(Json::string_t& v) { return add(Json(std::move(v))); }
  bool binary(Json::binary_t& /*v*/) { return add(Json(nullptr)); }  // JSON text has none

  bool start_object(std::size_t /*size*/) { return open(Json::object()); }
  bool start_array(std::size_t /*size*/) { return open(Json::array()); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }

  bool key(Json::string_t& k) {
    Frame& top = frames_.back();
    if (top.value->contains(k)) {
      throw Error(str_cat(what_, ": safetensors header has the key \"", k, "\" twice",
                          frames_.size() > 1 ? " in " + path(frames_.size() - 1) : "",
                          ": expected unique keys (a duplicate would silently replace the "
                          "first)"));
    }
    top.key = k;
    top.slot = &(*top.value)[k];
    return true;
  }

  bool parse_error(std::size_t /*position*/, const std::string& /*token*/,
                   const Json::exception& e) {
    error_ = e.what();
    return false;
  }

  const std::string& error() const { return error_; }

 private:
  struct Frame {
    Json* value;
    std::string key;        // objects: the key being read
    Json* slot = nullptr;   // objects: where its value goes
  };

  /// Stores a value where the current container expects it; returns where it went.
  Json* place(Json&& v) {
    if (frames_.empty()) {
      *root_ = std::move(v);
      return root_;
    }
    Frame& top = frames_.back();
    if (top.value->is_array()) {
      if (top.value->size() >= kMaxRank) {
        throw Error(str_cat(what_, ": safetensors header has an array longer than ", kMaxRank,
                            " at ", path(frames_.size()), ": expected a shape of at most ",
                            kMaxRank, " dimensions or a [begin, end] pair"));
      }
      top.value->push_back(std::move(v));
      return &top.value->back();
    }
    *top.slot = std::move(v);
    return top.slot;
  }

  bool add(Json&& v) {
    place(std::move(v));
    return true;
  }

  bool open(Json&& container) {
    if (frames_.size() >= kMaxJsonDepth) {
      throw Error(str_cat(what_, ": safetensors header nests too deeply at ",
                          path(frames_.size()), ": expected at most ", kMaxJsonDepth,
                          " levels ({name: {\"shape\": [...]}}), found a deeper ",
                          container.type_name()));
    }
    frames_.push_back(Frame{place(std::move(container)), {}, nullptr});
    return true;
  }

  bool close() {
    frames_.pop_back();
    return true;
  }

  /// Keys of the first `n` frames, e.g. "\"w\" -> \"shape\"".
  std::string path(size_t n) const {
    std::string s;
    for (size_t i = 0; i < n; ++i) {
      if (!frames_[i].value->is_object()) continue;
      s += str_cat(s.empty() ? "" : " -> ", "\"", frames_[i].key, "\"");
    }
    return s.empty() ? "the top level" : s;
  }

  const std::string& what_;
  Json* root_;
  std::vector<Frame> frames_;
  std::string error_;
};

StTensorInfo parse_entry(const std::string& what, const std::string& name, const Json& entry,
                         uint64_t data_size) {
  const std::string where = str_cat(what, ": tensor \"", name, "\"");
  AIM_CHECK(entry.is_object(), where, ": expected an object {\"dtype\", \"shape\", "
            "\"data_offsets\"}, found ", describe(entry));
  for (const auto& item : entry.items()) {
    const std::string& key = item.key();
    AIM_CHECK(key == "dtype" || key == "shape" || key == "data_offsets", where,
              ": unexpected key \"", key, "\": expected only dtype, shape, data_offsets");
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    AIM_CHECK(entry.contains(key), where, ": missing key \"", key,
              "\": expected dtype, shape and data_offsets");
  }

  StTensorInfo info;
  info.name = name;

  const Json& dtype = entry.at("dtype");
  AIM_CHECK(dtype.is_string(), where, ": dtype: expected a string, found ", describe(dtype));
  AIM_CHECK(lookup_dtype(dtype.get<std::string>(), &info.dtype), where,
            ": dtype: expected one of ", kKnownDtypes, ", found ", describe(dtype));

  const Json& shape = entry.at("shape");
  AIM_CHECK(shape.is_array(), where, ": shape: expected an array of non-negative integers, found ",
            describe(shape));
  for (size_t i = 0; i < shape.size(); ++i) {
    uint64_t d = 0;
    AIM_CHECK(as_u64(shape[i], &d) && d <= static_cast<uint64_t>(INT64_MAX), where,
              ": shape[", i, "]: expected a non-negative integer below 2^63, found ",
              describe(shape[i]));
    info.shape.push_back(static_cast<int64_t>(d));
  }
  int64_t numel = 0;
  AIM_CHECK(checked_numel(info.shape, &numel), where, ": shape ", shape_str(info.shape),
            ": expected a product of dimensions that fits int64, found an overflow");
  const uint64_t itemsize = st_dtype_size(info.dtype);
  uint64_t nbytes = 0;
  AIM_CHECK(!__builtin_mul_overflow(static_cast<uint64_t>(numel), itemsize, &nbytes), where,
            ": shape ", shape_str(info.shape), " of ", st_dtype_name(info.dtype),
            ": expected a byte count that fits 64 bits, found an overflow");

  const Json& offsets = entry.at("data_offsets");
  AIM_CHECK(offsets.is_array() && offsets.size() == 2, where,
            ": data_offsets: expected a pair [begin, end], found ", describe(offsets));
  for (size_t i = 0; i < 2; ++i) {
    AIM_CHECK(as_u64(offsets[i], i == 0 ? &info.begin : &info.end), where, ": data_offsets[",
              i, "]: expected a non-negative integer, found ", describe(offsets[i]));
  }
  AIM_CHECK(info.begin <= info.end, where, ": data_offsets: expected begin <= end, found [",
            info.begin, ", ", info.end, "]");
  AIM_CHECK(info.end - info.begin == nbytes, where, ": data_offsets [", info.begin, ", ",
            info.end, "] span ", info.end - info.begin, " bytes, expected ", nbytes, " (shape ",
            shape_str(info.shape), " x ", itemsize, " bytes of ", st_dtype_name(info.dtype), ")");
  AIM_CHECK(info.end <= data_size, where, ": data_offsets [", info.begin, ", ", info.end,
            "]: expected a range inside the data section of ", data_size,
            " bytes, found one past its end (truncated file?)");
  return info;
}

}  // namespace

StDType st_dtype_from_string(const std::string& name) {
  StDType dtype = StDType::F32;
  AIM_CHECK(lookup_dtype(name, &dtype), "unknown safetensors dtype \"", name,
            "\": expected one of ", kKnownDtypes);
  return dtype;
}

const char* st_dtype_name(StDType dtype) {
  for (const auto& d : kDtypes) {
    if (d.dtype == dtype) return d.name;
  }
  throw Error(str_cat("invalid StDType value ", static_cast<int>(dtype)));
}

size_t st_dtype_size(StDType dtype) {
  for (const auto& d : kDtypes) {
    if (d.dtype == dtype) return d.size;
  }
  throw Error(str_cat("invalid StDType value ", static_cast<int>(dtype)));
}

int64_t StTensorInfo::numel() const {
  int64_t n = 0;
  AIM_CHECK(checked_numel(shape, &n), "tensor \"", name, "\": shape ", shape_str(shape),
            ": expected non-negative dimensions whose product fits int64");
  return n;
}

StHeader parse_safetensors_header(const uint8_t* bytes, size_t available, uint64_t file_size,
                                  const std::string& what) {
  AIM_CHECK(file_size != 0, what, ": file is empty: expected a safetensors file (8-byte header "
            "length, JSON header, data)");
  AIM_CHECK(file_size >= 8, what, ": file is ", file_size,
            " bytes: expected at least 8 (the little-endian header length)");
  AIM_CHECK(available >= 8, what, ": only ", available,
            " bytes available: expected at least 8 (the little-endian header length)");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  AIM_CHECK(n <= kMaxHeaderBytes, what, ": header length ", n, " bytes: expected at most ",
            kMaxHeaderBytes, " (not a safetensors file, or a corrupt one)");
  AIM_CHECK(n <= file_size - 8, what, ": header length ", n, " bytes: expected at most ",
            file_size - 8, " (file size ", file_size, " - 8): the file is truncated or corrupt");
  AIM_CHECK(n <= available - 8, what, ": header length ", n, " bytes: expected at most the ",
            available - 8, " bytes available after the length");

  const char* begin = reinterpret_cast<const char*>(bytes + 8);
  Json root;
  HeaderSax sax(what, &root);
  bool ok = false;
  try {
    ok = Json::sax_parse(begin, begin + n, &sax);
  } catch (const Json::exception& e) {
    throw Error(str_cat(what, ": safetensors header (", n, " bytes) is not valid JSON: ",
                        e.what()));
  }
  AIM_CHECK(ok, what, ": safetensors header (", n, " bytes) is not valid JSON: ", sax.error());
  AIM_CHECK(root.is_object(), what, ": safetensors header: expected a JSON object, found ",
            describe(root));

  StHeader header;
  header.data_offset = 8 + n;
  const uint64_t data_size = file_size - 8 - n;
  for (const auto& item : root.items()) {
    const std::string& name = item.key();
    if (name == kMetadataKey) {
      const Json& meta = item.value();
      AIM_CHECK(meta.is_object(), what, ": __metadata__: expected an object of strings, found ",
                describe(meta));
      for (const auto& kv : meta.items()) {
        AIM_CHECK(kv.value().is_string(), what, ": __metadata__ \"", kv.key(),
                  "\": expected a string, found ", describe(kv.value()));
        header.metadata.emplace(kv.key(), kv.value().get<std::string>());
      }
      continue;
    }
    AIM_CHECK(!name.empty(), what, ": expected non-empty tensor names, found \"\"");
    header.tensors.push_back(parse_entry(what, name, item.value(), data_size));
  }

  std::stable_sort(header.tensors.begin(), header.tensors.end(),
                   [](const StTensorInfo& a, const StTensorInfo& b) {
                     return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
                   });
  // Empty tensors own no bytes, so they may sit anywhere; the others must not share a byte.
  const StTensorInfo* prev = nullptr;
  for (const StTensorInfo& t : header.tensors) {
    if (t.begin == t.end) continue;
    if (prev != nullptr) {
      AIM_CHECK(t.begin >= prev->end, what, ": tensor \"", t.name, "\" data_offsets [", t.begin,
                ", ", t.end, "] overlap tensor \"", prev->name, "\" [", prev->begin, ", ",
                prev->end, "]: expected begin >= ", prev->end);
    }
    prev = &t;
  }
  return header;
}

std::string serialize_safetensors_header(const std::vector<StTensorInfo>& tensors,
                                         const std::map<std::string, std::string>& metadata) {
  const char* where = "safetensors header";
  nlohmann::ordered_json root = nlohmann::ordered_json::object();
  if (!metadata.empty()) root[kMetadataKey] = metadata;
  std::unordered_set<std::string> names;
  uint64_t offset = 0;
  for (const StTensorInfo& t : tensors) {
    AIM_CHECK(!t.name.empty() && t.name != kMetadataKey, where, ": tensor name \"", t.name,
              "\": expected a non-empty name other than __metadata__");
    AIM_CHECK(names.insert(t.name).second, where, ": tensor \"", t.name,
              "\" appears twice: expected unique names");
    int64_t numel = 0;
    AIM_CHECK(checked_numel(t.shape, &numel), where, ": tensor \"", t.name, "\": shape ",
              shape_str(t.shape), ": expected non-negative dimensions whose product fits int64");
    uint64_t nbytes = 0;
    AIM_CHECK(!__builtin_mul_overflow(static_cast<uint64_t>(numel), st_dtype_size(t.dtype),
                                      &nbytes),
              where, ": tensor \"", t.name, "\": byte count overflows 64 bits");
    AIM_CHECK(t.begin == offset && t.end >= t.begin && t.end - t.begin == nbytes, where,
              ": tensor \"", t.name, "\": expected data_offsets [", offset, ", ", offset + nbytes,
              "] (contiguous from 0), found [", t.begin, ", ", t.end, "]");
    offset = t.end;
    root[t.name] = {{"dtype", st_dtype_name(t.dtype)},
                    {"shape", t.shape},
                    {"data_offsets", {t.begin, t.end}}};
  }
  std::string json;
  try {
    json = root.dump();
  } catch (const nlohmann::ordered_json::exception& e) {
    throw Error(str_cat(where, ": a tensor name or metadata string is not valid UTF-8: ",
                        e.what()));
  }
  // Padding the JSON to a multiple of 8 puts the data section, and with it every tensor whose
  // offset is a multiple of its item size, at an aligned address in a page-aligned mapping.
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out + json;
}

}  // namespace aim
