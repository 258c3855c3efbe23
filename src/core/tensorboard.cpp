#include "aim/core/tensorboard.h"

#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iterator>

#include "aim/core/error.h"

namespace aim {

namespace {

// ---- CRC-32C, reflected polynomial 0x82F63B78, one table lookup per byte

std::array<uint32_t, 256> crc32c_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}

/// TFRecord's masking of a CRC stored next to the data it covers.
uint32_t masked_crc(const void* data, size_t n) {
  const uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

void put_le32(std::string& s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xffu));
}
void put_le64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xffu));
}
uint32_t get_le32(const unsigned char* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 |
         static_cast<uint32_t>(p[3]) << 24;
}
uint64_t get_le64(const unsigned char* p) {
  return static_cast<uint64_t>(get_le32(p)) | static_cast<uint64_t>(get_le32(p + 4)) << 32;
}

// ---- protocol-buffer wire format: the few field kinds tensorflow.Event needs

void put_varint(std::string& s, uint64_t v) {
  while (v >= 0x80) {
    s.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  s.push_back(static_cast<char>(v));
}
void put_key(std::string& s, int field, int wire_type) {
  put_varint(s, static_cast<uint64_t>(field) << 3 | static_cast<uint64_t>(wire_type));
}
void put_varint_field(std::string& s, int field, int64_t v) {
  put_key(s, field, 0);
  put_varint(s, static_cast<uint64_t>(v));  // negative int64s take ten bytes, as protobuf writes them
}
void put_double_field(std::string& s, int field, double v) {
  put_key(s, field, 1);
  uint64_t bits;
  std::memcpy(&bits, &v, 8);
  put_le64(s, bits);
}
void put_float_field(std::string& s, int field, float v) {
  put_key(s, field, 5);
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  put_le32(s, bits);
}
void put_bytes_field(std::string& s, int field, const std::string& v) {
  put_key(s, field, 2);
  put_varint(s, v.size());
  s += v;
}

// tensorflow.Event: wall_time = 1 (double), step = 2 (int64), file_version = 3 (string),
// summary = 5 (Summary). Summary: repeated Value value = 1. Summary.Value: tag = 1,
// simple_value = 2 (float), image = 4 (Summary.Image: height = 1, width = 2, colorspace = 3,
// encoded_image_string = 4).
constexpr int kEventWallTime = 1, kEventStep = 2, kEventFileVersion = 3, kEventSummary = 5;
constexpr int kSummaryValue = 1;
constexpr int kValueTag = 1, kValueSimple = 2, kValueImage = 4;
constexpr int kImageHeight = 1, kImageWidth = 2, kImageColorspace = 3, kImageEncoded = 4;

std::string summary_of(const std::string& value) {
  std::string s;
  put_bytes_field(s, kSummaryValue, value);
  return s;
}

}  // namespace

uint32_t crc32c(const void* data, size_t n) {
  static const auto table = crc32c_table();
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xffu] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

PngHeader png_header(const std::string& png, const std::string& what) {
  static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  const auto* p = reinterpret_cast<const unsigned char*>(png.data());
  if (png.size() < 26 || std::memcmp(p, sig, 8) != 0 || std::memcmp(p + 12, "IHDR", 4) != 0)
    throw Error(str_cat(what, ": not a PNG (", png.size(), " bytes; expected the PNG signature and an IHDR chunk)"));
  auto be32 = [&](int at) {
    return static_cast<int>(static_cast<uint32_t>(p[at]) << 24 | static_cast<uint32_t>(p[at + 1]) << 16 |
                            static_cast<uint32_t>(p[at + 2]) << 8 | static_cast<uint32_t>(p[at + 3]));
  };
  PngHeader h;
  h.width = be32(16);
  h.height = be32(20);
  switch (p[25]) {  // colour type
    case 0: h.channels = 1; break;
    case 4: h.channels = 2; break;
    case 2: case 3: h.channels = 3; break;
    case 6: h.channels = 4; break;
    default: throw Error(str_cat(what, ": PNG colour type ", static_cast<int>(p[25]), " is not one of 0, 2, 3, 4, 6"));
  }
  return h;
}

std::vector<std::string> read_tfrecords(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(str_cat(path, ": cannot open"));
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  std::vector<std::string> out;
  size_t at = 0;
  while (bytes.size() - at >= 12) {
    const uint64_t len = get_le64(p + at);
    if (get_le32(p + at + 8) != masked_crc(p + at, 8))
      throw Error(str_cat(path, ": record at byte ", at, ": the length's checksum does not match"));
    const uint64_t avail = bytes.size() - at - 12;
    if (avail < 4 || len > avail - 4) break;  // cut short at the end
    const unsigned char* data = p + at + 12;
    if (get_le32(data + len) != masked_crc(data, len))
      throw Error(str_cat(path, ": record at byte ", at, " (", len, " bytes): the data's checksum does not match"));
    out.emplace_back(reinterpret_cast<const char*>(data), len);
    at += 12 + len + 4;
  }
  return out;
}

double TensorBoardWriter::now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(str_cat(dir, ": cannot create the TensorBoard folder: ", ec.message()));
  char host[256] = "localhost";
  ::gethostname(host, sizeof(host) - 1);
  host[sizeof(host) - 1] = '\0';
  static std::atomic<int> counter{0};
  const double t = now();
  path_ = (fs::path(dir) / str_cat("events.out.tfevents.", static_cast<int64_t>(t), ".", host, ".", ::getpid(), ".",
                                   counter++))
              .string();
  out_.open(path_, std::ios::binary | std::ios::trunc);
  if (!out_) throw Error(str_cat(path_, ": cannot create: ", std::strerror(errno)));
  std::string body;
  put_bytes_field(body, kEventFileVersion, "brain.Event:2");
  event(0, t, body);
  flush();
}

void TensorBoardWriter::event(int64_t step, double wall_time, const std::string& body) {
  std::string ev;
  put_double_field(ev, kEventWallTime, wall_time);
  put_varint_field(ev, kEventStep, step);
  ev += body;
  std::string frame;
  put_le64(frame, ev.size());
  put_le32(frame, masked_crc(frame.data(), 8));
  frame += ev;
  put_le32(frame, masked_crc(ev.data(), ev.size()));
  out_.write(frame.data(), static_cast<std::streamsize>(frame.size()));
}

void TensorBoardWriter::scalar(const std::string& tag, int64_t step, double value, double wall_time) {
  std::string v;
  put_bytes_field(v, kValueTag, tag);
  // (A finite value past float's range converts to +-inf, not undefined behaviour; NaN stays NaN.)
  const double limit = std::numeric_limits<float>::max();
  const float f = value > limit    ? std::numeric_limits<float>::infinity()
                  : value < -limit ? -std::numeric_limits<float>::infinity()
                                   : static_cast<float>(value);
  put_float_field(v, kValueSimple, f);
  std::string body;
  put_bytes_field(body, kEventSummary, summary_of(v));
  event(step, wall_time, body);
}

void TensorBoardWriter::image(const std::string& tag, int64_t step, const std::string& png, double wall_time) {
  const auto h = png_header(png, tag);
  std::string img;
  put_varint_field(img, kImageHeight, h.height);
  put_varint_field(img, kImageWidth, h.width);
  put_varint_field(img, kImageColorspace, h.channels);
  put_bytes_field(img, kImageEncoded, png);
  std::string v;
  put_bytes_field(v, kValueTag, tag);
  put_bytes_field(v, kValueImage, img);
  std::string body;
  put_bytes_field(body, kEventSummary, summary_of(v));
  event(step, wall_time, body);
}

bool TensorBoardWriter::flush() {
  out_.flush();
  return static_cast<bool>(out_);
}

}  // namespace aim
