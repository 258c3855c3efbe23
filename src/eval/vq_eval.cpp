#include "aim/eval/vq_eval.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "aim/core/error.h"
#include "aim/core/progress.h"
#include "aim/data/image.h"
#include "aim/eval/lpips.h"
#include "aim/train/vq_losses.h"

namespace aim {

namespace fs = std::filesystem;

torch::Tensor ssim_llamagen(const torch::Tensor& a, const torch::Tensor& b) {
  AIM_CHECK(a.dim() == 4 && a.sizes() == b.sizes() && a.size(3) == 3, "ssim_llamagen: expected two uint8 ",
            "[N, H, W, 3] batches of one shape, found ", a.sizes(), " and ", b.sizes());
  constexpr int64_t kWin = 7;
  const double np_ = kWin * kWin, cov_norm = np_ / (np_ - 1.0), range = 2.0;
  const double c1 = (0.01 * range) * (0.01 * range), c2 = (0.03 * range) * (0.03 * range);
  auto unit = [](const torch::Tensor& t) { return t.permute({0, 3, 1, 2}).to(torch::kDouble) / 255.0; };
  const auto x = unit(a), y = unit(b);
  // Mean filters evaluated only where the window fits: skimage crops (win - 1) / 2 pixels on each
  // side before averaging the map, so its border handling never reaches the result.
  auto mean = [](const torch::Tensor& t) { return torch::avg_pool2d(t, {kWin, kWin}, {1, 1}); };
  const auto ux = mean(x), uy = mean(y);
  const auto vx = cov_norm * (mean(x * x) - ux * ux);
  const auto vy = cov_norm * (mean(y * y) - uy * uy);
  const auto vxy = cov_norm * (mean(x * y) - ux * uy);
  const auto s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
  return s.mean({1, 2, 3});
}

namespace {

/// Where --save-recon writes each selected image's reconstruction: <class>/<its path under the
/// class folder>, as .png (an ImageFolder tree pairing each reconstruction with its original).
/// Two sources that would share a name (x.jpg and x.png) keep their extension: x.jpg.png.
std::vector<fs::path> recon_paths(const ImageList& list, const std::vector<int64_t>& selected, const fs::path& dir) {
  std::vector<fs::path> rel(selected.size());
  std::map<fs::path, int> uses;
  for (size_t i = 0; i < selected.size(); ++i) {
    const auto& e = list.entries[static_cast<size_t>(selected[i])];
    const std::string cls = list.classes[static_cast<size_t>(e.label)];
    fs::path under = fs::path(e.path).lexically_relative(fs::path(list.source) / cls);
    if (under.empty() || *under.begin() == "..") under = fs::path(e.path).filename();
    rel[i] = fs::path(cls) / under;
    ++uses[fs::path(rel[i]).replace_extension(".png")];
  }
  std::vector<fs::path> out(selected.size());
  for (size_t i = 0; i < selected.size(); ++i) {
    const fs::path png = fs::path(rel[i]).replace_extension(".png");
    out[i] = dir / (uses[png] > 1 ? fs::path(rel[i].string() + ".png") : png);
  }
  return out;
}

/// Refuses a --save-recon folder holding PNGs this run would not write: an earlier run's (another
/// --max-images, other data), which a tool scoring the folder would take for this run's.
void check_recon_dir(const fs::path& dir, const std::vector<fs::path>& ours) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return;
  AIM_CHECK(fs::is_directory(dir, ec), "--save-recon ", dir.string(), ": exists and is not a folder");
  std::set<fs::path> mine(ours.begin(), ours.end());
  std::vector<std::string> stale;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    std::string ext = it->path().extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
    if (it->is_regular_file(ec) && ext == ".png" && !mine.count(it->path())) stale.push_back(it->path().string());
  }
  if (stale.empty()) return;
  std::sort(stale.begin(), stale.end());
  throw Error(str_cat("--save-recon ", dir.string(), ": holds ", stale.size(), " PNG", stale.size() == 1 ? "" : "s",
                      " this run would not write (", stale.front(), stale.size() > 1 ? ", ..." : "",
                      "): an earlier run's, which would be scored with this run's\n---> HINT: remove them, or choose "
                      "another --save-recon folder"));
}

}  // namespace

TokenizerEval evaluate_tokenizer(VqModel& model, const ImageList& list, const TokenizerEvalOptions& o) {
  AIM_CHECK(o.batch_size >= 1, "--batch-size must be >= 1, found ", o.batch_size);
  const int64_t total = static_cast<int64_t>(list.entries.size());
  const int64_t n = o.max_images > 0 ? std::min(o.max_images, total) : total;
  AIM_CHECK(n > 0, str_cat(list.source, ": no images"));
  const int64_t k = model->config.codebook_size;
  const int64_t f = model->config.downsample();
  AIM_CHECK(o.image_size % f == 0, str_cat("--image-size ", o.image_size, ": expected a multiple of the tokenizer's "
                                           "downsampling factor ", f));
  const int64_t side = o.image_size / f;
  auto counts = torch::zeros({k}, torch::kLong);
  const bool with_ssim = o.image_size >= 11;  // train::ssim's default window must fit
  const bool with_llamagen_ssim = o.image_size >= 7;
  double psnr_sum = 0.0, psnr_min = 1e9, mse_sum = 0.0, ssim_sum = 0.0, llamagen_ssim_sum = 0.0;
  int64_t upscaled = 0;
  eval::Lpips lpips{nullptr};
  double lpips_sum = 0.0;
  if (!o.lpips_weights.empty()) {
    AIM_CHECK(o.image_size >= eval::LpipsImpl::kMinSize, "--lpips: LPIPS needs images of at least ",
              eval::LpipsImpl::kMinSize, " px (VGG16 pools four times), found --image-size ", o.image_size);
    lpips = eval::Lpips();
    try {
      eval::load_lpips(lpips, o.lpips_weights);
    } catch (const Error& e) {
      throw Error(str_cat("--lpips: ", e.what()));
    }
    lpips->to(o.device);
    lpips->eval();
  }
  // max_images spread evenly over the list.
  std::vector<int64_t> selected(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) selected[static_cast<size_t>(i)] = n == total ? i : i * total / n;
  std::vector<fs::path> recon;
  if (!o.recon_dir.empty()) {
    recon = recon_paths(list, selected, o.recon_dir);
    check_recon_dir(o.recon_dir, recon);
  }
  model->eval();
  Progress progress("eval-vq", n, "img", o.progress);
  torch::NoGradGuard no_grad;
  int64_t scored = 0, skipped = 0;
  std::vector<std::string> skipped_examples;
  for (int64_t start = 0; start < n; start += o.batch_size) {
    const int64_t end = std::min(n, start + o.batch_size);
    std::vector<Image> originals;
    std::vector<int64_t> positions;  // into `selected`
    for (int64_t i = start; i < end; ++i) {
      const auto& path = list.entries[static_cast<size_t>(selected[static_cast<size_t>(i)])].path;
      Image image;
      try {
        image = decode_image(path);
      } catch (const Error& e) {
        // Skipped and counted, as extract-codes does: one damaged file does not end the run.
        ++skipped;
        if (skipped_examples.size() < 3) skipped_examples.push_back(e.what());
        continue;
      }
      positions.push_back(i);
      upscaled += std::min(image.width, image.height) < o.image_size ? 1 : 0;
      originals.push_back(center_crop_arr(image, static_cast<int>(o.image_size)));
    }
    if (originals.empty()) {
      progress.update(end - start);
      continue;
    }
    const auto batch = static_cast<int64_t>(originals.size());
    scored += batch;
    const auto x = to_tensor(originals).to(o.device);
    const auto codes = model->encode(x);
    const auto rec = model->decode(codes, side, side);
    if (!o.recon_dir.empty()) {
      const auto tiles = from_tensor_batch(rec);
      for (size_t j = 0; j < tiles.size(); ++j) {
        const fs::path& target = recon[static_cast<size_t>(positions[j])];
        fs::create_directories(target.parent_path());
        write_png(target.string(), tiles[j]);
      }
    }
    counts += torch::bincount(codes.reshape({-1}).to(torch::kCPU), {}, k);
    const auto a8 = to_uint8_hwc(x), b8 = to_uint8_hwc(rec);  // the images as saved
    const auto a = a8.to(torch::kDouble);
    const auto b = b8.to(torch::kDouble);
    const auto mse = (a - b).pow(2).mean({1, 2, 3});  // per image, uint8 units
    for (int64_t i = 0; i < mse.size(0); ++i) {
      const double m = mse[i].item<double>();
      const double p = m > 0 ? 10.0 * std::log10(255.0 * 255.0 / m) : 99.0;
      psnr_sum += p;
      psnr_min = std::min(psnr_min, p);
      mse_sum += m / (255.0 * 255.0);
    }
    // SSIM of the same uint8 images, back in [-1, 1] (range 2).
    if (with_ssim) {
      auto to_unit = [](const torch::Tensor& t) { return (t.permute({0, 3, 1, 2}) / 127.5 - 1.0).to(torch::kFloat); };
      ssim_sum += train::ssim(to_unit(a), to_unit(b)).item<double>() * static_cast<double>(batch);
    }
    if (with_llamagen_ssim) llamagen_ssim_sum += ssim_llamagen(a8, b8).sum().item<double>();
    if (lpips) {
      auto to_unit = [&](const torch::Tensor& t) {
        return (t.permute({0, 3, 1, 2}).to(o.device, torch::kFloat) / 127.5 - 1.0).contiguous();
      };
      lpips_sum += lpips->forward(to_unit(a8), to_unit(b8)).sum().item<double>();
    }
    progress.update(end - start);
  }
  progress.finish();
  AIM_CHECK(scored > 0, list.source, ": none of the ", n, " images could be read (", skipped_examples.front(), ")");
  TokenizerEval r;
  r.images = scored;
  r.skipped = skipped;
  r.skipped_examples = skipped_examples;
  r.upscaled = upscaled;
  const auto count = static_cast<double>(scored);
  r.psnr = psnr_sum / count;
  r.psnr_min = psnr_min;
  r.mse = mse_sum / count;
  r.ssim = with_ssim ? ssim_sum / count : std::nan("");
  r.ssim_llamagen = with_llamagen_ssim ? llamagen_ssim_sum / count : std::nan("");
  r.lpips = lpips ? lpips_sum / count : std::nan("");
  r.codes_used = (counts > 0).sum().item<int64_t>();
  r.usage = static_cast<double>(r.codes_used) / static_cast<double>(k);
  const auto p = counts.to(torch::kDouble) / counts.sum().to(torch::kDouble);
  const auto nz = p.masked_select(p > 0);
  r.perplexity = std::exp(-(nz * nz.log()).sum().item<double>());
  return r;
}

}  // namespace aim
