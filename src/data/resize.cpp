// Resampling that reproduces Pillow's Image.resize on 8-bit RGB (libImaging/Resample.c):
//
//   scale   = in / out;  filterscale = max(scale, 1)   (the kernel widens when downscaling)
//   support = filter support * filterscale
//   center  = (i + 0.5) * scale;  taps x in [int(center - support + 0.5), int(center + support
//             + 0.5)) clipped to the image;  w(x) = K((x - center + 0.5) / filterscale)
//   weights normalised to sum 1 per output pixel, then turned into fixed point with 22 fraction
//   bits (rounded half away from zero); sums start at 0.5 and are shifted back and clamped.
//
// The horizontal pass runs first (only on the rows the vertical pass will read) into a uint8
// image, then the vertical pass. Doing the same integer arithmetic in the same order gives the
// same bytes as Pillow, not just close ones.
#include <cmath>
#include <cstdint>
#include <vector>

#include "aim/core/error.h"
#include "aim/data/image.h"

namespace aim {

namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

double box_kernel(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

double bilinear_kernel(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

double hamming_kernel(double x) {
  x = std::fabs(x);
  if (x == 0.0) return 1.0;
  if (x >= 1.0) return 0.0;
  x = x * M_PI;
  // Pillow writes the window constants as float literals; keep their float values.
  return std::sin(x) / x * (0.54f + 0.46f * std::cos(x));
}

double bicubic_kernel(double x) {
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double sinc(double x) {
  if (x == 0.0) return 1.0;
  x = x * M_PI;
  return std::sin(x) / x;
}

double lanczos_kernel(double x) {
  if (-3.0 <= x && x < 3.0) return sinc(x) * sinc(x / 3);
  return 0.0;
}

struct Kernel {
  double (*fn)(double);
  double support;
};

Kernel kernel_of(Filter filter) {
  switch (filter) {
    case Filter::kBox:
      return {box_kernel, 0.5};
    case Filter::kBilinear:
      return {bilinear_kernel, 1.0};
    case Filter::kHamming:
      return {hamming_kernel, 1.0};
    case Filter::kBicubic:
      return {bicubic_kernel, 2.0};
    case Filter::kLanczos:
      return {lanczos_kernel, 3.0};
  }
  throw Error("resize: unknown filter");
}

/// Taps of one axis: output i reads in[first[i] .. first[i] + count[i]) with weights
/// weights[i * ksize ...] in 2^22 fixed point.
struct Taps {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weights;
};

Taps precompute_taps(int in_size, int out_size, const Kernel& kernel) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = kernel.support * filterscale;
  Taps t;
  t.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.first.resize(out_size);
  t.count.resize(out_size);
  t.weights.assign(static_cast<size_t>(out_size) * t.ksize, 0);
  const double inv_filterscale = 1.0 / filterscale;
  std::vector<double> w(t.ksize);
  for (int i = 0; i < out_size; ++i) {
    const double center = (i + 0.5) * scale;
    // Truncation toward zero after + 0.5, as Pillow rounds; negatives clip to 0 anyway.
    int lo = static_cast<int>(center - support + 0.5);
    if (lo < 0) lo = 0;
    int hi = static_cast<int>(center + support + 0.5);
    if (hi > in_size) hi = in_size;
    const int n = hi - lo;
    double sum = 0.0;
    for (int x = 0; x < n; ++x) {
      w[x] = kernel.fn((x + lo - center + 0.5) * inv_filterscale);
      sum += w[x];
    }
    int32_t* k = &t.weights[static_cast<size_t>(i) * t.ksize];
    for (int x = 0; x < n; ++x) {
      const double v = sum != 0.0 ? w[x] / sum : w[x];
      const double f = v * (1 << kPrecisionBits);
      k[x] = static_cast<int32_t>(v < 0 ? -0.5 + f : 0.5 + f);
    }
    t.first[i] = lo;
    t.count[i] = n;
  }
  return t;
}

inline uint8_t clip8(int32_t acc) {
  const int32_t v = acc >> kPrecisionBits;  // arithmetic shift: floor, as Pillow's table lookup
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

/// Rows [row0, row0 + out.height) of `in`, resampled along x into `out`.
void horizontal_pass(const Image& in, int row0, const Taps& t, Image& out) {
  for (int y = 0; y < out.height; ++y) {
    const uint8_t* src = in.pixel(0, row0 + y);
    uint8_t* dst = out.pixel(0, y);
    for (int x = 0; x < out.width; ++x) {
      const int32_t* k = &t.weights[static_cast<size_t>(x) * t.ksize];
      const uint8_t* p = src + static_cast<size_t>(t.first[x]) * 3;
      int32_t r = 1 << (kPrecisionBits - 1), g = r, b = r;
      for (int j = 0; j < t.count[x]; ++j) {
        r += p[3 * j + 0] * k[j];
        g += p[3 * j + 1] * k[j];
        b += p[3 * j + 2] * k[j];
      }
      dst[3 * x + 0] = clip8(r);
      dst[3 * x + 1] = clip8(g);
      dst[3 * x + 2] = clip8(b);
    }
  }
}

/// Resampled along y; `row_shift` is subtracted from the taps' first rows (the horizontal pass
/// kept only the rows from that one on).
void vertical_pass(const Image& in, const Taps& t, int row_shift, Image& out) {
  const size_t row_bytes = static_cast<size_t>(in.width) * 3;
  std::vector<int32_t> acc(row_bytes);
  for (int y = 0; y < out.height; ++y) {
    const int32_t* k = &t.weights[static_cast<size_t>(y) * t.ksize];
    std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
    for (int j = 0; j < t.count[y]; ++j) {
      const uint8_t* src = in.pixel(0, t.first[y] - row_shift + j);
      const int32_t kj = k[j];
      for (size_t i = 0; i < row_bytes; ++i) acc[i] += src[i] * kj;
    }
    uint8_t* dst = out.pixel(0, y);
    for (size_t i = 0; i < row_bytes; ++i) dst[i] = clip8(acc[i]);
  }
}

}  // namespace

Filter filter_from_name(const std::string& name, const std::string& key) {
  if (name == "box") return Filter::kBox;
  if (name == "bilinear") return Filter::kBilinear;
  if (name == "hamming") return Filter::kHamming;
  if (name == "bicubic") return Filter::kBicubic;
  if (name == "lanczos") return Filter::kLanczos;
  throw Error(str_cat(key, ": expected one of box, bilinear, hamming, bicubic, lanczos; found '",
                      name, "'"));
}

const char* filter_name(Filter filter) {
  switch (filter) {
    case Filter::kBox:
      return "box";
    case Filter::kBilinear:
      return "bilinear";
    case Filter::kHamming:
      return "hamming";
    case Filter::kBicubic:
      return "bicubic";
    case Filter::kLanczos:
      return "lanczos";
  }
  return "?";
}

Image resize(const Image& image, int width, int height, Filter filter) {
  AIM_CHECK(width > 0 && height > 0, "resize: target size must be positive, found ", width, "x",
            height);
  AIM_CHECK(!image.empty(), "resize: source image is empty (", image.width, "x", image.height, ")");
  if (width == image.width && height == image.height) return image;
  const Kernel kernel = kernel_of(filter);
  const bool need_horizontal = width != image.width;
  const bool need_vertical = height != image.height;

  const Taps vt = precompute_taps(image.height, height, kernel);
  if (!need_horizontal) {
    Image out(width, height);
    vertical_pass(image, vt, 0, out);
    return out;
  }
  const Taps ht = precompute_taps(image.width, width, kernel);
  // Rows the vertical pass reads: from the first tap of output row 0 to the last of the last.
  const int row_first = vt.first.front();
  const int row_last = vt.first.back() + vt.count.back();
  Image tmp(width, row_last - row_first);
  horizontal_pass(image, row_first, ht, tmp);
  if (!need_vertical) return tmp;
  Image out(width, height);
  vertical_pass(tmp, vt, row_first, out);
  return out;
}

}  // namespace aim
