// NumPy .npy/.npz: a streaming ZIP writer (STORED members, ZIP64, CRC patched into the local
// header after the data) and a bounds-checked streaming reader driven by the central directory
// (stored members by seeking, deflated ones through zlib).
#include "aim/sample/npz.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>

#include <zlib.h>

#include "aim/core/error.h"
#include "aim/core/fileio.h"

// .npy data and ZIP fields are little-endian; both are copied to and from memory as is.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "aim assumes a little-endian host");

namespace aim {
namespace {

constexpr uint32_t kLocalSig = 0x04034b50;
constexpr uint32_t kCentralSig = 0x02014b50;
constexpr uint32_t kEndSig = 0x06054b50;
constexpr uint32_t kEnd64Sig = 0x06064b50;
constexpr uint32_t kEnd64LocatorSig = 0x07064b50;
constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr uint32_t kMax32 = 0xFFFFFFFFu;
constexpr uint16_t kMax16 = 0xFFFF;
constexpr uint16_t kVersionPlain = 20;
constexpr uint16_t kVersionZip64 = 45;
// 1980-01-01 00:00 in DOS format: a fixed stamp keeps archives byte-identical across runs.
constexpr uint16_t kDosTime = 0;
constexpr uint16_t kDosDate = (0 << 9) | (1 << 5) | 1;
constexpr size_t kLocalFixed = 30;
constexpr size_t kCentralFixed = 46;
constexpr size_t kEndFixed = 22;
constexpr size_t kEnd64Fixed = 56;
constexpr size_t kEnd64LocatorFixed = 20;
constexpr char kNpyMagic[] = "\x93NUMPY";
constexpr size_t kNpyAlign = 64;

std::string errno_text(int err) { return str_cat(std::strerror(err), " (errno ", err, ")"); }

// ------------------------------------------------------------------------------- CRC-32

/// Slicing-by-8 tables for the reflected polynomial 0xEDB88320 (ZIP's CRC-32): ~8x the
/// byte-at-a-time speed, which matters when 9.8 GB of samples pass through it.
struct CrcTables {
  uint32_t t[8][256];
  CrcTables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
  }
};
const CrcTables& crc_tables() {
  static const CrcTables tables;
  return tables;
}

// ------------------------------------------------------------------------- little-endian

void put16(std::string& out, uint16_t v) { out.append(reinterpret_cast<const char*>(&v), 2); }
void put32(std::string& out, uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); }
void put64(std::string& out, uint64_t v) { out.append(reinterpret_cast<const char*>(&v), 8); }
uint16_t get16(const unsigned char* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
uint32_t get32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
uint64_t get64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// ----------------------------------------------------------------------------- dtypes

struct DtypeInfo {
  torch::ScalarType torch_dtype;
  char kind;  // NumPy kind: b, u, i, f
  int size;
};
constexpr DtypeInfo kDtypes[] = {
    {torch::kBool, 'b', 1},    {torch::kByte, 'u', 1},  {torch::kChar, 'i', 1},
    {torch::kUInt16, 'u', 2},  {torch::kShort, 'i', 2}, {torch::kInt, 'i', 4},
    {torch::kLong, 'i', 8},    {torch::kHalf, 'f', 2},  {torch::kFloat, 'f', 4},
    {torch::kDouble, 'f', 8},
};
constexpr const char* kSupportedDescrs = "b1, u1, i1, u2, i2, i4, i8, f2, f4, f8";

/// Bytes of an array of `shape` with `itemsize`; throws on negative dims or overflow.
uint64_t checked_nbytes(const std::vector<int64_t>& shape, int itemsize, const std::string& where) {
  uint64_t n = static_cast<uint64_t>(itemsize);
  for (int64_t d : shape) {
    AIM_CHECK(d >= 0, where, ": shape dimensions must be >= 0, found ", d);
    AIM_CHECK(!__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n), where,
              ": array size overflows 64 bits");
  }
  AIM_CHECK(n <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), where,
            ": array size overflows 63 bits");
  return n;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += str_cat(i ? ", " : "", shape[i]);
  if (shape.size() == 1) s += ",";
  return s + ")";
}

/// The .npy v1.0 header (v2.0 when it exceeds 64 KiB) NumPy writes for a C-order array: magic,
/// version, length, then the dict padded with spaces and '\n' so the data starts 64-aligned.
std::string npy_header(torch::ScalarType dtype, const std::vector<int64_t>& shape) {
  const std::string dict = str_cat("{'descr': '", npy_descr(dtype),
                                   "', 'fortran_order': False, 'shape': ", shape_text(shape),
                                   ", }");
  for (int major : {1, 2}) {
    const size_t prefix = 6 + 2 + (major == 1 ? 2 : 4);
    const size_t unpadded = prefix + dict.size() + 1;  // +1 for the '\n'
    const size_t pad = kNpyAlign - unpadded % kNpyAlign;
    const size_t header_len = dict.size() + pad + 1;
    if (major == 1 && header_len > kMax16) continue;
    std::string out(kNpyMagic, 6);
    out.push_back(static_cast<char>(major));
    out.push_back(0);
    if (major == 1) {
      put16(out, static_cast<uint16_t>(header_len));
    } else {
      put32(out, static_cast<uint32_t>(header_len));
    }
    out += dict;
    out.append(pad, ' ');
    out.push_back('\n');
    return out;
  }
  throw Error("npy header: shape too long for .npy v2.0");
}

// ---------------------------------------------------------------------------- reading

/// A file opened for bounds-checked positional reads.
class InFile {
 public:
  explicit InFile(const std::string& path) : path_(path) {
    file_ = std::fopen(path.c_str(), "rb");
    AIM_CHECK(file_ != nullptr, path, ": cannot open for reading: ", errno_text(errno));
    if (fseeko(file_, 0, SEEK_END) != 0 || (size_ = ftello(file_)) < 0) {
      const int err = errno;
      std::fclose(file_);
      throw Error(str_cat(path, ": cannot determine the file size: ", errno_text(err)));
    }
  }
  ~InFile() { std::fclose(file_); }
  InFile(const InFile&) = delete;
  InFile& operator=(const InFile&) = delete;

  uint64_t size() const { return static_cast<uint64_t>(size_); }
  const std::string& path() const { return path_; }

  /// Reads exactly `n` bytes at `offset`; `what` names the structure for the error message.
  void read(uint64_t offset, void* dst, uint64_t n, const std::string& what) {
    AIM_CHECK(offset <= size() && n <= size() - offset, path_, ": truncated or malformed (",
              what, "): expected ", n, " bytes at offset ", offset, ", file has ", size(),
              " bytes");
    if (n == 0) return;
    AIM_CHECK(fseeko(file_, static_cast<off_t>(offset), SEEK_SET) == 0, path_, ": seek to ",
              offset, " failed: ", errno_text(errno));
    auto* out = static_cast<char*>(dst);
    while (n > 0) {
      const size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, 64ull << 20));
      const size_t got = std::fread(out, 1, chunk, file_);
      AIM_CHECK(got == chunk, path_, ": read failed (", what, ") at offset ", offset, ": ",
                std::ferror(file_) ? errno_text(errno) : std::string("unexpected end of file"));
      out += got;
      n -= got;
      offset += got;
    }
  }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
  off_t size_ = 0;
};

/// Minimal parser of the Python dict literal in a .npy header.
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& where) : s_(text), where_(where) {}

  void parse(std::string* descr, bool* fortran, std::vector<int64_t>* shape) {
    bool has_descr = false, has_fortran = false, has_shape = false;
    expect('{');
    while (true) {
      skip_ws();
      if (peek() == '}') break;
      const std::string key = parse_string();
      expect(':');
      skip_ws();
      if (key == "descr") {
        AIM_CHECK(peek() == '\'' || peek() == '"', where_,
                  ": npy header 'descr' must be a simple type string such as '<f4', found: ", s_);
        *descr = parse_string();
        has_descr = true;
      } else if (key == "fortran_order") {
        *fortran = parse_bool();
        has_fortran = true;
      } else if (key == "shape") {
        *shape = parse_shape();
        has_shape = true;
      } else {
        throw Error(str_cat(where_, ": npy header has unexpected key '", key, "'; expected only ",
                            "'descr', 'fortran_order', 'shape'"));
      }
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      skip_ws();
      AIM_CHECK(peek() == '}', where_, ": npy header: expected ',' or '}' at position ", pos_,
                ", found: ", s_);
      break;
    }
    expect('}');
    AIM_CHECK(has_descr && has_fortran && has_shape, where_,
              ": npy header must hold 'descr', 'fortran_order' and 'shape', found: ", s_);
  }

 private:
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n')) ++pos_;
  }
  void expect(char c) {
    skip_ws();
    AIM_CHECK(peek() == c, where_, ": npy header: expected '", c, "' at position ", pos_,
              ", found: ", s_);
    ++pos_;
  }
  std::string parse_string() {
    skip_ws();
    const char q = peek();
    AIM_CHECK(q == '\'' || q == '"', where_, ": npy header: expected a quoted key at position ",
              pos_, ", found: ", s_);
    const size_t end = s_.find(q, pos_ + 1);
    AIM_CHECK(end != std::string::npos, where_, ": npy header: unterminated string: ", s_);
    std::string out = s_.substr(pos_ + 1, end - pos_ - 1);
    pos_ = end + 1;
    return out;
  }
  bool parse_bool() {
    if (s_.compare(pos_, 4, "True") == 0) {
      pos_ += 4;
      return true;
    }
    if (s_.compare(pos_, 5, "False") == 0) {
      pos_ += 5;
      return false;
    }
    throw Error(str_cat(where_, ": npy header 'fortran_order' must be True or False, found: ", s_));
  }
  std::vector<int64_t> parse_shape() {
    std::vector<int64_t> shape;
    expect('(');
    while (true) {
      skip_ws();
      if (peek() == ')') break;
      AIM_CHECK(peek() >= '0' && peek() <= '9', where_,
                ": npy header 'shape' must be a tuple of non-negative ints, found: ", s_);
      int64_t v = 0;
      while (peek() >= '0' && peek() <= '9') {
        AIM_CHECK(!__builtin_mul_overflow(v, int64_t{10}, &v) &&
                      !__builtin_add_overflow(v, int64_t{peek() - '0'}, &v),
                  where_, ": npy header 'shape' dimension overflows int64: ", s_);
        ++pos_;
      }
      while (peek() == 'L') ++pos_;  // Python 2 longs
      shape.push_back(v);
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      AIM_CHECK(peek() == ')', where_, ": npy header 'shape': expected ',' or ')', found: ", s_);
    }
    expect(')');
    return shape;
  }

  const std::string& s_;
  std::string where_;
  size_t pos_ = 0;
};

torch::ScalarType dtype_from_descr(const std::string& descr, const std::string& where) {
  AIM_CHECK(descr.size() >= 3, where, ": npy dtype: expected one of ", kSupportedDescrs,
            " with byte order '<', '|' or '=', found '", descr, "'");
  const char order = descr[0];
  const char kind = descr[1];
  const std::string digits = descr.substr(2);
  AIM_CHECK(digits == "1" || digits == "2" || digits == "4" || digits == "8", where,
            ": npy dtype: expected one of ", kSupportedDescrs, ", found '", descr, "'");
  const int size = digits[0] - '0';
  AIM_CHECK(order == '<' || order == '=' || (order == '|' && size == 1) ||
                (order == '>' && size == 1),
            where, ": npy dtype '", descr,
            "' is big-endian or has an unknown byte order; expected '<' (little-endian)");
  for (const auto& d : kDtypes)
    if (d.kind == kind && d.size == size) return d.torch_dtype;
  throw Error(str_cat(where, ": npy dtype '", descr, "' is not supported; expected one of ",
                      kSupportedDescrs));
}

/// What a .npy header says: the array's dtype and shape, where its data starts, and the CRC-32
/// of the bytes before it.
struct NpyLayout {
  torch::ScalarType dtype = torch::kByte;
  std::vector<int64_t> shape;
  uint64_t data_offset = 0;  // preamble + header bytes
  uint64_t nbytes = 0;       // data bytes
  uint32_t header_crc = 0;
};

/// Parses the header of a .npy of `len` bytes; `next(dst, n, what)` yields its next `n` bytes.
/// Checks that the data fills the rest exactly.
template <typename Next>
NpyLayout parse_npy(Next&& next, uint64_t len, const std::string& where) {
  unsigned char prefix[12];
  AIM_CHECK(len >= 10, where, ": not a .npy: ", len, " bytes, fewer than the 10-byte preamble");
  next(prefix, 10, "npy preamble");
  AIM_CHECK(std::memcmp(prefix, kNpyMagic, 6) == 0, where,
            ": not a .npy: expected the magic \\x93NUMPY at the start");
  const int major = prefix[6];
  AIM_CHECK(major >= 1 && major <= 3, where, ": npy version ", major, ".", int(prefix[7]),
            " is not supported; expected 1.0, 2.0 or 3.0");
  uint64_t preamble = 10;
  uint64_t header_len = get16(prefix + 8);
  if (major >= 2) {
    AIM_CHECK(len >= 12, where, ": truncated npy v", major, " preamble");
    next(prefix + 10, 2, "npy preamble");
    header_len = get32(prefix + 8);
    preamble = 12;
  }
  AIM_CHECK(header_len <= len - preamble, where, ": npy header length ", header_len,
            " exceeds the ", len - preamble, " bytes that follow the preamble");
  std::string header(static_cast<size_t>(header_len), '\0');
  next(header.data(), header_len, "npy header");

  NpyLayout out;
  std::string descr;
  bool fortran = false;
  HeaderParser(header, where).parse(&descr, &fortran, &out.shape);
  AIM_CHECK(!fortran, where, ": npy array is in Fortran order; only C order is supported ",
            "(save np.ascontiguousarray(x))");
  out.dtype = dtype_from_descr(descr, where);
  out.nbytes = checked_nbytes(out.shape, static_cast<int>(c10::elementSize(out.dtype)), where);
  out.data_offset = preamble + header_len;
  AIM_CHECK(out.nbytes == len - out.data_offset, where, ": npy data of dtype ", descr,
            " and shape ", shape_text(out.shape), " needs ", out.nbytes, " bytes, found ",
            len - out.data_offset);
  out.header_crc = crc32_update(crc32_update(0, prefix, preamble), header.data(), header.size());
  return out;
}

struct ZipEntry {
  std::string name;
  uint16_t flags = 0;
  uint16_t method = 0;
  uint32_t crc = 0;
  uint64_t compressed = 0;
  uint64_t uncompressed = 0;
  uint64_t local_offset = 0;
};

/// The central directory of the ZIP archive `in` (ZIP64 aware); `*cd_offset` receives where it
/// starts, which bounds every member's data.
std::vector<ZipEntry> read_zip_directory(InFile& in, uint64_t* cd_offset_out) {
  const std::string& path = in.path();
  const uint64_t size = in.size();
  AIM_CHECK(size >= kEndFixed, path, ": not a ZIP archive: ", size,
            " bytes, fewer than the 22-byte end record");

  // The end record sits in the last 22 + 65535 (max comment) bytes; search backwards.
  const uint64_t tail_len = std::min<uint64_t>(size, kEndFixed + kMax16);
  std::vector<unsigned char> tail(static_cast<size_t>(tail_len));
  in.read(size - tail_len, tail.data(), tail_len, "end of central directory");
  int64_t found = -1;
  for (int64_t i = static_cast<int64_t>(tail_len - kEndFixed); i >= 0; --i) {
    if (get32(&tail[i]) == kEndSig &&
        i + kEndFixed + get16(&tail[i + 20]) <= tail_len) {
      found = i;
      break;
    }
  }
  AIM_CHECK(found >= 0, path, ": not a ZIP archive: no end of central directory record ",
            "(expected an .npz written by np.savez, np.savez_compressed or aim; a truncated "
            "file ends like this too)");
  const uint64_t end_offset = size - tail_len + static_cast<uint64_t>(found);
  const unsigned char* e = &tail[static_cast<size_t>(found)];
  AIM_CHECK(get16(e + 4) == 0 && get16(e + 6) == 0, path,
            ": multi-disk ZIP archives are not supported");
  uint64_t count = get16(e + 10);
  uint64_t cd_size = get32(e + 12);
  uint64_t cd_offset = get32(e + 16);
  uint64_t cd_limit = end_offset;

  if (end_offset >= kEnd64LocatorFixed) {
    unsigned char loc[kEnd64LocatorFixed];
    in.read(end_offset - kEnd64LocatorFixed, loc, kEnd64LocatorFixed, "ZIP64 locator");
    if (get32(loc) == kEnd64LocatorSig) {
      const uint64_t end64_offset = get64(loc + 8);
      unsigned char e64[kEnd64Fixed];
      AIM_CHECK(end64_offset <= end_offset - kEnd64LocatorFixed, path,
                ": ZIP64 end record offset ", end64_offset, " is past the locator");
      in.read(end64_offset, e64, kEnd64Fixed, "ZIP64 end of central directory");
      AIM_CHECK(get32(e64) == kEnd64Sig, path, ": ZIP64 end record at offset ", end64_offset,
                ": expected signature 0x06064b50, found 0x", std::hex, get32(e64));
      count = get64(e64 + 32);
      cd_size = get64(e64 + 40);
      cd_offset = get64(e64 + 48);
      cd_limit = end64_offset;
    }
  }
  AIM_CHECK(cd_offset <= cd_limit && cd_size <= cd_limit - cd_offset, path,
            ": central directory (offset ", cd_offset, ", ", cd_size,
            " bytes) lies outside the archive (", cd_limit, " bytes before the end record)");
  AIM_CHECK(count <= cd_size / kCentralFixed, path, ": central directory claims ", count,
            " entries in ", cd_size, " bytes");

  std::vector<unsigned char> cd(static_cast<size_t>(cd_size));
  in.read(cd_offset, cd.data(), cd_size, "central directory");
  std::vector<ZipEntry> entries;
  size_t pos = 0;
  for (uint64_t i = 0; i < count; ++i) {
    AIM_CHECK(pos + kCentralFixed <= cd.size() && get32(&cd[pos]) == kCentralSig, path,
              ": central directory entry ", i, " at offset ", cd_offset + pos,
              " is truncated or lacks signature 0x02014b50");
    const unsigned char* c = &cd[pos];
    ZipEntry z;
    z.flags = get16(c + 8);
    z.method = get16(c + 10);
    z.crc = get32(c + 16);
    z.compressed = get32(c + 20);
    z.uncompressed = get32(c + 24);
    const size_t name_len = get16(c + 28), extra_len = get16(c + 30), comment_len = get16(c + 32);
    z.local_offset = get32(c + 42);
    AIM_CHECK(pos + kCentralFixed + name_len + extra_len + comment_len <= cd.size(), path,
              ": central directory entry ", i, " runs past the directory");
    z.name.assign(reinterpret_cast<const char*>(c + kCentralFixed), name_len);
    // ZIP64 extra: 64-bit values for the fields whose 32-bit slot is 0xFFFFFFFF, in order.
    const unsigned char* x = c + kCentralFixed + name_len;
    size_t xp = 0;
    while (xp + 4 <= extra_len) {
      const uint16_t id = get16(x + xp), len = get16(x + xp + 2);
      AIM_CHECK(xp + 4 + len <= extra_len, path, ": member '", z.name,
                "': extra field runs past its entry");
      if (id == kZip64ExtraId) {
        size_t f = xp + 4;
        auto take = [&](uint64_t* v) {
          if (*v != kMax32) return;
          AIM_CHECK(f + 8 <= xp + 4 + len, path, ": member '", z.name,
                    "': ZIP64 extra field too short");
          *v = get64(x + f);
          f += 8;
        };
        take(&z.uncompressed);
        take(&z.compressed);
        take(&z.local_offset);
      }
      xp += 4 + len;
    }
    pos += kCentralFixed + name_len + extra_len + comment_len;
    entries.push_back(std::move(z));
  }
  *cd_offset_out = cd_offset;
  return entries;
}

/// Sequential decoder of one deflated ZIP member (raw deflate, as np.savez_compressed writes):
/// reads the compressed bytes in chunks, keeps the CRC-32 of everything decoded, and at the
/// end checks that the stream ends there and the CRC matches. Going backwards means
/// restart(). Not movable: zlib's state points back at the z_stream.
class Inflater {
 public:
  Inflater(InFile& in, uint64_t data_start, uint64_t csize, uint64_t usize, uint32_t crc,
           std::string where)
      : in_(in), data_start_(data_start), csize_(csize), usize_(usize), crc_expected_(crc),
        where_(std::move(where)) {
    std::memset(&zs_, 0, sizeof(zs_));
    const int rc = inflateInit2(&zs_, -MAX_WBITS);
    AIM_CHECK(rc == Z_OK, where_, ": zlib inflateInit2 failed (", rc, ")");
  }
  ~Inflater() { inflateEnd(&zs_); }
  Inflater(const Inflater&) = delete;
  Inflater& operator=(const Inflater&) = delete;

  /// Bytes of the .npy decoded so far.
  uint64_t position() const { return upos_; }

  /// Back to the first byte of the member.
  void restart() {
    AIM_CHECK(inflateReset(&zs_) == Z_OK, where_, ": zlib inflateReset failed");
    zs_.next_in = nullptr;
    zs_.avail_in = 0;
    cpos_ = upos_ = 0;
    crc_ = 0;
    ended_ = false;
  }

  /// Decodes the next `n` bytes into `dst`, or discards them when `dst` is null.
  void next(void* dst, uint64_t n, const char* what) {
    AIM_CHECK(n <= usize_ - upos_, where_, ": ", what, ": reading ", n, " bytes at ", upos_,
              " passes the member's ", usize_, " uncompressed bytes");
    std::vector<unsigned char> scratch;
    if (!dst) scratch.resize(static_cast<size_t>(std::min<uint64_t>(n, kChunk)));
    auto* out = static_cast<unsigned char*>(dst);
    while (n > 0) {
      const uInt want = static_cast<uInt>(std::min<uint64_t>(n, dst ? (1u << 30) : kChunk));
      unsigned char* to = dst ? out : scratch.data();
      inflate_into(to, want, what);
      crc_ = crc32_update(crc_, to, want);
      upos_ += want;
      n -= want;
      if (dst) out += want;
    }
    if (upos_ == usize_) finish();
  }

 private:
  static constexpr uint64_t kChunk = 256 << 10;

  /// Fills exactly `want` bytes at `to`.
  void inflate_into(unsigned char* to, uInt want, const char* what) {
    zs_.next_out = to;
    zs_.avail_out = want;
    while (zs_.avail_out > 0) {
      AIM_CHECK(!ended_, where_, ": deflate stream ends after ", upos_ + (want - zs_.avail_out),
                " bytes, but the archive lists ", usize_, " uncompressed bytes (corrupt)");
      refill();
      const int rc = ::inflate(&zs_, Z_NO_FLUSH);
      check_rc(rc, what);
      if (rc == Z_STREAM_END) ended_ = true;
    }
  }

  void refill() {
    if (zs_.avail_in > 0 || cpos_ == csize_) return;
    if (in_buf_.empty()) in_buf_.resize(kChunk);
    const uint64_t len = std::min<uint64_t>(kChunk, csize_ - cpos_);
    in_.read(data_start_ + cpos_, in_buf_.data(), len, where_ + " compressed data");
    cpos_ += len;
    zs_.next_in = in_buf_.data();
    zs_.avail_in = static_cast<uInt>(len);
  }

  void check_rc(int rc, const char* what) {
    if (rc == Z_OK || rc == Z_STREAM_END) return;
    if (rc == Z_BUF_ERROR && zs_.avail_in == 0 && cpos_ == csize_)
      throw Error(str_cat(where_, ": compressed data (", csize_, " bytes) ends before the ",
                          usize_, " uncompressed bytes are complete, at byte ", upos_,
                          " (truncated or corrupt; while reading the ", what, ")"));
    throw Error(str_cat(where_, ": compressed data is corrupt (zlib error ", rc,
                        zs_.msg ? str_cat(": ", zs_.msg) : std::string(), ") near compressed byte ",
                        cpos_ - zs_.avail_in, " of ", csize_, ", while reading the ", what));
  }

  /// All bytes are decoded: the stream must end here and the CRC match the directory.
  void finish() {
    unsigned char extra;
    while (!ended_) {
      zs_.next_out = &extra;
      zs_.avail_out = 1;
      refill();
      const int rc = ::inflate(&zs_, Z_NO_FLUSH);
      AIM_CHECK(zs_.avail_out == 1, where_, ": deflate stream holds more than the ", usize_,
                " uncompressed bytes the archive lists (corrupt)");
      check_rc(rc, "end of the deflate stream");
      if (rc == Z_STREAM_END) ended_ = true;
    }
    AIM_CHECK(crc_ == crc_expected_, where_, ": CRC-32 mismatch: expected 0x", std::hex,
              crc_expected_, ", found 0x", crc_, " (corrupt file)");
  }

  InFile& in_;
  uint64_t data_start_, csize_, usize_;
  uint32_t crc_expected_;
  std::string where_;
  z_stream zs_;
  std::vector<unsigned char> in_buf_;
  uint64_t cpos_ = 0, upos_ = 0;
  uint32_t crc_ = 0;
  bool ended_ = false;
};

}  // namespace

uint32_t crc32_update(uint32_t crc, const void* data, size_t n) {
  const auto& t = crc_tables().t;
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = ~crc;
  while (n >= 8) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
    lo ^= c;
    c = t[7][lo & 0xFF] ^ t[6][(lo >> 8) & 0xFF] ^ t[5][(lo >> 16) & 0xFF] ^ t[4][lo >> 24] ^
        t[3][hi & 0xFF] ^ t[2][(hi >> 8) & 0xFF] ^ t[1][(hi >> 16) & 0xFF] ^ t[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) c = t[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
  return ~c;
}

std::string npy_descr(torch::ScalarType dtype) {
  for (const auto& d : kDtypes) {
    if (d.torch_dtype != dtype) continue;
    return str_cat(d.size == 1 ? '|' : '<', d.kind, d.size);
  }
  throw Error(str_cat("npy: dtype ", c10::toString(dtype),
                      " has no NumPy equivalent; expected one of Bool, Byte, Char, UInt16, "
                      "Short, Int, Long, Half, Float, Double"));
}

// ----------------------------------------------------------------------------- writer

NpzWriter::NpzWriter(const std::string& path, NpzWriterOptions options)
    : path_(path), options_(options) {
  refuse_unreplaceable(path_);
  file_ = std::fopen(tmp_path().c_str(), "wb");
  AIM_CHECK(file_ != nullptr, tmp_path(), ": cannot open for writing: ", errno_text(errno));
  // Large buffer: appends arrive as many small image rows.
  std::setvbuf(file_, nullptr, _IOFBF, 1 << 20);
}

NpzWriter::~NpzWriter() {
  if (file_) {
    std::fclose(file_);
    file_ = nullptr;
  }
  if (!closed_ || failed_) std::remove(tmp_path().c_str());
}

void NpzWriter::fail(const std::string& message) {
  failed_ = true;
  throw Error(message);
}

void NpzWriter::check_usable(const char* what) const {
  AIM_CHECK(!closed_, path_, ": ", what, " after close()");
  AIM_CHECK(!failed_, path_, ": ", what, " after an earlier write error");
}

void NpzWriter::write_raw(const void* data, size_t n) {
  if (n == 0) return;
  if (std::fwrite(data, 1, n, file_) != n)
    fail(str_cat(tmp_path(), ": write of ", n, " bytes at offset ", offset_,
                 " failed: ", errno_text(errno), " (disk full?)"));
  offset_ += n;
}

void NpzWriter::write_member_bytes(const void* data, size_t n) {
  crc_state_ = crc32_update(crc_state_, data, n);
  write_raw(data, n);
}

void NpzWriter::begin_array(const std::string& name, torch::ScalarType dtype,
                            std::vector<int64_t> shape) {
  check_usable("begin_array");
  AIM_CHECK(!in_array_, path_, ": begin_array('", name, "') while array '", array_name_,
            "' is open; call end_array() first");
  AIM_CHECK(!name.empty(), path_, ": array name must not be empty");
  const std::string file_name = name + ".npy";
  AIM_CHECK(file_name.size() <= kMax16, path_, ": array name is ", name.size(),
            " bytes; expected at most ", kMax16 - 4);
  for (const auto& m : members_)
    AIM_CHECK(m.file_name != file_name, path_, ": array '", name, "' was already written");
  const std::string where = str_cat(path_, ": array '", name, "'");
  const uint64_t nbytes =
      checked_nbytes(shape, static_cast<int>(c10::elementSize(dtype)), where);
  const std::string header = npy_header(dtype, shape);

  Member m;
  m.file_name = file_name;
  m.header_offset = offset_;
  m.size = header.size() + nbytes;
  m.zip64_local = options_.force_zip64 || m.size >= kMax32;

  // The size is known now; only the CRC is patched in end_array().
  std::string local;
  put32(local, kLocalSig);
  put16(local, m.zip64_local ? kVersionZip64 : kVersionPlain);
  put16(local, 0);  // flags: no data descriptor
  put16(local, 0);  // method: stored
  put16(local, kDosTime);
  put16(local, kDosDate);
  put32(local, 0);  // CRC, patched later
  const uint32_t size32 = m.zip64_local ? kMax32 : static_cast<uint32_t>(m.size);
  put32(local, size32);
  put32(local, size32);
  put16(local, static_cast<uint16_t>(file_name.size()));
  put16(local, m.zip64_local ? 20 : 0);
  local += file_name;
  if (m.zip64_local) {
    put16(local, kZip64ExtraId);
    put16(local, 16);
    put64(local, m.size);
    put64(local, m.size);
  }
  write_raw(local.data(), local.size());

  crc_state_ = 0;
  write_member_bytes(header.data(), header.size());
  members_.push_back(m);
  in_array_ = true;
  array_name_ = name;
  array_dtype_ = dtype;
  array_shape_ = std::move(shape);
  rows_expected_ = array_shape_.empty() ? 1 : array_shape_[0];
  rows_written_ = 0;
}

void NpzWriter::append(const torch::Tensor& rows) {
  check_usable("append");
  AIM_CHECK(in_array_, path_, ": append() without an open array; call begin_array() first");
  const std::string where = str_cat(path_, ": array '", array_name_, "'");
  AIM_CHECK(rows.defined(), where, ": append() of an undefined tensor");
  AIM_CHECK(rows.device().is_cpu(), where, ": append() expects a CPU tensor, found ",
            rows.device());
  AIM_CHECK(rows.scalar_type() == array_dtype_, where, ": append() expects dtype ",
            c10::toString(array_dtype_), ", found ", c10::toString(rows.scalar_type()));
  int64_t n = 1;
  if (array_shape_.empty()) {
    AIM_CHECK(rows.dim() == 0, where, ": 0-d array takes a 0-d tensor, found shape ",
              rows.sizes());
  } else {
    bool ok = rows.dim() == static_cast<int64_t>(array_shape_.size());
    std::string row_shape = "[n";
    for (size_t d = 1; d < array_shape_.size(); ++d) {
      ok = ok && rows.size(d) == array_shape_[d];
      row_shape += str_cat(", ", array_shape_[d]);
    }
    AIM_CHECK(ok, where, ": append() expects rows of shape ", row_shape, "], found ",
              rows.sizes());
    n = rows.size(0);
  }
  AIM_CHECK(rows_written_ + n <= rows_expected_, where, ": append() of ", n, " rows after ",
            rows_written_, " exceeds the declared ", rows_expected_, " rows");
  const torch::Tensor c = rows.contiguous();
  write_member_bytes(c.data_ptr(), c.nbytes());
  rows_written_ += n;
}

void NpzWriter::end_array() {
  check_usable("end_array");
  AIM_CHECK(in_array_, path_, ": end_array() without an open array");
  AIM_CHECK(rows_written_ == rows_expected_, path_, ": array '", array_name_, "': expected ",
            rows_expected_, " rows (shape ", shape_text(array_shape_), "), found ", rows_written_,
            " written");
  Member& m = members_.back();
  AIM_CHECK(offset_ - m.header_offset >= m.size, path_, ": internal size mismatch");
  m.crc = crc_state_;
  // Patch the CRC field (offset 14 of the local header), then return to the end.
  const uint32_t crc = m.crc;
  if (fseeko(file_, static_cast<off_t>(m.header_offset + 14), SEEK_SET) != 0 ||
      std::fwrite(&crc, 1, 4, file_) != 4 || fseeko(file_, 0, SEEK_END) != 0)
    fail(str_cat(tmp_path(), ": patching the CRC of '", m.file_name,
                 "' failed: ", errno_text(errno)));
  in_array_ = false;
}

void NpzWriter::add_array(const std::string& name, const torch::Tensor& tensor) {
  AIM_CHECK(tensor.defined(), path_, ": add_array('", name, "') of an undefined tensor");
  begin_array(name, tensor.scalar_type(), tensor.sizes().vec());
  append(tensor);
  end_array();
}

void NpzWriter::close() {
  check_usable("close()");
  AIM_CHECK(!in_array_, path_, ": close() while array '", array_name_, "' is open (",
            rows_written_, " of ", rows_expected_, " rows written); call end_array() first");
  const uint64_t cd_offset = offset_;
  for (const Member& m : members_) {
    const bool big_size = options_.force_zip64 || m.size >= kMax32;
    const bool big_offset = options_.force_zip64 || m.header_offset >= kMax32;
    std::string extra;
    if (big_size || big_offset) {
      // Only the fields whose 32-bit slot holds 0xFFFFFFFF, in this order.
      std::string body;
      if (big_size) {
        put64(body, m.size);
        put64(body, m.size);
      }
      if (big_offset) put64(body, m.header_offset);
      put16(extra, kZip64ExtraId);
      put16(extra, static_cast<uint16_t>(body.size()));
      extra += body;
    }
    std::string c;
    put32(c, kCentralSig);
    put16(c, extra.empty() ? kVersionPlain : kVersionZip64);  // made by
    put16(c, extra.empty() ? kVersionPlain : kVersionZip64);  // needed
    put16(c, 0);
    put16(c, 0);
    put16(c, kDosTime);
    put16(c, kDosDate);
    put32(c, m.crc);
    put32(c, big_size ? kMax32 : static_cast<uint32_t>(m.size));
    put32(c, big_size ? kMax32 : static_cast<uint32_t>(m.size));
    put16(c, static_cast<uint16_t>(m.file_name.size()));
    put16(c, static_cast<uint16_t>(extra.size()));
    put16(c, 0);  // comment
    put16(c, 0);  // disk
    put16(c, 0);  // internal attributes
    put32(c, 0600u << 16);  // external attributes: Unix rw-------
    put32(c, big_offset ? kMax32 : static_cast<uint32_t>(m.header_offset));
    c += m.file_name;
    c += extra;
    write_raw(c.data(), c.size());
  }
  const uint64_t cd_size = offset_ - cd_offset;
  const uint64_t count = members_.size();
  const bool zip64_end =
      options_.force_zip64 || count >= kMax16 || cd_size >= kMax32 || cd_offset >= kMax32;
  std::string end;
  if (zip64_end) {
    const uint64_t end64_offset = offset_;
    put32(end, kEnd64Sig);
    put64(end, kEnd64Fixed - 12);  // record size after this field
    put16(end, kVersionZip64);
    put16(end, kVersionZip64);
    put32(end, 0);
    put32(end, 0);
    put64(end, count);
    put64(end, count);
    put64(end, cd_size);
    put64(end, cd_offset);
    put32(end, kEnd64LocatorSig);
    put32(end, 0);
    put64(end, end64_offset);
    put32(end, 1);
  }
  put32(end, kEndSig);
  put16(end, 0);
  put16(end, 0);
  put16(end, zip64_end ? kMax16 : static_cast<uint16_t>(count));
  put16(end, zip64_end ? kMax16 : static_cast<uint16_t>(count));
  put32(end, zip64_end ? kMax32 : static_cast<uint32_t>(cd_size));
  put32(end, zip64_end ? kMax32 : static_cast<uint32_t>(cd_offset));
  put16(end, 0);
  write_raw(end.data(), end.size());

  std::FILE* f = file_;
  file_ = nullptr;
  const bool flushed = std::fflush(f) == 0;
  const int flush_err = errno;
  const bool closed_ok = std::fclose(f) == 0;
  const int close_err = errno;
  if (!flushed || !closed_ok)
    fail(str_cat(tmp_path(), ": flushing ", offset_, " bytes failed: ",
                 errno_text(!flushed ? flush_err : close_err), " (disk full?)"));
  if (std::rename(tmp_path().c_str(), path_.c_str()) != 0)
    fail(str_cat(path_, ": renaming ", tmp_path(), " into place failed: ", errno_text(errno)));
  closed_ = true;
}

// ----------------------------------------------------------------------------- reading

torch::Tensor load_npy(const std::string& path) {
  InFile in(path);
  uint64_t pos = 0;
  const NpyLayout layout = parse_npy(
      [&](void* dst, uint64_t n, const char* what) {
        in.read(pos, dst, n, what);
        pos += n;
      },
      in.size(), path);
  torch::Tensor out = torch::empty(layout.shape, torch::TensorOptions().dtype(layout.dtype));
  in.read(layout.data_offset, out.data_ptr(), layout.nbytes, "npy data");
  return out;
}

// ------------------------------------------------------------------------------ NpzReader

struct NpzReader::Impl {
  struct Member {
    NpzMemberInfo info;
    std::string where;           // "<path>: member '<name>.npy'"
    uint32_t crc = 0;            // from the central directory
    uint64_t data_start = 0;     // archive offset of the member's (compressed) bytes
    NpyLayout layout;
    uint64_t row_bytes = 0;
    std::unique_ptr<Inflater> inflater;  // deflated members
    // Stored members: CRC-32 of the .npy bytes [0, crc_pos), advanced by sequential reads.
    uint64_t crc_pos = 0;
    uint32_t crc_state = 0;
  };

  explicit Impl(const std::string& path) : in(path) {}

  Member& find(const std::string& name) {
    for (Member& m : members)
      if (m.info.name == name) return m;
    std::string names;
    for (const Member& m : members) names += str_cat(names.empty() ? "" : ", ", m.info.name);
    throw Error(str_cat(in.path(), ": no member '", name, "' (members: ",
                        names.empty() ? "none" : names, ")"));
  }

  /// Bytes [off, off + n) of member `m`'s .npy into `dst`.
  void read_bytes(Member& m, uint64_t off, void* dst, uint64_t n) {
    if (m.inflater) {
      Inflater& z = *m.inflater;
      if (z.position() > off) z.restart();
      if (z.position() < off) z.next(nullptr, off - z.position(), "npy data (skipping ahead)");
      z.next(dst, n, "npy data");
      return;
    }
    in.read(m.data_start + off, dst, n, m.where + " npy data");
    if (off == m.layout.data_offset) {  // reading from row 0 (re)starts the check
      m.crc_state = m.layout.header_crc;
      m.crc_pos = off;
    }
    if (off != m.crc_pos) return;
    m.crc_state = crc32_update(m.crc_state, dst, n);
    m.crc_pos += n;
    AIM_CHECK(m.crc_pos != m.info.uncompressed_size || m.crc_state == m.crc, m.where,
              ": CRC-32 mismatch: expected 0x", std::hex, m.crc, ", found 0x", m.crc_state,
              " (corrupt file)");
  }

  InFile in;
  std::vector<Member> members;
};

NpzReader::NpzReader(const std::string& path) : impl_(std::make_unique<Impl>(path)) {
  InFile& in = impl_->in;
  uint64_t cd_offset = 0;
  const std::vector<ZipEntry> entries = read_zip_directory(in, &cd_offset);
  std::set<std::string> seen;
  for (const ZipEntry& z : entries) {
    if (!z.name.empty() && z.name.back() == '/') continue;  // directory
    Impl::Member m;
    m.where = str_cat(path, ": member '", z.name, "'");
    const std::string& where = m.where;
    AIM_CHECK(!(z.flags & 1), where, " is encrypted; encryption is not supported");
    AIM_CHECK(z.method == 0 || z.method == 8, where, " uses ZIP compression method ", z.method,
              "; expected 0 (stored, np.savez) or 8 (deflate, np.savez_compressed)");
    if (z.method == 0) {
      AIM_CHECK(z.compressed == z.uncompressed, where, ": stored member has compressed size ",
                z.compressed, " != uncompressed size ", z.uncompressed);
    } else {
      // Deflate expands at most ~1032:1; a larger claim is corruption, not data to allocate.
      AIM_CHECK(z.uncompressed / 1032 <= z.compressed + 1, where, ": ", z.uncompressed,
                " uncompressed bytes cannot come from ", z.compressed, " deflated bytes (corrupt)");
    }
    AIM_CHECK(z.name.size() > 4 && z.name.compare(z.name.size() - 4, 4, ".npy") == 0, where,
              ": expected only '<name>.npy' members in an .npz");
    unsigned char local[kLocalFixed];
    AIM_CHECK(z.local_offset < cd_offset, where, ": local header offset ", z.local_offset,
              " is not before the central directory at ", cd_offset);
    in.read(z.local_offset, local, kLocalFixed, where + " local header");
    AIM_CHECK(get32(local) == kLocalSig, where, ": local header at offset ", z.local_offset,
              " lacks signature 0x04034b50");
    m.data_start = z.local_offset + kLocalFixed + get16(local + 26) + get16(local + 28);
    AIM_CHECK(m.data_start <= cd_offset && z.compressed <= cd_offset - m.data_start, where,
              ": data (offset ", m.data_start, ", ", z.compressed,
              " bytes) overlaps the central directory at ", cd_offset);
    m.crc = z.crc;
    m.info.name = z.name.substr(0, z.name.size() - 4);
    AIM_CHECK(seen.insert(m.info.name).second, where, ": duplicate member");
    m.info.compressed = z.method == 8;
    m.info.compressed_size = z.compressed;
    m.info.uncompressed_size = z.uncompressed;
    if (m.info.compressed) {
      m.inflater = std::make_unique<Inflater>(in, m.data_start, z.compressed, z.uncompressed,
                                              z.crc, where);
      Inflater& inf = *m.inflater;
      m.layout = parse_npy([&](void* dst, uint64_t n, const char* what) { inf.next(dst, n, what); },
                           z.uncompressed, where);
    } else {
      uint64_t pos = 0;
      m.layout = parse_npy(
          [&](void* dst, uint64_t n, const char* what) {
            in.read(m.data_start + pos, dst, n, where + " " + what);
            pos += n;
          },
          z.uncompressed, where);
      m.crc_pos = m.layout.data_offset;
      m.crc_state = m.layout.header_crc;
    }
    m.info.dtype = m.layout.dtype;
    m.info.shape = m.layout.shape;
    const int64_t rows = m.info.rows();
    m.row_bytes = rows == 0 ? 0 : m.layout.nbytes / static_cast<uint64_t>(rows);
    impl_->members.push_back(std::move(m));
  }
  for (const Impl::Member& m : impl_->members) members_.push_back(m.info);
}

NpzReader::~NpzReader() = default;
NpzReader::NpzReader(NpzReader&&) noexcept = default;
NpzReader& NpzReader::operator=(NpzReader&&) noexcept = default;

const std::string& NpzReader::path() const { return impl_->in.path(); }

bool NpzReader::contains(const std::string& name) const {
  for (const NpzMemberInfo& m : members_)
    if (m.name == name) return true;
  return false;
}

const NpzMemberInfo& NpzReader::member(const std::string& name) const {
  return impl_->find(name).info;
}

torch::Tensor NpzReader::read_rows(const std::string& name, int64_t start, int64_t count) {
  Impl::Member& m = impl_->find(name);
  AIM_CHECK(!m.layout.shape.empty(), m.where, ": a 0-d array has no rows; use read()");
  const int64_t rows = m.layout.shape[0];
  AIM_CHECK(start >= 0 && count >= 0 && start <= rows && count <= rows - start, m.where,
            ": rows [", start, ", ", start, " + ", count, ") are outside the array's ", rows,
            " rows (shape ", shape_text(m.layout.shape), ")");
  std::vector<int64_t> shape = m.layout.shape;
  shape[0] = count;
  torch::Tensor out = torch::empty(shape, torch::TensorOptions().dtype(m.layout.dtype));
  impl_->read_bytes(m, m.layout.data_offset + static_cast<uint64_t>(start) * m.row_bytes,
                    out.data_ptr(), static_cast<uint64_t>(count) * m.row_bytes);
  return out;
}

torch::Tensor NpzReader::read(const std::string& name) {
  Impl::Member& m = impl_->find(name);
  if (!m.layout.shape.empty()) return read_rows(name, 0, m.layout.shape[0]);
  torch::Tensor out = torch::empty({}, torch::TensorOptions().dtype(m.layout.dtype));
  impl_->read_bytes(m, m.layout.data_offset, out.data_ptr(), m.layout.nbytes);
  return out;
}

std::map<std::string, torch::Tensor> load_npz(const std::string& path) {
  NpzReader reader(path);
  std::map<std::string, torch::Tensor> out;
  for (const NpzMemberInfo& m : reader.members()) out.emplace(m.name, reader.read(m.name));
  return out;
}

}  // namespace aim
