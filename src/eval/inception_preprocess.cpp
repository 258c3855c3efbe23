// Images -> FID Inception input: ADM's TF1 graph and pytorch-fid's pipeline (README
// "Preprocessing"). Every step is float32 and ordered as the originals order it, so the CPU
// result equals theirs to the last bit or close to it.
#include <cmath>
#include <vector>

#include "aim/core/error.h"
#include "aim/eval/inception.h"

namespace aim::eval {

namespace {

/// Source rows (or columns) and weights of TF1's legacy (no half-pixel) bilinear grid.
struct Tf1Axis {
  torch::Tensor lo, hi;  // [out] int64
  torch::Tensor frac;    // [out] float32
};

Tf1Axis tf1_axis(int64_t in, int64_t out, const torch::Device& device) {
  // TF computes the scale and each source coordinate in float; scalar float code here, so no
  // fused multiply-add can change a rounding.
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  std::vector<int64_t> lo(out), hi(out);
  std::vector<float> frac(out);
  for (int64_t o = 0; o < out; ++o) {
    const float s = static_cast<float>(o) * scale;
    const float fl = std::floor(s);
    lo[o] = static_cast<int64_t>(fl);
    hi[o] = std::min<int64_t>(lo[o] + 1, in - 1);
    frac[o] = s - fl;
  }
  auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  auto f32 = torch::TensorOptions().dtype(torch::kFloat);
  return {torch::tensor(lo, i64).to(device), torch::tensor(hi, i64).to(device),
          torch::tensor(frac, f32).to(device)};
}

void check_images(const torch::Tensor& images) {
  AIM_CHECK(images.defined() && images.dim() == 4 && images.size(3) == 3,
            "Inception input: expected images [N, H, W, 3] (RGB, NHWC), found ",
            images.defined() ? images.sizes() : torch::IntArrayRef{});
  AIM_CHECK(images.scalar_type() == torch::kUInt8,
            "Inception input: expected uint8 images in [0, 255], found dtype ",
            images.scalar_type());
  AIM_CHECK(images.size(1) >= 1 && images.size(2) >= 1,
            "Inception input: images of size ", images.size(1), "x", images.size(2));
}

}  // namespace

std::string to_string(InceptionPreprocess mode) {
  return mode == InceptionPreprocess::kAdmTf1 ? "adm_tf1" : "pytorch_fid";
}

InceptionPreprocess inception_preprocess_from_string(const std::string& name) {
  if (name == "adm_tf1") return InceptionPreprocess::kAdmTf1;
  if (name == "pytorch_fid") return InceptionPreprocess::kPytorchFid;
  throw Error(str_cat("Inception preprocessing '", name,
                      "': expected 'adm_tf1' (ADM's evaluator) or 'pytorch_fid'"));
}

torch::Tensor resize_bilinear_tf1(const torch::Tensor& x, int64_t out_h, int64_t out_w) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kFloat,
              "resize_bilinear_tf1: expected float32 [N, C, H, W], got ", x.scalar_type(), " ",
              x.sizes());
  TORCH_CHECK(out_h >= 1 && out_w >= 1 && x.size(2) >= 1 && x.size(3) >= 1,
              "resize_bilinear_tf1: sizes ", x.sizes(), " -> ", out_h, "x", out_w);
  const auto ys = tf1_axis(x.size(2), out_h, x.device());
  const auto xs = tf1_axis(x.size(3), out_w, x.device());
  const auto fx = xs.frac.view({1, 1, 1, out_w});
  const auto fy = ys.frac.view({1, 1, out_h, 1});
  // Separate sub, mul and add kernels: each step rounds to float32 as TF's does (no lerp, whose
  // formula differs, and no fusion).
  const auto along_w = [&](const torch::Tensor& rows) {  // [N, C, out_h, W] -> [N, C, out_h, out_w]
    auto left = rows.index_select(3, xs.lo);
    auto right = rows.index_select(3, xs.hi);
    return left + (right - left) * fx;
  };
  auto top = along_w(x.index_select(2, ys.lo));
  auto bottom = along_w(x.index_select(2, ys.hi));
  return top + (bottom - top) * fy;
}

torch::Tensor preprocess_for_inception(const torch::Tensor& images_uint8, InceptionPreprocess mode) {
  check_images(images_uint8);
  constexpr int64_t kSize = FidInceptionV3Impl::kInputSize;
  // [N, H, W, 3] -> [N, 3, H, W], contiguous as ToTensor() leaves it (the CPU interpolate
  // kernels differ between memory formats).
  auto x = images_uint8.permute({0, 3, 1, 2}).to(torch::kFloat).contiguous();
  if (mode == InceptionPreprocess::kAdmTf1) {
    x = resize_bilinear_tf1(x, kSize, kSize);
    return x.sub(128.0).div(128.0);
  }
  // A tensor divisor keeps the division a true division on every device (CUDA turns division
  // by a host scalar into a multiplication by its reciprocal).
  x = x.div(torch::full({}, 255.0f, x.options()));
  namespace F = torch::nn::functional;
  x = F::interpolate(x, F::InterpolateFuncOptions()
                            .size(std::vector<int64_t>{kSize, kSize})
                            .mode(torch::kBilinear)
                            .align_corners(false));
  return x.mul(2.0).sub(1.0);
}

}  // namespace aim::eval
