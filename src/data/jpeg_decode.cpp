// JPEG decoding through libjpeg's decompressor with PIL's settings (see jpeg_decode.h).
//
// PIL (Pillow 11, bundled libjpeg-turbo) decodes with libjpeg's defaults: JDCT_ISLOW and fancy
// upsampling, output RGB for 3 components and L for 1; a 4-component stream is read as raw CMYK
// with the Adobe polarity assumed ("CMYK;I": every sample inverted) whether or not an Adobe marker
// is present, and convert('RGB') maps it with `nk - nk * c / 255` per channel (nk = 255 - k).
// Warnings (corrupt data that libjpeg recovers from) are silent in PIL and here; errors fail.
#include "jpeg_decode.h"

// jpeglib.h needs FILE and size_t declared before it.
#include <csetjmp>
#include <cstdio>
#include <jpeglib.h>

#include <vector>

#include "aim/core/error.h"

namespace aim::detail {

namespace {

struct ErrorManager {
  jpeg_error_mgr pub;  // first: libjpeg sees a pointer to this
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void on_error(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

void on_message(j_common_ptr) {}  // warnings: PIL prints nothing either

/// PIL's MULDIV255: a * b / 255, rounded.
inline int muldiv255(int a, int b) {
  const int t = a * b + 128;
  return ((t >> 8) + t) >> 8;
}

inline uint8_t clip8(int v) { return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v); }

/// The decompressor's work, kept free of objects with destructors: a libjpeg error longjmps back
/// to the setjmp here. Returns false with err->message set on failure.
bool run_decompressor(jpeg_decompress_struct* cinfo, ErrorManager* err, const uint8_t* data, size_t size,
                      int64_t max_pixels, std::vector<uint8_t>* rows, int* width, int* height,
                      int* components, bool* too_large) {
  if (setjmp(err->jump)) {
    jpeg_destroy_decompress(cinfo);
    return false;
  }
  jpeg_create_decompress(cinfo);
  jpeg_mem_src(cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(cinfo, TRUE);
  *width = static_cast<int>(cinfo->image_width);
  *height = static_cast<int>(cinfo->image_height);
  *components = cinfo->num_components;
  if (max_pixels > 0 && static_cast<int64_t>(*width) * *height > max_pixels) {
    *too_large = true;
    jpeg_destroy_decompress(cinfo);
    return true;
  }
  if (*components != 1 && *components != 3 && *components != 4) {
    jpeg_destroy_decompress(cinfo);
    return true;  // refused by the caller, as PIL refuses it
  }
  cinfo->out_color_space = *components == 1 ? JCS_GRAYSCALE : *components == 3 ? JCS_RGB : JCS_CMYK;
  cinfo->dct_method = JDCT_ISLOW;
  cinfo->do_fancy_upsampling = TRUE;
  jpeg_start_decompress(cinfo);
  const size_t stride = static_cast<size_t>(cinfo->output_width) * cinfo->output_components;
  rows->resize(stride * cinfo->output_height);
  while (cinfo->output_scanline < cinfo->output_height) {
    JSAMPROW row = rows->data() + stride * cinfo->output_scanline;
    jpeg_read_scanlines(cinfo, &row, 1);
  }
  jpeg_finish_decompress(cinfo);
  jpeg_destroy_decompress(cinfo);
  return true;
}

}  // namespace

Image decode_jpeg(const uint8_t* data, size_t size, const std::string& what, int64_t max_pixels) {
  jpeg_decompress_struct cinfo{};
  ErrorManager err{};
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = on_error;
  err.pub.output_message = on_message;
  std::vector<uint8_t> rows;
  int w = 0, h = 0, comp = 0;
  bool too_large = false;
  if (!run_decompressor(&cinfo, &err, data, size, max_pixels, &rows, &w, &h, &comp, &too_large)) {
    throw Error(str_cat("cannot decode image '", what, "': ", err.message, " (libjpeg)"));
  }
  if (too_large) {
    throw Error(str_cat("cannot decode image '", what, "': ", w, "x", h, " pixels exceed ", max_pixels,
                        ", where PIL raises DecompressionBombError"));
  }
  if (comp != 1 && comp != 3 && comp != 4) {
    throw Error(str_cat("cannot decode image '", what, "': a JPEG of ", comp,
                        " components (PIL reads 1, 3 or 4 and refuses this one too)"));
  }
  if (comp == 3) return Image(w, h, std::move(rows));  // libjpeg's RGB rows are the image
  Image out(w, h);
  const size_t count = static_cast<size_t>(w) * h;
  uint8_t* dst = out.rgb.data();
  const uint8_t* src = rows.data();
  if (comp == 1) {
    for (size_t i = 0; i < count; ++i) dst[3 * i] = dst[3 * i + 1] = dst[3 * i + 2] = src[i];
  } else {
    for (size_t i = 0; i < count; ++i) {
      const uint8_t* p = src + 4 * i;
      // Inverted samples: c = 255 - raw, k = 255 - raw[3], so nk = 255 - k is raw[3].
      const int nk = p[3];
      for (int c = 0; c < 3; ++c) dst[3 * i + c] = clip8(nk - muldiv255(255 - p[c], nk));
    }
  }
  return out;
}

}  // namespace aim::detail
