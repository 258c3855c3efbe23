// Decoding to what PIL's `Image.open(f).convert('RGB')` returns, and PNG writing.
//
// JPEG goes through libjpeg with PIL's settings (jpeg_decode.cpp), so its pixels are PIL's
// exactly; stb_image's IDCT and chroma upsampling differ from libjpeg's on a few percent of the
// pixels of every photo. PNG, BMP and binary PPM/PGM go through stb_image, adjusted where it and
// PIL differ:
// - JPEG streams must reach their end-of-image marker, or PIL raises "image file is truncated"
//   (libjpeg would pad the missing data); we walk the markers ourselves and say "truncated".
// - 16-bit grayscale PNG: PIL opens it as mode I;16 and convert('RGB') clamps each value to
//   255 (it does not scale); stb's 8-bit path keeps the high byte. We load 16 bits and clamp.
//   Other 16-bit PNGs keep the high byte in both.
// - A PNG whose chunks end cleanly but lack the closing IEND chunk: PIL decodes it, stb fails
//   on the missing chunk. We append IEND.
// - PPM/PGM with a maximum value other than 255: PIL scales the samples to 0..255, stb does not;
//   refused.
// - Alpha is dropped (PIL's convert('RGB') from RGBA / LA / P+transparency ignores it).
#include <stb_image.h>
#include <stb_image_write.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <system_error>

#include "aim/core/error.h"
#include "aim/core/fileio.h"
#include "aim/data/image.h"
#include "jpeg_decode.h"

namespace aim {

namespace {

/// PIL's decompression-bomb limit: 2 * Image.MAX_IMAGE_PIXELS (1024^3 / 4 / 3).
constexpr int64_t kMaxPixels = 2 * (int64_t{1024} * 1024 * 1024 / 4 / 3);

struct StbFree {
  void operator()(void* p) const { stbi_image_free(p); }
};

bool is_jpeg(const uint8_t* d, size_t n) {
  return n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF;
}

bool is_png(const uint8_t* d, size_t n) {
  static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  return n >= 8 && std::memcmp(d, sig, 8) == 0;
}

/// True when the JPEG stream reaches its end-of-image marker: walks segments and entropy-coded
/// data (junk between markers is skipped as libjpeg does). Never reads past `n`; stops early at
/// anything malformed and lets the decoder judge it.
bool jpeg_reaches_eoi(const uint8_t* d, size_t n) {
  size_t pos = 2;  // after SOI
  while (pos < n) {
    while (pos < n && d[pos] != 0xFF) ++pos;
    while (pos < n && d[pos] == 0xFF) ++pos;  // fill bytes
    if (pos >= n) break;
    const uint8_t m = d[pos++];
    if (m == 0xD9) return true;
    if (m == 0x00 || m == 0x01 || m == 0xD8 || (m >= 0xD0 && m <= 0xD7)) continue;
    if (pos + 2 > n) break;
    const size_t len = (static_cast<size_t>(d[pos]) << 8) | d[pos + 1];
    if (len < 2) break;
    pos += len;
    if (m == 0xDA) {
      // Entropy-coded data: FF 00 is a stuffed byte, FF D0..D7 a restart, FF FF fill.
      while (pos < n) {
        if (d[pos] != 0xFF) {
          ++pos;
          continue;
        }
        if (pos + 1 >= n) {
          pos = n;
          break;
        }
        const uint8_t b = d[pos + 1];
        if (b == 0x00 || (b >= 0xD0 && b <= 0xD7)) {
          pos += 2;
        } else if (b == 0xFF) {
          ++pos;
        } else {
          break;  // a marker: back to the segment loop
        }
      }
    }
  }
  return false;
}

/// The maximum sample value of a binary PPM (P6) or PGM (P5) header, or -1 when `d` is not one
/// or its header cannot be read (stb then judges the file).
int pnm_maxval(const uint8_t* d, size_t n) {
  if (n < 3 || d[0] != 'P' || (d[1] != '5' && d[1] != '6')) return -1;
  size_t pos = 2;
  long fields[3] = {0, 0, 0};
  for (long& f : fields) {
    for (;;) {  // whitespace and comments
      while (pos < n && std::isspace(d[pos])) ++pos;
      if (pos < n && d[pos] == '#') {
        while (pos < n && d[pos] != '\n' && d[pos] != '\r') ++pos;
        continue;
      }
      break;
    }
    if (pos >= n || !std::isdigit(d[pos])) return -1;
    while (pos < n && std::isdigit(d[pos]) && f < 1000000) f = f * 10 + (d[pos++] - '0');
  }
  return static_cast<int>(fields[2]);
}

/// True when the PNG's chunks end exactly at the end of the data without an IEND chunk.
bool png_lacks_iend(const uint8_t* d, size_t n) {
  size_t pos = 8;
  while (pos + 8 <= n) {
    const size_t len = (size_t{d[pos]} << 24) | (size_t{d[pos + 1]} << 16) |
                       (size_t{d[pos + 2]} << 8) | d[pos + 3];
    if (std::memcmp(d + pos + 4, "IEND", 4) == 0) return false;
    if (len + 12 > n - pos) return false;  // cut inside a chunk
    pos += 12 + len;
  }
  return pos == n;
}

std::string stb_reason() {
  const char* r = stbi_failure_reason();
  return r && *r ? r : "stb_image gave no reason";
}

[[noreturn]] void fail(const std::string& what, const std::string& reason) {
  throw Error(str_cat("cannot decode image '", what, "': ", reason));
}

Image gray16_png(const uint8_t* data, size_t size, const std::string& what) {
  int w = 0, h = 0, comp = 0;
  std::unique_ptr<stbi_us, StbFree> px(
      stbi_load_16_from_memory(data, static_cast<int>(size), &w, &h, &comp, 1));
  if (!px) fail(what, str_cat(stb_reason(), " (16-bit grayscale PNG)"));
  Image out(w, h);
  const size_t count = static_cast<size_t>(w) * h;
  for (size_t i = 0; i < count; ++i) {
    const uint8_t v = px.get()[i] > 255 ? 255 : static_cast<uint8_t>(px.get()[i]);
    out.rgb[3 * i] = out.rgb[3 * i + 1] = out.rgb[3 * i + 2] = v;
  }
  return out;
}

}  // namespace

Image decode_image_memory(const uint8_t* data, size_t size, const std::string& what) {
  if (size == 0) fail(what, "the file is empty");
  if (size > static_cast<size_t>(std::numeric_limits<int>::max())) {
    fail(what, str_cat("the file is ", size, " bytes, more than the decoders read (2 GiB)"));
  }
  std::vector<uint8_t> patched;
  bool gray16 = false;
  if (is_jpeg(data, size)) {
    if (!jpeg_reaches_eoi(data, size)) {
      // PIL refuses these too ("image file is truncated"), even when only EOI is missing;
      // libjpeg would fill the missing data with grey.
      fail(what, "truncated: the JPEG data ends before its end-of-image marker");
    }
    return detail::decode_jpeg(data, size, what, kMaxPixels);
  } else if (is_png(data, size)) {
    if (png_lacks_iend(data, size)) {
      static const uint8_t iend[12] = {0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xAE, 0x42, 0x60, 0x82};
      patched.assign(data, data + size);
      patched.insert(patched.end(), iend, iend + sizeof(iend));
      data = patched.data();
      size = patched.size();
    }
    gray16 =
        size >= 26 && std::memcmp(data + 12, "IHDR", 4) == 0 && data[24] == 16 && data[25] == 0;
  } else if (const int maxval = pnm_maxval(data, size); maxval >= 0 && maxval != 255) {
    fail(what, str_cat("a PPM/PGM with maximum value ", maxval, ": only 255 is read (PIL would rescale ",
                       "the samples)\n---> HINT: convert it to PNG"));
  }
  int w = 0, h = 0, comp = 0;
  if (stbi_info_from_memory(data, static_cast<int>(size), &w, &h, &comp) &&
      static_cast<int64_t>(w) * h > kMaxPixels) {
    fail(what, str_cat(w, "x", h, " pixels exceed ", kMaxPixels,
                       ", where PIL raises DecompressionBombError"));
  }
  if (gray16) return gray16_png(data, size, what);
  std::unique_ptr<stbi_uc, StbFree> px(
      stbi_load_from_memory(data, static_cast<int>(size), &w, &h, &comp, 3));
  if (!px) {
    const std::string reason = stb_reason();
    if (reason == "unknown image type") fail(what, reason + " (expected a JPEG, PNG, BMP or binary PPM/PGM file; convert TIFF or WebP "
                                              "images to PNG)");
    if (reason == "outofdata") fail(what, reason + " (the data ends early: truncated file)");
    fail(what, reason);
  }
  Image out;
  out.width = w;
  out.height = h;
  out.rgb.assign(px.get(), px.get() + static_cast<size_t>(w) * h * 3);
  return out;
}

Image decode_image(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw Error(str_cat("'", path, "': is a folder, not an image file"));
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) {
    throw Error(str_cat("cannot open image file '", path, "': ", std::strerror(errno)));
  }
  const std::streamoff n = f.tellg();
  if (n < 0) throw Error(str_cat("cannot read image file '", path, "': size unknown"));
  std::vector<uint8_t> bytes(static_cast<size_t>(n));
  f.seekg(0);
  if (n > 0 && !f.read(reinterpret_cast<char*>(bytes.data()), n)) {
    throw Error(
        str_cat("cannot read image file '", path, "': read ", f.gcount(), " of ", n, " bytes"));
  }
  return decode_image_memory(bytes.data(), bytes.size(), path);
}

// ---------------------------------------------------------------------------------- writing

std::vector<uint8_t> encode_png(const Image& image) {
  AIM_CHECK(
      !image.empty() && image.rgb.size() == static_cast<size_t>(image.width) * image.height * 3,
      "encode_png: expected a non-empty image holding width * height * 3 bytes, found ",
      image.width, "x", image.height, " with ", image.rgb.size(), " bytes");
  std::vector<uint8_t> out;
  auto sink = [](void* ctx, void* bytes, int len) {
    auto* v = static_cast<std::vector<uint8_t>*>(ctx);
    v->insert(v->end(), static_cast<uint8_t*>(bytes), static_cast<uint8_t*>(bytes) + len);
  };
  const int ok = stbi_write_png_to_func(sink, &out, image.width, image.height, 3, image.rgb.data(),
                                        image.width * 3);
  AIM_CHECK(ok != 0, "encode_png: stb_image_write failed on a ", image.width, "x", image.height,
            " image");
  return out;
}

void write_png(const std::string& path, const Image& image) {
  const std::vector<uint8_t> bytes = encode_png(image);
  namespace fs = std::filesystem;
  refuse_unreplaceable(path);
  const fs::path target(path);
  // Unique per process and call, so concurrent writers of one path never share a temporary.
  static std::atomic<uint64_t> counter{0};
  const fs::path tmp =
      target.parent_path() / (target.filename().string() + ".tmp." + std::to_string(::getpid()) +
                              "." + std::to_string(counter.fetch_add(1)));
  {
    std::error_code ec;  // a missing folder is made (a failure shows at the open below)
    fs::create_directories(target.parent_path(), ec);
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) {
      throw Error(str_cat("cannot write PNG '", path, "': cannot create '", tmp.string(),
                          "': ", std::strerror(errno)));
    }
    f.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
    f.flush();
    if (!f) {
      std::error_code ignored;
      fs::remove(tmp, ignored);
      throw Error(str_cat("cannot write PNG '", path, "': writing ", bytes.size(), " bytes to '",
                          tmp.string(), "' failed: ", std::strerror(errno)));
    }
  }
  std::error_code ec;
  fs::rename(tmp, target, ec);
  if (ec) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw Error(str_cat("cannot write PNG '", path, "': rename from '", tmp.string(),
                        "' failed: ", ec.message()));
  }
}

}  // namespace aim
