// Decoding with stb_image to what PIL's `Image.open(f).convert('RGB')` returns, and PNG writing.
//
// Where stb and PIL (Pillow 11 with libjpeg-turbo) differ we adjust:
// - JPEG streams must reach their end-of-image marker, or PIL raises "image file is truncated".
//   stb either fails with a bare "expected marker" or, where a cut falls well, fills the
//   missing data with zeros; we walk the markers ourselves and say "truncated".
// - A 4-component JPEG without an Adobe APP14 marker: libjpeg and PIL read it as (inverted,
//   Adobe-convention) CMYK, stb as YCbCr. We insert an Adobe marker saying "CMYK" before
//   decoding, so stb takes its CMYK path, whose rounding equals PIL's CMYK -> RGB.
// - 16-bit grayscale PNG: PIL opens it as mode I;16 and convert('RGB') clamps each value to
//   255 (it does not scale); stb's 8-bit path keeps the high byte. We load 16 bits and clamp.
//   Other 16-bit PNGs keep the high byte in both.
// - A PNG whose chunks end cleanly but lack the closing IEND chunk: PIL decodes it, stb fails
//   on the missing chunk. We append IEND.
// - Alpha is dropped (PIL's convert('RGB') from RGBA / LA / P+transparency ignores it).
#include <stb_image.h>
#include <stb_image_write.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <system_error>

#include "aim/core/error.h"
#include "aim/data/image.h"

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

/// What the JPEG marker walk found.
struct JpegLayout {
  int components = 0;     ///< from the first SOFn
  bool adobe = false;     ///< an APP14 "Adobe" segment was seen
  bool complete = false;  ///< the EOI marker was reached
};

bool is_sof(uint8_t m) { return m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC; }

/// Walks segments and entropy-coded data to EOI (junk between markers is skipped as libjpeg
/// does). Never reads past `n`; stops early at anything malformed and lets stb judge it.
JpegLayout walk_jpeg(const uint8_t* d, size_t n) {
  JpegLayout out;
  size_t pos = 2;  // after SOI
  while (pos < n) {
    while (pos < n && d[pos] != 0xFF) ++pos;
    while (pos < n && d[pos] == 0xFF) ++pos;  // fill bytes
    if (pos >= n) break;
    const uint8_t m = d[pos++];
    if (m == 0xD9) {
      out.complete = true;
      break;
    }
    if (m == 0x00 || m == 0x01 || m == 0xD8 || (m >= 0xD0 && m <= 0xD7)) continue;
    if (pos + 2 > n) break;
    const size_t len = (static_cast<size_t>(d[pos]) << 8) | d[pos + 1];
    if (len < 2) break;
    const uint8_t* seg = d + pos + 2;
    const size_t seg_len = std::min(len - 2, n - (pos + 2));
    if (is_sof(m) && out.components == 0 && seg_len >= 6) out.components = seg[5];
    if (m == 0xEE && seg_len >= 5 && std::memcmp(seg, "Adobe", 5) == 0) out.adobe = true;
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
  return out;
}

/// The stream with an APP14 "Adobe" segment (transform 0: CMYK) right after SOI.
std::vector<uint8_t> with_adobe_cmyk_marker(const uint8_t* d, size_t n) {
  static const uint8_t app14[16] = {0xFF, 0xEE, 0x00, 0x0E, 'A',  'd',  'o',  'b',
                                    'e',  0x00, 0x64, 0x00, 0x00, 0x00, 0x00, 0x00};
  std::vector<uint8_t> out;
  out.reserve(n + sizeof(app14));
  out.insert(out.end(), d, d + 2);
  out.insert(out.end(), app14, app14 + sizeof(app14));
  out.insert(out.end(), d + 2, d + n);
  return out;
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
    fail(what, str_cat("the file is ", size, " bytes, more than stb_image can read (2 GiB)"));
  }
  std::vector<uint8_t> patched;
  bool gray16 = false;
  if (is_jpeg(data, size)) {
    const JpegLayout layout = walk_jpeg(data, size);
    if (!layout.complete) {
      // PIL refuses these too ("image file is truncated"), even when only EOI is missing; stb
      // would fill the missing data with zeros.
      fail(what, "truncated: the JPEG data ends before its end-of-image marker");
    }
    if (layout.components == 4 && !layout.adobe) {
      patched = with_adobe_cmyk_marker(data, size);
      data = patched.data();
      size = patched.size();
    }
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
    if (reason == "unknown image type") fail(what, reason + " (expected a JPEG, PNG or BMP file)");
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
