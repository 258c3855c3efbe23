// Image geometry, the ADM / LlamaGen / AiM preprocessing and tensor conversion.
#include "aim/data/image.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "aim/core/error.h"

namespace aim {

namespace {

/// Python 3's round() on a double: nearest, ties to even.
int64_t round_half_even(double v) {
  const double f = std::floor(v);
  const double diff = v - f;
  int64_t r = static_cast<int64_t>(f);
  if (diff > 0.5 || (diff == 0.5 && (r % 2 != 0))) ++r;
  return r;
}

/// Uniform draw in [0, n) from the 64-bit Mersenne twister (whose output is fixed by the
/// standard, unlike std::uniform_int_distribution's mapping).
int draw_below(std::mt19937_64& rng, int n) {
  return static_cast<int>(rng() % static_cast<uint64_t>(n));
}

/// torchvision center_crop's offset: int(round((size - crop) / 2.0)).
int center_offset(int size, int crop) {
  return static_cast<int>(round_half_even((size - crop) / 2.0));
}

}  // namespace

Image::Image(int w, int h) : width(w), height(h) {
  AIM_CHECK(w >= 0 && h >= 0, "image size must be non-negative, found ", w, "x", h);
  AIM_CHECK(static_cast<uint64_t>(w) * static_cast<uint64_t>(h) <= (uint64_t{1} << 40),
            "image size ", w, "x", h, " is too large");
  rgb.assign(static_cast<size_t>(w) * h * 3, 0);
}

Image::Image(int w, int h, std::vector<uint8_t> pixels)
    : width(w), height(h), rgb(std::move(pixels)) {
  AIM_CHECK(w >= 0 && h >= 0 && rgb.size() == static_cast<size_t>(w) * h * 3, "image of ", w, "x",
            h, " expects ", static_cast<int64_t>(w) * h * 3, " bytes (width * height * 3), found ",
            rgb.size());
}

// ---------------------------------------------------------------------------------- geometry

Image crop(const Image& image, int x, int y, int width, int height) {
  AIM_CHECK(width >= 0 && height >= 0 && x >= 0 && y >= 0 &&
                static_cast<int64_t>(x) + width <= image.width &&
                static_cast<int64_t>(y) + height <= image.height,
            "crop: window ", width, "x", height, " at (", x, ", ", y, ") must lie inside the ",
            image.width, "x", image.height, " image");
  Image out(width, height);
  for (int r = 0; r < height; ++r) {
    std::memcpy(out.pixel(0, r), image.pixel(x, y + r), static_cast<size_t>(width) * 3);
  }
  return out;
}

Image hflip(const Image& image) {
  Image out(image.width, image.height);
  for (int y = 0; y < image.height; ++y) {
    const uint8_t* src = image.pixel(0, y);
    uint8_t* dst = out.pixel(0, y);
    for (int x = 0; x < image.width; ++x) {
      std::memcpy(dst + 3 * x, src + 3 * (image.width - 1 - x), 3);
    }
  }
  return out;
}

Image center_crop(const Image& image, int size) {
  AIM_CHECK(size > 0 && size <= image.width && size <= image.height, "center_crop: crop ", size,
            "x", size, " expected to fit inside the ", image.width, "x", image.height, " image");
  return crop(image, center_offset(image.width, size), center_offset(image.height, size), size,
              size);
}

std::vector<Image> five_crop(const Image& image, int size) {
  AIM_CHECK(size > 0 && size <= image.width && size <= image.height, "five_crop: crop ", size, "x",
            size, " expected to fit inside the ", image.width, "x", image.height, " image");
  const int right = image.width - size, bottom = image.height - size;
  std::vector<Image> out;
  out.reserve(5);
  out.push_back(crop(image, 0, 0, size, size));
  out.push_back(crop(image, right, 0, size, size));
  out.push_back(crop(image, 0, bottom, size, size));
  out.push_back(crop(image, right, bottom, size, size));
  out.push_back(center_crop(image, size));
  return out;
}

std::vector<Image> ten_crop(const Image& image, int size) {
  std::vector<Image> out = five_crop(image, size);
  std::vector<Image> flipped = five_crop(hflip(image), size);
  for (auto& im : flipped) out.push_back(std::move(im));
  return out;
}

// ---------------------------------------------------------------------------- preprocessing

namespace {
/// ADM's resizing (center_crop_arr, random_crop_arr): BOX halving while the short side is at
/// least twice `smaller`, then BICUBIC so the short side is `smaller` (sizes rounded half to even).
Image resize_arr(const Image& image, int smaller) {
  Image im = image;
  while (std::min(im.width, im.height) >= 2 * smaller) im = resize(im, im.width / 2, im.height / 2, Filter::kBox);
  const double scale = static_cast<double>(smaller) / std::min(im.width, im.height);
  const int w = static_cast<int>(round_half_even(im.width * scale));
  const int h = static_cast<int>(round_half_even(im.height * scale));
  return resize(im, w, h, Filter::kBicubic);
}
}  // namespace

Image center_crop_arr(const Image& image, int image_size) {
  AIM_CHECK(image_size > 0, "center_crop_arr: image_size must be positive, found ", image_size);
  AIM_CHECK(!image.empty(), "center_crop_arr: image is empty (", image.width, "x", image.height,
            ")");
  const Image im = resize_arr(image, image_size);
  return crop(im, (im.width - image_size) / 2, (im.height - image_size) / 2, image_size, image_size);
}

Image resize_short_side(const Image& image, int target, Filter filter) {
  AIM_CHECK(target > 0, "resize_short_side: target must be positive, found ", target);
  AIM_CHECK(!image.empty(), "resize_short_side: image is empty (", image.width, "x", image.height,
            ")");
  const int w = image.width, h = image.height;
  const int short_side = std::min(w, h), long_side = std::max(w, h);
  // Python: int(size * long / short), a true division then truncation.
  const int new_long = static_cast<int>(static_cast<double>(int64_t{target} * long_side) /
                                        static_cast<double>(short_side));
  const int new_w = w <= h ? target : new_long;
  const int new_h = w <= h ? new_long : target;
  if (new_w == w && new_h == h) return image;
  return resize(image, new_w, new_h, filter);
}

Image random_crop(const Image& image, int size, std::mt19937_64& rng) {
  AIM_CHECK(size > 0 && size <= image.width && size <= image.height, "random_crop: crop ", size,
            "x", size, " expected to fit inside the ", image.width, "x", image.height, " image");
  if (image.width == size && image.height == size) return image;
  const int top = draw_below(rng, image.height - size + 1);
  const int left = draw_below(rng, image.width - size + 1);
  return crop(image, left, top, size, size);
}

Image random_crop_arr(const Image& image, int image_size, std::mt19937_64& rng, double min_crop_frac,
                      double max_crop_frac) {
  AIM_CHECK(image_size > 0 && min_crop_frac > 0 && min_crop_frac <= max_crop_frac && max_crop_frac <= 1.0,
            "random_crop_arr: expected image_size > 0 and 0 < min_crop_frac <= max_crop_frac <= 1, found ",
            image_size, ", ", min_crop_frac, ", ", max_crop_frac);
  AIM_CHECK(!image.empty(), "random_crop_arr: image is empty (", image.width, "x", image.height, ")");
  const int lo = static_cast<int>(std::ceil(image_size / max_crop_frac));
  const int hi = static_cast<int>(std::ceil(image_size / min_crop_frac));
  const Image im = resize_arr(image, lo + draw_below(rng, hi - lo + 1));
  const int top = draw_below(rng, im.height - image_size + 1);
  const int left = draw_below(rng, im.width - image_size + 1);
  return crop(im, left, top, image_size, image_size);
}

namespace {
int aim_mid_size(int image_size, double mid_ratio) {
  AIM_CHECK(image_size > 0 && mid_ratio >= 1.0, "AiM transform: expected image_size > 0 and ",
            "mid_ratio >= 1, found ", image_size, " and ", mid_ratio);
  return static_cast<int>(round_half_even(mid_ratio * image_size));
}
}  // namespace

Image aim_train_transform(const Image& image, int image_size, std::mt19937_64& rng,
                          double mid_ratio) {
  const Image mid = resize_short_side(image, aim_mid_size(image_size, mid_ratio), Filter::kLanczos);
  return random_crop(mid, image_size, rng);
}

Image aim_eval_transform(const Image& image, int image_size, double mid_ratio) {
  const Image mid = resize_short_side(image, aim_mid_size(image_size, mid_ratio), Filter::kLanczos);
  return center_crop(mid, image_size);
}

std::vector<Image> llamagen_ten_crop(const Image& image, int image_size, double crop_range) {
  AIM_CHECK(image_size > 0 && std::isfinite(crop_range) && crop_range >= 1.0 && image_size * crop_range < 65536.0,
            "llamagen_ten_crop: expected image_size > 0 and crop_range >= 1 with image_size x crop_range < 65536, "
            "found ", image_size, " and ", crop_range);
  // Python: int(image_size * crop_range), truncation (256 * 1.1 -> 281).
  const int crop_size = static_cast<int>(image_size * crop_range);
  return ten_crop(center_crop_arr(image, crop_size), image_size);
}

// ---------------------------------------------------------------------------------- tensors

torch::Tensor to_tensor(const Image& image) {
  AIM_CHECK(static_cast<int64_t>(image.rgb.size()) ==
                static_cast<int64_t>(image.width) * image.height * 3,
            "to_tensor: image of ", image.width, "x", image.height, " holds ", image.rgb.size(),
            " bytes, expected ", static_cast<int64_t>(image.width) * image.height * 3);
  auto hwc = torch::from_blob(const_cast<uint8_t*>(image.rgb.data()),
                              {image.height, image.width, 3}, torch::kUInt8);
  // Same float32 operations as ToTensor (div 255) and Normalize (sub 0.5, div 0.5).
  return hwc.permute({2, 0, 1}).to(torch::kFloat).div(255).sub(0.5).div(0.5).contiguous();
}

torch::Tensor to_tensor(const std::vector<Image>& images) {
  AIM_CHECK(!images.empty(), "to_tensor: no images");
  std::vector<torch::Tensor> ts;
  ts.reserve(images.size());
  for (size_t i = 0; i < images.size(); ++i) {
    AIM_CHECK(images[i].width == images[0].width && images[i].height == images[0].height,
              "to_tensor: image ", i, " is ", images[i].width, "x", images[i].height, ", expected ",
              images[0].width, "x", images[0].height, " like image 0");
    ts.push_back(to_tensor(images[i]));
  }
  return torch::stack(ts);
}

torch::Tensor to_uint8_hwc(const torch::Tensor& images) {
  TORCH_CHECK(images.dim() == 4 && images.size(1) == 3,
              "to_uint8_hwc: expected images [B, 3, H, W], found ", images.sizes());
  TORCH_CHECK(images.is_floating_point(), "to_uint8_hwc: expected a floating tensor, found ",
              images.scalar_type());
  auto x = images.detach().to(torch::kFloat);
  // torch.clamp(127.5 * x + 128.0, 0, 255).to(uint8): two rounded float ops, then truncation.
  auto q = x.mul(127.5).add(128.0).clamp(0, 255).to(torch::kUInt8);
  return q.permute({0, 2, 3, 1}).to(torch::kCPU).contiguous();
}

std::vector<Image> from_tensor_batch(const torch::Tensor& bchw) {
  auto q = to_uint8_hwc(bchw);  // [B, H, W, 3]
  const int64_t b = q.size(0);
  std::vector<Image> out;
  out.reserve(b);
  for (int64_t i = 0; i < b; ++i) {
    Image im(static_cast<int>(q.size(2)), static_cast<int>(q.size(1)));
    std::memcpy(im.rgb.data(), q[i].data_ptr<uint8_t>(), im.rgb.size());
    out.push_back(std::move(im));
  }
  return out;
}

Image from_tensor(const torch::Tensor& chw) {
  TORCH_CHECK(chw.dim() == 3 && chw.size(0) == 3,
              "from_tensor: expected an image [3, H, W], found ", chw.sizes());
  return std::move(from_tensor_batch(chw.unsqueeze(0))[0]);
}

}  // namespace aim
