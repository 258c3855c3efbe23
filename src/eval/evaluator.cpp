// ADM's evaluation: image batches -> cached Inception features -> IS, FID, sFID, P, R.
#include "aim/eval/evaluator.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <map>
#include <mutex>
#include <vector>

#include "aim/core/error.h"
#include "aim/core/fileio.h"
#include "aim/core/progress.h"
#include "aim/core/safetensors.h"
#include "aim/data/image.h"
#include "aim/data/image_folder.h"
#include "aim/sample/npz.h"

namespace aim::eval {
namespace {

namespace fs = std::filesystem;

constexpr const char* kCacheFormat = "aim-inception-features/1";
constexpr int64_t kPoolDim = 2048;
constexpr int64_t kSpatialDim = 17 * 17 * FidInceptionV3Impl::kSpatialChannels;

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t mtime_ns(const fs::path& p) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             fs::last_write_time(p).time_since_epoch())
      .count();
}

std::string dtype_name(bool bf16) { return bf16 ? "bfloat16" : "float32"; }

/// Stored statistics `mu_key` [D] and `sigma_key` [D, D] as float64, or empty ones when the
/// archive has neither; one without the other or a wrong shape is an error.
FeatureStats read_stored_stats(NpzReader& reader, const std::string& mu_key,
                               const std::string& sigma_key, int64_t dim, const char* what) {
  const bool has_mu = reader.contains(mu_key), has_sigma = reader.contains(sigma_key);
  if (!has_mu && !has_sigma) return {};
  AIM_CHECK(has_mu && has_sigma, reader.path(), ": has '", has_mu ? mu_key : sigma_key,
            "' but not '", has_mu ? sigma_key : mu_key, "'; stored ", what,
            " statistics need both");
  const auto& mi = reader.member(mu_key);
  const auto& si = reader.member(sigma_key);
  AIM_CHECK(mi.shape == std::vector<int64_t>{dim}, reader.path(), ": '", mu_key, "' has shape ",
            shape_str(mi.shape), ", expected [", dim, "] (", what, " features)");
  AIM_CHECK(si.shape == (std::vector<int64_t>{dim, dim}), reader.path(), ": '", sigma_key,
            "' has shape ", shape_str(si.shape), ", expected [", dim, ", ", dim, "]");
  AIM_CHECK(at::isFloatingType(mi.dtype) && at::isFloatingType(si.dtype), reader.path(), ": '",
            mu_key, "' and '", sigma_key, "' must be floating point, found ",
            c10::toString(mi.dtype), " and ", c10::toString(si.dtype));
  FeatureStats s;
  s.mu = reader.read(mu_key).to(torch::kDouble);
  s.sigma = reader.read(sigma_key).to(torch::kDouble);
  return s;
}

std::string strip_trailing_slash(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

}  // namespace

// ------------------------------------------------------------------------------------ sources

struct ImageBatchSource::Impl {
  std::unique_ptr<NpzReader> npz;
  std::vector<fs::path> files;  // folder images, sorted
};

ImageBatchSource::ImageBatchSource(const std::string& path)
    : impl_(std::make_unique<Impl>()), path_(strip_trailing_slash(path)) {
  AIM_CHECK(fs::exists(path_), path_, ": no such file or folder (expected an ADM .npz batch or a ",
            "folder of images)");
  if (fs::is_directory(path_)) {
    for (const auto& e : fs::recursive_directory_iterator(path_, fs::directory_options::follow_directory_symlink))
      if (e.is_regular_file() && has_image_extension(e.path().string())) impl_->files.push_back(e.path());
    AIM_CHECK(!impl_->files.empty(), path_, ": folder holds no image (searched recursively for ",
              ".png, .jpg, .jpeg, .bmp, ...)");
    std::sort(impl_->files.begin(), impl_->files.end());
    const Image first = decode_image(impl_->files.front().string());
    size_ = static_cast<int64_t>(impl_->files.size());
    height_ = first.height;
    width_ = first.width;
    return;
  }
  is_npz_ = true;
  impl_->npz = std::make_unique<NpzReader>(path_);
  auto& r = *impl_->npz;
  if (!r.contains("arr_0")) {
    std::string names;
    for (const auto& m : r.members()) names += (names.empty() ? "" : ", ") + m.name;
    throw Error(str_cat(path_, ": no member 'arr_0' (the images of an ADM batch, uint8 [N, H, W, 3]); ",
                        "members: ", names.empty() ? "none" : names));
  }
  const auto& info = r.member("arr_0");
  AIM_CHECK(info.dtype == torch::kByte && info.shape.size() == 4 && info.shape[3] == 3, path_,
            ": 'arr_0' is ", c10::toString(info.dtype), " ", shape_str(info.shape),
            ", expected uint8 [N, H, W, 3] (RGB images as ADM's evaluator reads them)",
            info.dtype != torch::kByte ? " ---> HINT: quantise images to uint8 first, e.g. "
                                         "clamp(127.5 * x + 128, 0, 255) for x in [-1, 1]"
                                       : "");
  size_ = info.shape[0];
  height_ = info.shape[1];
  width_ = info.shape[2];
  AIM_CHECK(size_ > 0 && height_ > 0 && width_ > 0, path_, ": 'arr_0' ", shape_str(info.shape),
            " holds no image");
  stored_ = read_stored_stats(r, "mu", "sigma", kPoolDim, "FID (pool3)");
  stored_spatial_ = read_stored_stats(r, "mu_s", "sigma_s", kSpatialDim, "sFID (spatial)");
}

ImageBatchSource::~ImageBatchSource() = default;
ImageBatchSource::ImageBatchSource(ImageBatchSource&&) noexcept = default;
ImageBatchSource& ImageBatchSource::operator=(ImageBatchSource&&) noexcept = default;

torch::Tensor ImageBatchSource::read(int64_t start, int64_t count) {
  AIM_CHECK(start >= 0 && count >= 0 && start + count <= size_, path_, ": images [", start, ", ",
            start + count, ") requested of ", size_);
  if (is_npz_) return impl_->npz->read_rows("arr_0", start, count);
  auto out = torch::empty({count, height_, width_, 3}, torch::kByte);
  for (int64_t i = 0; i < count; ++i) {
    const auto& file = impl_->files[static_cast<size_t>(start + i)];
    const Image img = decode_image(file.string());
    AIM_CHECK(img.height == height_ && img.width == width_, file.string(), ": image is ",
              img.width, "x", img.height, ", but ", impl_->files.front().string(), " is ", width_,
              "x", height_, "; all images of a batch must have one size");
    std::memcpy(out[i].data_ptr<uint8_t>(), img.rgb.data(), img.rgb.size());
  }
  return out;
}

std::string ImageBatchSource::signature() const {
  if (is_npz_)
    return str_cat("npz size=", fs::file_size(path_), " mtime_ns=", mtime_ns(path_), " arr_0=[",
                   size_, ", ", height_, ", ", width_, ", 3]");
  uint64_t h = kFnv1aOffset;
  for (const auto& f : impl_->files) {
    const std::string rel = fs::relative(f, path_).generic_string();
    const uint64_t size = fs::file_size(f);
    const int64_t t = mtime_ns(f);
    h = fnv1a64(h, rel.data(), rel.size() + 1);
    h = fnv1a64(h, &size, sizeof size);
    h = fnv1a64(h, &t, sizeof t);
  }
  return str_cat("folder images=", size_, " size=", width_, "x", height_, " files=", hex16(h));
}

// ------------------------------------------------------------------------------------ features

std::string feature_cache_path(const std::string& input_path) {
  return strip_trailing_slash(input_path) + ".inception.safetensors";
}

namespace {

/// file_digest of the weights, hashed once per file state (path, size, time): an evaluation asks
/// for it for each input's cache check and for each cache it writes.
std::string weights_digest(const std::string& path) {
  static std::mutex mutex;
  static std::map<std::string, std::string> known;
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (ec) return file_digest(path);  // its error names the file
  const std::string key = str_cat(path, '\0', size, '\0', mtime_ns(path));
  std::lock_guard<std::mutex> lock(mutex);
  auto it = known.find(key);
  if (it == known.end()) it = known.emplace(key, file_digest(path)).first;
  return it->second;
}

}  // namespace

std::optional<BatchFeatures> load_cached_features(const ImageBatchSource& source,
                                                  const EvalOptions& options, std::string* why) {
  auto no = [&](const std::string& reason) -> std::optional<BatchFeatures> {
    if (why) *why = reason;
    return std::nullopt;
  };
  if (!options.use_cache) return no("the cache is off (--no-cache)");
  const std::string path = feature_cache_path(source.path());
  if (!fs::exists(path)) return no("no feature cache " + path);
  try {
    SafetensorsFile f(path);
    const auto& m = f.metadata();
    auto meta = [&](const std::string& key) {
      auto it = m.find(key);
      return it == m.end() ? std::string() : it->second;
    };
    if (meta("format") != kCacheFormat) return no(path + ": not a feature cache of this version");
    if (meta("signature") != source.signature())
      return no(path + ": made for other content (" + meta("signature") + ")");
    if (meta("preprocess") != to_string(options.preprocess))
      return no(path + ": made with preprocessing " + meta("preprocess"));
    if (meta("dtype") != dtype_name(options.bf16))
      return no(path + ": made with an Inception in " + meta("dtype"));
    if (!options.inception_weights.empty()) {
      if (meta("inception_weights") != weights_digest(options.inception_weights))
        return no(path + ": made with other Inception weights (digest " + meta("inception_weights") + ")");
    } else {
      std::cerr << "note: " << path << ": features of Inception weights with digest "
                << meta("inception_weights") << " (no --inception given to check them)\n";
    }
    BatchFeatures b;
    b.pool3 = f.get("pool3").clone();
    b.spatial = f.get("spatial").clone();
    b.logits_unbiased = f.get("logits_unbiased").clone();
    const int64_t n = source.size();
    if (b.pool3.sizes() != torch::IntArrayRef{n, kPoolDim} ||
        b.spatial.sizes() != torch::IntArrayRef{n, kSpatialDim} ||
        b.logits_unbiased.sizes() != torch::IntArrayRef{n, FidInceptionV3Impl::kNumClasses})
      return no(path + ": tensors of the wrong shape");
    b.from_cache = true;
    b.cache_path = path;
    return b;
  } catch (const Error& e) {
    return no(std::string("unreadable feature cache: ") + e.what());
  }
}

BatchFeatures compute_features(ImageBatchSource& source, InceptionExtractor& extractor,
                               const EvalOptions& options, const std::string& label) {
  const int64_t n = source.size();
  const int64_t chunk = std::max<int64_t>(1, options.batch_size);
  BatchFeatures b;
  b.pool3 = torch::empty({n, kPoolDim}, torch::kFloat);
  b.spatial = torch::empty({n, kSpatialDim}, torch::kFloat);
  b.logits_unbiased = torch::empty({n, FidInceptionV3Impl::kNumClasses}, torch::kFloat);
  if (options.progress)
    std::cerr << label << ": " << n << " images " << source.width() << "x" << source.height()
              << " from " << source.path() << " through the Inception on " << extractor.device()
              << " (" << dtype_name(options.bf16) << ", batch " << extractor.batch_size() << ")\n";
  Progress progress(label, n, "img", options.progress);
  // The next chunk is read (inflated or decoded) while the network runs on this one.
  auto fetch = [&source](int64_t start, int64_t count) { return source.read(start, count); };
  std::future<torch::Tensor> next = std::async(std::launch::async, fetch, 0, std::min(chunk, n));
  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t count = std::min(chunk, n - start);
    torch::Tensor images = next.get();
    if (start + count < n)
      next = std::async(std::launch::async, fetch, start + count, std::min(chunk, n - start - count));
    const InceptionFeatures f = extractor.extract(images);
    b.pool3.narrow(0, start, count).copy_(f.pool3);
    b.spatial.narrow(0, start, count).copy_(f.spatial);
    b.logits_unbiased.narrow(0, start, count).copy_(f.logits_unbiased);
    progress.update(count);
  }
  progress.finish();
  if (options.use_cache) {
    const std::string path = feature_cache_path(source.path());
    try {
      save_safetensors(path,
                       {{"pool3", b.pool3}, {"spatial", b.spatial}, {"logits_unbiased", b.logits_unbiased}},
                       {{"format", kCacheFormat},
                        {"source", source.path()},
                        {"signature", source.signature()},
                        {"inception_weights", weights_digest(options.inception_weights)},
                        {"preprocess", to_string(options.preprocess)},
                        {"dtype", dtype_name(options.bf16)},
                        {"images", std::to_string(n)}});
      b.cache_path = path;
    } catch (const Error& e) {
      std::cerr << "warning: features not cached: " << e.what() << "\n";
    }
  }
  return b;
}

// ------------------------------------------------------------------------------------ evaluate

EvalResult evaluate(const std::string& samples_path, const std::string& ref_path,
                    const EvalOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  AIM_CHECK(options.k >= 1, "--k: must be >= 1, found ", options.k);
  AIM_CHECK(options.batch_size >= 1, "--batch-size: must be >= 1, found ", options.batch_size);
  AIM_CHECK(options.is_split_size >= 1, "--split-size: must be >= 1, found ", options.is_split_size);
  AIM_CHECK(options.pr_block >= 1, "--pr-block: must be >= 1, found ", options.pr_block);
  ImageBatchSource samples(samples_path), ref(ref_path);

  EvalResult r;
  r.num_samples = samples.size();
  r.num_ref = ref.size();
  r.sample_height = samples.height();
  r.sample_width = samples.width();
  r.ref_height = ref.height();
  r.ref_width = ref.width();
  if (!options.allow_size_mismatch)
    AIM_CHECK(samples.height() == ref.height() && samples.width() == ref.width(),
              "image sizes differ: samples ", samples.path(), " are ", samples.width(), "x",
              samples.height(), ", the reference ", ref.path(), " is ", ref.width(), "x",
              ref.height(), "; the Inception would see both at 299x299 and the numbers would not ",
              "be comparable with published ones ---> HINT: sample at the reference's resolution, ",
              "or pass --allow-size-mismatch");
  for (const ImageBatchSource* s : {&samples, &ref})
    AIM_CHECK(s->size() >= options.k + 1, s->path(), ": ", s->size(),
              " images; precision/recall with k = ", options.k, " need at least ", options.k + 1);

  // Features: caches first; the Inception is loaded only when some input needs it.
  std::string why_samples, why_ref;
  auto sample_feats = load_cached_features(samples, options, &why_samples);
  auto ref_feats = load_cached_features(ref, options, &why_ref);
  if (!sample_feats || !ref_feats) {
    if (options.inception_weights.empty()) {
      const std::string& p = !sample_feats ? samples.path() : ref.path();
      const std::string& why = !sample_feats ? why_samples : why_ref;
      throw Error(str_cat("--inception: no Inception weights given (nor $AIM_INCEPTION_WEIGHTS), and ",
                          p, " has no usable feature cache (", why, ") ---> HINT: python ",
                          "tools/convert_checkpoint.py pt_inception-2015-12-05-6726825d.pth --kind ",
                          "inception --out pt_inception.safetensors, then --inception pt_inception.safetensors"));
    }
    InceptionExtractor extractor(options.inception_weights, options.device, options.batch_size,
                                 options.preprocess, options.bf16 ? torch::kBFloat16 : torch::kFloat);
    if (!sample_feats) sample_feats = compute_features(samples, extractor, options, "samples");
    if (!ref_feats) ref_feats = compute_features(ref, extractor, options, "reference");
  }
  r.sample_features_cached = sample_feats->from_cache;
  r.ref_features_cached = ref_feats->from_cache;
  r.sample_cache = sample_feats->cache_path;
  r.ref_cache = ref_feats->cache_path;

  r.inception_score = inception_score(sample_feats->logits_unbiased, options.is_split_size);
  {
    const auto top = sample_feats->logits_unbiased.argmax(1).to(torch::kCPU);
    auto distinct = [](const torch::Tensor& t) { return (torch::bincount(t) > 0).sum().item<int64_t>(); };
    r.predicted_classes = distinct(top);
    r.predicted_classes_min_split = r.predicted_classes;
    for (int64_t r0 = 0; r0 < top.size(0); r0 += options.is_split_size, ++r.is_splits)
      r.predicted_classes_min_split =
          std::min(r.predicted_classes_min_split, distinct(top.slice(0, r0, r0 + options.is_split_size)));
  }

  // ADM's read_statistics: stored statistics win over the images'.
  auto stats = [](const ImageBatchSource& s, const torch::Tensor& acts, bool spatial, bool* stored) {
    const FeatureStats& st = spatial ? s.stored_spatial_stats() : s.stored_stats();
    *stored = st.mu.defined();
    return *stored ? st : compute_feature_stats(acts);
  };
  const FeatureStats s_pool = stats(samples, sample_feats->pool3, false, &r.sample_stats_stored);
  const FeatureStats r_pool = stats(ref, ref_feats->pool3, false, &r.ref_stats_stored);
  const FeatureStats s_sp = stats(samples, sample_feats->spatial, true, &r.sample_spatial_stored);
  const FeatureStats r_sp = stats(ref, ref_feats->spatial, true, &r.ref_spatial_stored);
  r.fid = frechet_distance(s_pool, r_pool, {}, &r.fid_info);
  r.sfid = frechet_distance(s_sp, r_sp, {}, &r.sfid_info);

  ManifoldOptions mo;
  mo.k = options.k;
  mo.row_block = mo.col_block = options.pr_block;
  const auto pr = precision_recall(ref_feats->pool3.to(options.device),
                                   sample_feats->pool3.to(options.device), mo);
  r.precision = pr.precision;
  r.recall = pr.recall;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace aim::eval
