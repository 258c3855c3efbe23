// Batched FID Inception features for users (aim eval): weights once, images in batches,
// features float32 on the CPU.
#include <ATen/Context.h>
#include <torch/cuda.h>

#include <algorithm>
#include <optional>

#include "aim/core/error.h"
#include "aim/eval/inception.h"

namespace aim::eval {

namespace {

/// TF32 off for cuBLAS and cuDNN while in scope, the previous settings restored after: FID
/// features with TF32 differ by orders of magnitude more than float32 rounding (README).
class NoTf32Scope {
 public:
  NoTf32Scope() {
    auto& ctx = at::globalContext();
    cublas_ = ctx.allowTF32CuBLAS();
    cudnn_ = ctx.allowTF32CuDNN();
    ctx.setAllowTF32CuBLAS(false);
    ctx.setAllowTF32CuDNN(false);
  }
  ~NoTf32Scope() {
    auto& ctx = at::globalContext();
    ctx.setAllowTF32CuBLAS(cublas_);
    ctx.setAllowTF32CuDNN(cudnn_);
  }
  NoTf32Scope(const NoTf32Scope&) = delete;
  NoTf32Scope& operator=(const NoTf32Scope&) = delete;

 private:
  bool cublas_ = true, cudnn_ = true;
};

torch::Tensor rows_out(int64_t n, int64_t dim) { return torch::empty({n, dim}, torch::kFloat); }

}  // namespace

InceptionExtractor::InceptionExtractor(const std::string& weights_path, torch::Device device,
                                       int64_t batch_size, InceptionPreprocess mode,
                                       torch::ScalarType dtype)
    : device_(device), batch_size_(batch_size), mode_(mode), dtype_(dtype) {
  AIM_CHECK(batch_size >= 1, "Inception batch size: expected >= 1, found ", batch_size);
  AIM_CHECK(dtype == torch::kFloat || dtype == torch::kDouble || dtype == torch::kBFloat16,
            "Inception compute dtype: expected float32, float64 or bfloat16, found ", dtype);
  AIM_CHECK(dtype != torch::kBFloat16 || device.is_cuda(),
            "Inception compute dtype bfloat16 is for CUDA devices, found device ", device.str(),
            " ---> HINT: use float32 on the CPU");
  AIM_CHECK(!device.is_cuda() || torch::cuda::is_available(), "Inception device ", device.str(),
            ": no CUDA device is visible");
  model_ = FidInceptionV3();
  load_fid_inception(model_, weights_path);
  model_->eval();
  model_->to(device_, dtype_);
  if (device_.is_cuda()) {
    torch::NoGradGuard no_grad;
    for (auto& p : model_->parameters())
      if (p.dim() == 4) p.set_data(p.contiguous(at::MemoryFormat::ChannelsLast));
  }
}

InceptionFeatures InceptionExtractor::extract(const torch::Tensor& images_uint8,
                                              const ProgressFn& progress, bool all_pools) {
  AIM_CHECK(images_uint8.defined() && images_uint8.dim() == 4 && images_uint8.size(3) == 3 &&
                images_uint8.scalar_type() == torch::kUInt8,
            "Inception input: expected uint8 images [N, H, W, 3], found ",
            images_uint8.defined() ? c10::toString(images_uint8.scalar_type()) : "nothing", " ",
            images_uint8.defined() ? images_uint8.sizes() : torch::IntArrayRef{});
  const int64_t n = images_uint8.size(0);
  InceptionFeatures out;
  out.pool3 = rows_out(n, 2048);
  out.spatial = rows_out(n, 17 * 17 * FidInceptionV3Impl::kSpatialChannels);
  out.logits = rows_out(n, FidInceptionV3Impl::kNumClasses);
  out.logits_unbiased = rows_out(n, FidInceptionV3Impl::kNumClasses);
  if (all_pools) {
    out.pool_64 = rows_out(n, 64);
    out.pool_192 = rows_out(n, 192);
    out.pool_768 = rows_out(n, 768);
  }
  std::optional<NoTf32Scope> no_tf32;
  if (device_.is_cuda()) no_tf32.emplace();
  torch::NoGradGuard no_grad;
  const auto store = [](torch::Tensor& dst, const torch::Tensor& src, int64_t begin) {
    dst.slice(0, begin, begin + src.size(0)).copy_(src.to(torch::kCPU, torch::kFloat));
  };
  for (int64_t begin = 0; begin < n; begin += batch_size_) {
    const int64_t end = std::min(n, begin + batch_size_);
    auto images = images_uint8.slice(0, begin, end).to(device_);
    auto x = preprocess_for_inception(images, mode_).to(dtype_);  // [B, 3, 299, 299]
    if (device_.is_cuda()) x = x.contiguous(at::MemoryFormat::ChannelsLast);
    const auto f = model_->forward(x, all_pools);
    store(out.pool3, f.pool3, begin);
    store(out.spatial, f.spatial, begin);
    store(out.logits, f.logits, begin);
    store(out.logits_unbiased, f.logits_unbiased, begin);
    if (all_pools) {
      store(out.pool_64, f.pool_64, begin);
      store(out.pool_192, f.pool_192, begin);
      store(out.pool_768, f.pool_768, begin);
    }
    if (progress) progress(end, n);
  }
  return out;
}

}  // namespace aim::eval
