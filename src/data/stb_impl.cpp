// The one translation unit holding stb_image / stb_image_write's implementations (Debian's
// libstb-dev ships headers only). We compile only the decoders we support.
//
// stb_image 2.27's 2x chroma upsamplers are replaced so JPEG decoding follows libjpeg, which is
// what PIL decodes with:
// - `stbi__resample_row_h_2` (4:2:2) weights the last output pair 3:1 toward the wrong input
//   sample: the second-to-last column of every 4:2:2 JPEG takes its neighbour's chroma (errors
//   of 60+ levels against PIL).
// - `stbi__resample_row_hv_2` and its SIMD twin (4:2:0) round every output with +8/16 where
//   libjpeg alternates +8 and +7; matching it cuts the mean difference to PIL by 3x.
// A function-like macro renames stb's definitions out of the way; stb refers to these functions
// only by name, without a parenthesis (`r->resample = stbi__resample_row_h_2;`), so the uses are
// not expanded and bind to the versions defined below.
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#endif

static unsigned char* stbi__resample_row_h_2(unsigned char* out, unsigned char* in_near,
                                             unsigned char* in_far, int w, int hs);
static unsigned char* stbi__resample_row_hv_2(unsigned char* out, unsigned char* in_near,
                                              unsigned char* in_far, int w, int hs);
static unsigned char* stbi__resample_row_hv_2_simd(unsigned char* out, unsigned char* in_near,
                                                   unsigned char* in_far, int w, int hs);
#define stbi__resample_row_h_2(out, in_near, in_far, w, hs) \
  stbi_replaced_resample_row_h_2(out, in_near, in_far, w, hs)
#define stbi__resample_row_hv_2(out, in_near, in_far, w, hs) \
  stbi_replaced_resample_row_hv_2(out, in_near, in_far, w, hs)
#define stbi__resample_row_hv_2_simd(out, in_near, in_far, w, hs) \
  stbi_replaced_resample_row_hv_2_simd(out, in_near, in_far, w, hs)

#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>

#undef stbi__resample_row_h_2
#undef stbi__resample_row_hv_2
#undef stbi__resample_row_hv_2_simd

namespace {
inline unsigned char u8(int v) { return static_cast<unsigned char>(v); }
}  // namespace

/// Horizontal triangle filter, one chroma row of w samples into 2w outputs: output 2i is
/// (3 in[i] + in[i-1] + 1) / 4, output 2i+1 is (3 in[i] + in[i+1] + 2) / 4; the two outermost
/// outputs copy the edge samples.
static unsigned char* stbi__resample_row_h_2(unsigned char* out, unsigned char* in_near,
                                             unsigned char* in_far, int w, int hs) {
  (void)in_far;
  (void)hs;
  const unsigned char* in = in_near;
  if (w == 1) {
    out[0] = out[1] = in[0];
    return out;
  }
  out[0] = in[0];
  out[1] = u8((in[0] * 3 + in[1] + 2) >> 2);
  for (int i = 1; i < w - 1; ++i) {
    out[2 * i] = u8((in[i] * 3 + in[i - 1] + 1) >> 2);
    out[2 * i + 1] = u8((in[i] * 3 + in[i + 1] + 2) >> 2);
  }
  out[2 * (w - 1)] = u8((in[w - 1] * 3 + in[w - 2] + 1) >> 2);
  out[2 * (w - 1) + 1] = in[w - 1];
  return out;
}

/// Both directions: column sums t[i] = 3 near[i] + far[i] (the nearer chroma row weighs 3/4),
/// then output 2i is (3 t[i] + t[i-1] + 8) / 16 and 2i+1 is (3 t[i] + t[i+1] + 7) / 16; the
/// outermost outputs are (4 t + 8) / 16 and (4 t + 7) / 16.
static unsigned char* stbi__resample_row_hv_2(unsigned char* out, unsigned char* in_near,
                                              unsigned char* in_far, int w, int hs) {
  (void)hs;
  if (w == 1) {
    out[0] = out[1] = u8((3 * in_near[0] + in_far[0] + 2) >> 2);
    return out;
  }
  int t1 = 3 * in_near[0] + in_far[0];
  out[0] = u8((t1 * 4 + 8) >> 4);
  for (int i = 1; i < w; ++i) {
    const int t0 = t1;
    t1 = 3 * in_near[i] + in_far[i];
    out[2 * i - 1] = u8((3 * t0 + t1 + 7) >> 4);
    out[2 * i] = u8((3 * t1 + t0 + 8) >> 4);
  }
  out[2 * w - 1] = u8((t1 * 4 + 7) >> 4);
  return out;
}

static unsigned char* stbi__resample_row_hv_2_simd(unsigned char* out, unsigned char* in_near,
                                                   unsigned char* in_far, int w, int hs) {
  return stbi__resample_row_hv_2(out, in_near, in_far, w, hs);
}

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>
