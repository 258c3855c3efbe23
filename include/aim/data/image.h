#pragma once
// Images in and out.
//
// - Decoding (stb_image) of JPEG, PNG and BMP to 8-bit RGB, matching what PIL's
//   `Image.open(f).convert('RGB')` gives: alpha dropped, 16-bit samples reduced as PIL does,
//   Adobe CMYK/YCCK JPEGs converted, truncated files refused.
// - Resampling identical to Pillow's `Image.resize` (same kernels, coordinates, fixed-point
//   arithmetic and two passes), so preprocessing matches the Python pipelines pixel for pixel.
// - The preprocessing of ADM / LlamaGen (`center_crop_arr`, ten-crop code extraction) and of
//   AiM's official training set (short side to 1.125x with LANCZOS, random / center crop).
// - Tensor conversion ([-1, 1] floats in, the ADM uint8 quantisation out), PNG writing and
//   captioned grids.
#include <torch/types.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace aim {

/// 8-bit RGB image, row-major: rgb[(y * width + x) * 3 + c].  // [H, W, 3]
struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;

  Image() = default;
  /// Black image of the given size; throws aim::Error on a negative or overflowing size.
  Image(int width, int height);
  /// Takes `rgb` as the pixels; throws aim::Error unless it holds width * height * 3 bytes.
  Image(int width, int height, std::vector<uint8_t> rgb);
  bool empty() const { return width == 0 || height == 0; }
  uint8_t* pixel(int x, int y) { return rgb.data() + (static_cast<size_t>(y) * width + x) * 3; }
  const uint8_t* pixel(int x, int y) const {
    return rgb.data() + (static_cast<size_t>(y) * width + x) * 3;
  }
};

// ------------------------------------------------------------------------------------ decoding

/// Reads and decodes an image file to RGB. Throws aim::Error naming the file and the reason
/// (cannot open, unknown format, corrupt data with stb's reason, truncated stream, more pixels
/// than PIL's decompression-bomb limit). EXIF orientation is ignored, as PIL's open() does.
Image decode_image(const std::string& path);

/// Decodes an encoded image held in memory; `what` names it in error messages.
Image decode_image_memory(const uint8_t* data, size_t size, const std::string& what);

// ---------------------------------------------------------------------------------- resampling

/// Pillow's resampling filters (NEAREST is not offered: it is a different algorithm).
enum class Filter { kBox, kBilinear, kHamming, kBicubic, kLanczos };

/// "box" | "bilinear" | "hamming" | "bicubic" | "lanczos"; throws aim::Error naming `key`.
Filter filter_from_name(const std::string& name, const std::string& key = "filter");
const char* filter_name(Filter filter);

/// Resizes to width x height exactly as Pillow's `Image.resize((width, height), filter)` does on
/// an RGB image: antialiased kernels, fixed-point taps, horizontal pass then vertical, uint8
/// in between. The same size returns a copy.
Image resize(const Image& image, int width, int height, Filter filter);

// ------------------------------------------------------------------------------- geometry

/// The width x height window at (x, y); throws aim::Error unless it lies inside the image.
Image crop(const Image& image, int x, int y, int width, int height);
/// Mirror left-right.
Image hflip(const Image& image);
/// torchvision `CenterCrop(size)`: offsets round((H - size) / 2) with Python's half-to-even
/// rounding. The image must be at least size x size (torchvision would pad; we throw).
Image center_crop(const Image& image, int size);
/// torchvision `FiveCrop(size)`: top-left, top-right, bottom-left, bottom-right, center.
std::vector<Image> five_crop(const Image& image, int size);
/// torchvision `TenCrop(size)`: five_crop(image) then five_crop(hflip(image)).
std::vector<Image> ten_crop(const Image& image, int size);

// ---------------------------------------------------------------------------- preprocessing

/// ADM's `center_crop_arr` (guided-diffusion, reused by LlamaGen): BOX-halve while the short side
/// is >= 2 * image_size, BICUBIC-resize the short side to image_size (sizes rounded half to
/// even like Python's round), then crop the center with floor offsets.
/// Returns image_size x image_size.
Image center_crop_arr(const Image& image, int image_size);

/// torchvision `Resize(target)` on a PIL image: the short side becomes `target`, the long side
/// int(target * long / short); an image already at that size is returned unchanged.
Image resize_short_side(const Image& image, int target, Filter filter);

/// torchvision `RandomCrop(size)`: top drawn uniformly in [0, H - size], then left in
/// [0, W - size], each as rng() % (range); no draw when the image is exactly size x size.
Image random_crop(const Image& image, int size, std::mt19937_64& rng);

/// LlamaGen's tokenizer-training crop (`dataset/augmentation.py` random_crop_arr, as vq_train.py
/// calls it): a short side drawn uniformly in [ceil(size / max_crop_frac), ceil(size /
/// min_crop_frac)], BOX halving while the short side is at least twice that, BICUBIC to it
/// (rounded half to even, as Python's round), then a crop at a uniform row, then column.
Image random_crop_arr(const Image& image, int image_size, std::mt19937_64& rng, double min_crop_frac = 0.8,
                      double max_crop_frac = 1.0);

/// AiM's official training transform (`util/data.py` build_dataset, as train_stage2.py calls it):
/// Resize(round(mid_ratio * image_size), LANCZOS) on the short side, then RandomCrop(image_size).
/// No flip (hflip=False there). Returns image_size x image_size.
Image aim_train_transform(const Image& image, int image_size, std::mt19937_64& rng,
                          double mid_ratio = 1.125);
/// AiM's validation transform: the same resize, then CenterCrop(image_size).
Image aim_eval_transform(const Image& image, int image_size, double mid_ratio = 1.125);

/// LlamaGen's `extract_codes_c2i.py --ten-crop`: center_crop_arr to int(image_size * crop_range)
/// then TenCrop(image_size). Returns 10 images in torchvision's order.
std::vector<Image> llamagen_ten_crop(const Image& image, int image_size, double crop_range = 1.1);

// ---------------------------------------------------------------------------------- tensors

/// ToTensor + Normalize(0.5, 0.5): float32 (x / 255 - 0.5) / 0.5.  // [3, H, W] in [-1, 1]
torch::Tensor to_tensor(const Image& image);
/// Stack of same-size images.  // [B, 3, H, W] float32 in [-1, 1]
torch::Tensor to_tensor(const std::vector<Image>& images);

/// ADM / AiM sample quantisation clamp(127.5 x + 128, 0, 255) truncated to uint8, computed in
/// float32 on x's device.  // [B, 3, H, W] any float dtype -> [B, H, W, 3] uint8 on CPU
torch::Tensor to_uint8_hwc(const torch::Tensor& images);
/// The same quantisation for one image.  // [3, H, W] -> Image
Image from_tensor(const torch::Tensor& chw);
/// One Image per batch entry.  // [B, 3, H, W] -> B images
std::vector<Image> from_tensor_batch(const torch::Tensor& bchw);

// ---------------------------------------------------------------------------------- writing

/// PNG bytes of the image (stb_image_write).
std::vector<uint8_t> encode_png(const Image& image);
/// Writes a PNG atomically (a temporary file beside it, then rename); errors name the file.
void write_png(const std::string& path, const Image& image);

/// Pixel size of the built-in font, times `scale`: 5x7 glyphs plus a descender row (5x8), in a
/// 6x9 cell (one column and one row of spacing).
constexpr int kGlyphWidth = 5;
constexpr int kGlyphHeight = 8;
constexpr int kCellWidth = 6;
constexpr int kCellHeight = 9;

/// Width in pixels of `text` drawn at `scale`.
int text_width(const std::string& text, int scale);
/// Draws printable ASCII with the built-in font; other bytes draw as '?'. Clipped to the image.
/// (x, y) is the top-left of the first cell.
void draw_text(Image& image, int x, int y, const std::string& text, std::array<uint8_t, 3> color,
               int scale = 1);

/// torchvision `make_grid` layout of same-size images: nrow per row, `padding` pixels around
/// and between tiles in pad_color. With captions (one per image), a strip of text under each
/// tile, in black or white whichever reads better on pad_color, at scale 2 for tiles >= 256
/// wide, clipped to the tile width.
Image make_grid(const std::vector<Image>& images, int nrow, int padding,
                std::array<uint8_t, 3> pad_color, const std::vector<std::string>& captions = {});

}  // namespace aim
