// Parity of the FID Inception-v3 with pytorch-fid, and of both input pipelines with pytorch-fid
// and ADM's TF graph: every folder under $AIM_FIXTURES_DIR/eval whose config.json has
// "kind": "inception_fid", every file its "case_files" names (tests/fixtures/eval/README.md).
// Folders of other kinds are skipped here. Also the strict weight loader and the extractor.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/Context.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "aim/core/error.h"
#include "aim/core/safetensors.h"
#include "aim/eval/inception.h"
#include "eval/inception_fixture.h"
#include "no_tf32.h"
#include "test_util.h"

namespace aim::eval {
namespace {

namespace fs = std::filesystem;
using TensorMap = std::map<std::string, torch::Tensor>;

// README: the stored float32 inputs are the same float32 computation (about 1e-6); a float64
// forward is within float32 rounding of the stored features; a float32 CPU forward within 7e-5
// (features) and 1.3e-4 (logits), with 5e-4 / 2e-3 suggested.
constexpr double kInputAtol = 1e-6;
constexpr double kF64Atol = 1e-6;
// The stored values are float32 roundings: half an ulp (2^-24 relative) comes on top of kF64Atol
// (max |logit| is about 17 in cases_64, where half an ulp is 9.5e-7).
constexpr double kF64Rtol = 0x1p-24;
constexpr double kF32FeatureAtol = 5e-4;
constexpr double kF32LogitAtol = 2e-3;

const char* const kFeatures[] = {"pool3", "spatial", "logits", "logits_unbiased",
                                 "pool_64", "pool_192", "pool_768"};

bool is_logits(const std::string& name) { return name.rfind("logits", 0) == 0; }

double atol_for(torch::ScalarType dtype, const std::string& feature) {
  if (dtype == torch::kDouble) return kF64Atol;
  return is_logits(feature) ? kF32LogitAtol : kF32FeatureAtol;
}

torch::Tensor feature_of(const InceptionFeatures& f, const std::string& name) {
  if (name == "pool3") return f.pool3;
  if (name == "spatial") return f.spatial;
  if (name == "logits") return f.logits;
  if (name == "logits_unbiased") return f.logits_unbiased;
  if (name == "pool_64") return f.pool_64;
  if (name == "pool_192") return f.pool_192;
  return f.pool_768;
}

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path.string() + ": cannot open");
  return nlohmann::json::parse(in);
}

// ------------------------------------------------------------------ weights (README)
// Generated + stored tensors come from eval/inception_fixture.h, shared with the `aim eval` tests.

/// Temporary files of this process, removed at exit.
struct TempDir {
  fs::path path = fs::temp_directory_path() / ("aim_inception_test_" + std::to_string(getpid()));
  TempDir() { fs::create_directories(path); }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};
const fs::path& temp_dir() {
  static TempDir dir;
  return dir.path;
}

/// An inception fixture folder: its config and the complete weights (generated + stored),
/// written once as a safetensors file for the loader and the extractor.
struct InceptionFolder {
  fs::path dir;
  nlohmann::json config;
  TensorMap weights;
  std::string weights_file;
};

const InceptionFolder& inception_folder(const std::string& name) {
  static std::map<std::string, InceptionFolder> cache;
  auto it = cache.find(name);
  if (it != cache.end()) return it->second;
  InceptionFolder f;
  f.dir = test::fixtures_dir() / "eval" / name;
  f.config = read_json(f.dir / "config.json");
  f.weights = test::fixture_inception_weights(f.dir);
  f.weights_file = (temp_dir() / (name + "_weights.safetensors")).string();
  save_safetensors(f.weights_file, std::vector<std::pair<std::string, torch::Tensor>>(
                                       f.weights.begin(), f.weights.end()));
  return cache.emplace(name, std::move(f)).first->second;
}

/// Folders under eval/ of kind "inception_fid", sorted.
std::vector<std::string> inception_folders() {
  std::vector<std::string> out;
  for (const auto& name : test::fixture_cases("eval", {"config.json"}))
    if (read_json(test::fixtures_dir() / "eval" / name / "config.json").value("kind", "") == "inception_fid")
      out.push_back(name);
  return out;
}

// ------------------------------------------------------------------ parity over the cases

struct CaseParam {
  std::string folder, case_file;
  torch::Device device;
  torch::ScalarType dtype;
};

std::string dtype_name(torch::ScalarType t) {
  return t == torch::kDouble ? "fp64" : t == torch::kFloat ? "fp32" : "bf16";
}

std::string case_name(const CaseParam& p) {
  std::string s = p.folder + "_" + fs::path(p.case_file).stem().string() + "_" +
                  (p.device.is_cuda() ? "cuda" : "cpu") + "_" + dtype_name(p.dtype);
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return s;
}

void PrintTo(const CaseParam& p, std::ostream* os) { *os << case_name(p); }

/// Every (folder, case file) crossed with the devices and compute dtypes.
std::vector<CaseParam> case_params(const std::vector<std::pair<torch::Device, torch::ScalarType>>& runs) {
  std::vector<CaseParam> out;
  for (const auto& folder : inception_folders()) {
    const auto cfg = read_json(test::fixtures_dir() / "eval" / folder / "config.json");
    for (const auto& file : cfg.at("case_files"))
      for (const auto& [device, dtype] : runs) out.push_back({folder, file.get<std::string>(), device, dtype});
  }
  if (out.empty()) out.push_back({"NO_FIXTURES_FOUND", "", torch::kCPU, torch::kFloat});
  return out;
}

std::vector<std::pair<torch::Device, torch::ScalarType>> forward_runs() {
  std::vector<std::pair<torch::Device, torch::ScalarType>> r{{torch::kCPU, torch::kDouble},
                                                             {torch::kCPU, torch::kFloat}};
#ifdef AIM_WITH_CUDA
  r.push_back({torch::kCUDA, torch::kFloat});
#endif
  return r;
}

std::vector<std::pair<torch::Device, torch::ScalarType>> extractor_runs() {
  std::vector<std::pair<torch::Device, torch::ScalarType>> r{{torch::kCPU, torch::kFloat}};
#ifdef AIM_WITH_CUDA
  r.push_back({torch::kCUDA, torch::kFloat});
#endif
  return r;
}

class InceptionCase : public ::testing::TestWithParam<CaseParam> {
 protected:
  void SetUp() override {
    const auto& p = GetParam();
    if (p.folder == "NO_FIXTURES_FOUND") GTEST_FAIL() << "no inception_fid folder under " << test::fixtures_dir() / "eval";
    if (p.device.is_cuda() && !torch::cuda::is_available())
      GTEST_SKIP() << "CUDA build, but no GPU is visible: GPU case skipped";
    folder_ = &inception_folder(p.folder);
    cases_ = load_safetensors((folder_->dir / p.case_file).string());
    const auto& images = cases_.at("images_uint8");
    std::printf("[ case eval/%s/%s on %s, %s ] %lld images %lldx%lld\n", p.folder.c_str(),
                p.case_file.c_str(), p.device.str().c_str(), dtype_name(p.dtype).c_str(),
                (long long)images.size(0), (long long)images.size(1), (long long)images.size(2));
  }
  /// Compares every feature of `f` the case file holds under name + suffix.
  void expect_features(const InceptionFeatures& f, const std::string& suffix, const std::string& tag) {
    for (const std::string name : kFeatures) {
      const auto key = name + suffix;
      if (!cases_.count(key)) continue;
      const auto actual = feature_of(f, name);
      ASSERT_TRUE(actual.defined()) << key;
      const bool f64 = GetParam().dtype == torch::kDouble;
      test::expect_close(key + tag, actual, cases_.at(key), atol_for(GetParam().dtype, name),
                         /*relative_to_max=*/false, f64 ? kF64Rtol : 0.0);
    }
  }

  const InceptionFolder* folder_ = nullptr;
  TensorMap cases_;
};

using InceptionParity = InceptionCase;

TEST_P(InceptionParity, PreprocessingAndForward) {
  const auto& p = GetParam();
  std::optional<test::NoTf32> no_tf32;
  if (p.device.is_cuda()) no_tf32.emplace();
  torch::NoGradGuard no_grad;
  const auto images = cases_.at("images_uint8").to(p.device);
  test::expect_close("input_299 (pytorch_fid)", preprocess_for_inception(images, InceptionPreprocess::kPytorchFid),
                     cases_.at("input_299"), kInputAtol, false);
  test::expect_close("input_299_adm (adm_tf1)", preprocess_for_inception(images, InceptionPreprocess::kAdmTf1),
                     cases_.at("input_299_adm"), kInputAtol, false);

  FidInceptionV3 model;
  load_fid_inception(model, folder_->weights_file);
  model->to(p.device, p.dtype);
  for (const std::string suffix : {"", "_adm"}) {
    const auto x = cases_.at(suffix.empty() ? "input_299" : "input_299_adm").to(p.device, p.dtype);
    const auto f = model->forward(x, /*all_pools=*/true);
    EXPECT_EQ(f.pool3.scalar_type(), p.dtype);
    expect_features(f, suffix, "");
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, InceptionParity, ::testing::ValuesIn(case_params(forward_runs())),
                         [](const auto& info) { return case_name(info.param); });

using InceptionExtractorParity = InceptionCase;

TEST_P(InceptionExtractorParity, BatchesFromUint8Images) {
  const auto& p = GetParam();
  const auto& images = cases_.at("images_uint8");
  for (const auto mode : {InceptionPreprocess::kPytorchFid, InceptionPreprocess::kAdmTf1}) {
    InceptionExtractor extractor(folder_->weights_file, p.device, /*batch_size=*/1, mode, p.dtype);
    std::vector<std::pair<int64_t, int64_t>> calls;
    const auto f = extractor.extract(images, [&](int64_t done, int64_t total) { calls.emplace_back(done, total); },
                                     /*all_pools=*/mode == InceptionPreprocess::kPytorchFid);
    ASSERT_EQ(calls.size(), static_cast<size_t>(images.size(0)));
    EXPECT_EQ(calls.back(), std::make_pair(images.size(0), images.size(0)));
    EXPECT_EQ(f.pool3.device(), torch::Device(torch::kCPU));
    EXPECT_EQ(f.pool3.scalar_type(), torch::kFloat);
    const std::string suffix = mode == InceptionPreprocess::kAdmTf1 ? "_adm" : "";
    expect_features(f, suffix, " (extract, " + to_string(mode) + ")");
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, InceptionExtractorParity,
                         ::testing::ValuesIn(case_params(extractor_runs())),
                         [](const auto& info) { return case_name(info.param); });

TEST(InceptionFixtures, LayoutMatchesTheConfig) {
  const auto folders = inception_folders();
  for (const auto& name : test::fixture_cases("eval", {"config.json"})) {
    if (std::find(folders.begin(), folders.end(), name) == folders.end())
      std::printf("[ eval/%s ] kind \"%s\": not an inception folder, skipped here\n", name.c_str(),
                  read_json(test::fixtures_dir() / "eval" / name / "config.json").value("kind", "").c_str());
  }
  ASSERT_FALSE(folders.empty()) << "no inception_fid folder under " << test::fixtures_dir() / "eval";
  int64_t values = 0;
  for (const auto& [k, s] : fid_inception_keys()) values += c10::multiply_integers(s);
  for (const auto& name : folders) {
    const auto& f = inception_folder(name);
    const auto& w = f.config.at("weights");
    std::printf("[ eval/%s ] %zu tensors, %lld values (config: %lld, %lld); %zu generated\n",
                name.c_str(), fid_inception_keys().size(), (long long)values,
                w.at("n_tensors").get<long long>(), w.at("n_values").get<long long>(),
                w.at("generated").at("scales").size());
    EXPECT_EQ(static_cast<int64_t>(fid_inception_keys().size()), w.at("n_tensors").get<int64_t>());
    EXPECT_EQ(values, w.at("n_values").get<int64_t>());
    EXPECT_EQ(f.weights.size(), fid_inception_keys().size());
  }
}

// ------------------------------------------------------------------ loader and extractor errors

/// A model's weights by name (randomly initialised), as a file would hold them.
TensorMap reference_weights() {
  static const TensorMap sd = [] {
    torch::manual_seed(7);
    FidInceptionV3 model;
    TensorMap out;
    std::map<std::string, torch::Tensor> all;
    for (const auto& p : model->named_parameters()) all[p.key()] = p.value();
    for (const auto& b : model->named_buffers()) all[b.key()] = b.value();
    for (const auto& [k, s] : fid_inception_keys()) out[k] = all.at(k).detach().clone();
    // Running statistics as a trained network has them (not 0 / 1).
    for (auto& [k, v] : out)
      if (k.find("running_") != std::string::npos) v.uniform_(0.5, 1.5);
    return out;
  }();
  return sd;
}

std::vector<std::pair<std::string, torch::Tensor>> as_list(const TensorMap& sd) {
  return {sd.begin(), sd.end()};
}

TEST(InceptionLoader, AcceptsAnyFloatDtypeAndIgnoresNumBatchesTracked) {
  auto sd = reference_weights();
  ASSERT_EQ(sd.size(), 472u);
  TensorMap file_sd;
  for (const auto& [k, v] : sd) file_sd[k] = v.to(torch::kHalf);
  for (const auto& [k, v] : sd)
    if (k.size() > 12 && k.compare(k.size() - 12, 12, "running_mean") == 0)
      file_sd[k.substr(0, k.size() - 12) + "num_batches_tracked"] = torch::tensor(int64_t{123});
  ASSERT_EQ(file_sd.size(), 472u + 94u);
  const auto path = (temp_dir() / "fp16_with_counters.safetensors").string();
  save_safetensors(path, as_list(file_sd));
  FidInceptionV3 model;
  load_fid_inception(model, path);
  fs::remove(path);
  size_t checked = 0;
  for (const auto& p : model->named_parameters()) {
    ASSERT_EQ(p.value().scalar_type(), torch::kFloat) << p.key();
    EXPECT_TRUE(torch::equal(p.value(), sd.at(p.key()).to(torch::kHalf).to(torch::kFloat))) << p.key();
    ++checked;
  }
  for (const auto& b : model->named_buffers()) {
    if (b.key().find("num_batches_tracked") != std::string::npos) continue;
    EXPECT_TRUE(torch::equal(b.value(), sd.at(b.key()).to(torch::kHalf).to(torch::kFloat))) << b.key();
    ++checked;
  }
  EXPECT_EQ(checked, 472u);
  std::printf("    float16 file with 94 num_batches_tracked counters: 472 tensors loaded as float32\n");
}

TEST(InceptionLoader, RejectsMissingMisshapenAndUnexpectedKeysByName) {
  const auto sd = reference_weights();
  FidInceptionV3 model;
  const auto check = [](const std::string& what, const std::string& message,
                        const std::vector<std::string>& expected) {
    std::printf("    %s:\n      %s\n", what.c_str(), message.substr(0, message.find("\n---> HINT")).c_str());
    ASSERT_FALSE(message.empty()) << what << ": accepted";
    for (const auto& s : expected) EXPECT_NE(message.find(s), std::string::npos) << s << "\n" << message;
    EXPECT_NE(message.find("convert_checkpoint.py --kind inception"), std::string::npos) << message;
  };

  // A file: the message names it.
  auto missing = sd;
  missing.erase("Mixed_6d.branch1x1.bn.running_var");
  const auto path = (temp_dir() / "missing_key.safetensors").string();
  save_safetensors(path, as_list(missing));
  check("missing key", test::error_of([&] { load_fid_inception(model, path); }),
        {path, "1 problem", "missing: Mixed_6d.branch1x1.bn.running_var [192]"});
  fs::remove(path);

  auto wrong = sd;
  wrong["fc.weight"] = torch::zeros({1000, 2048});
  check("wrong shape", test::error_of([&] { load_fid_inception_state_dict(model, wrong, "w.safetensors"); }),
        {"w.safetensors", "shape mismatch: fc.weight: expected [1008, 2048], found [1000, 2048]"});

  auto extra = sd;
  extra["AuxLogits.fc.weight"] = torch::zeros({1008, 768});
  check("unexpected key", test::error_of([&] { load_fid_inception_state_dict(model, extra, "x.safetensors"); }),
        {"x.safetensors", "unexpected: AuxLogits.fc.weight [1008, 768]"});

  auto ints = sd;
  ints["Conv2d_1a_3x3.conv.weight"] = torch::zeros({32, 3, 3, 3}, torch::kInt32);
  check("integer tensor", test::error_of([&] { load_fid_inception_state_dict(model, ints, "i.safetensors"); }),
        {"wrong dtype: Conv2d_1a_3x3.conv.weight"});

  check("another network", test::error_of([&] {
          load_fid_inception_state_dict(model, {{"encoder.conv_in.weight", torch::zeros({8, 3, 3, 3})}}, "vq.safetensors");
        }),
        {"vq.safetensors", "473 problems", "unexpected: encoder.conv_in.weight", "and 449 more"});
}

TEST(InceptionExtractorOptions, RejectsBadSettingsAndImages) {
  const auto sd = reference_weights();
  const auto path = (temp_dir() / "extractor_options.safetensors").string();
  save_safetensors(path, as_list(sd));
  std::string msg = test::error_of([&] { InceptionExtractor(path, torch::kCPU, 0); });
  EXPECT_NE(msg.find("batch size"), std::string::npos) << msg;
  msg = test::error_of(
      [&] { InceptionExtractor(path, torch::kCPU, 8, InceptionPreprocess::kAdmTf1, torch::kBFloat16); });
  EXPECT_NE(msg.find("bfloat16 is for CUDA"), std::string::npos) << msg;
  msg = test::error_of([&] { InceptionExtractor((temp_dir() / "absent.safetensors").string(), torch::kCPU); });
  EXPECT_NE(msg.find("absent.safetensors"), std::string::npos) << msg;
  InceptionExtractor extractor(path, torch::kCPU, 4);
  msg = test::error_of([&] { extractor.extract(torch::zeros({2, 32, 32, 4}, torch::kUInt8)); });
  EXPECT_NE(msg.find("[2, 32, 32, 4]"), std::string::npos) << msg;
  msg = test::error_of([&] { extractor.extract(torch::zeros({2, 32, 32, 3}, torch::kFloat)); });
  EXPECT_NE(msg.find("uint8"), std::string::npos) << msg;
  const auto none = extractor.extract(torch::zeros({0, 32, 32, 3}, torch::kUInt8));
  EXPECT_EQ(none.pool3.sizes(), (std::vector<int64_t>{0, 2048}));
  EXPECT_EQ(none.spatial.sizes(), (std::vector<int64_t>{0, 2023}));
  msg = test::error_of([] { inception_preprocess_from_string("tf2"); });
  EXPECT_NE(msg.find("'tf2'"), std::string::npos) << msg;
  EXPECT_EQ(inception_preprocess_from_string(to_string(InceptionPreprocess::kPytorchFid)),
            InceptionPreprocess::kPytorchFid);
  fs::remove(path);
}

/// The TF1 grid on a small case written out by hand: 4 -> 3 samples at s = 0, 4/3, 8/3.
TEST(InceptionPreprocessing, Tf1ResizeFollowsTheLegacyGrid) {
  auto x = torch::tensor({0.f, 10.f, 20.f, 40.f}).view({1, 1, 1, 4});
  auto y = resize_bilinear_tf1(x, 1, 3);
  const float s1 = 1.0f * (4.0f / 3.0f), s2 = 2.0f * (4.0f / 3.0f);
  const float e1 = 10.f + (20.f - 10.f) * (s1 - 1.f), e2 = 20.f + (40.f - 20.f) * (s2 - 2.f);
  EXPECT_EQ(y[0][0][0][0].item<float>(), 0.f);
  EXPECT_EQ(y[0][0][0][1].item<float>(), e1);
  EXPECT_EQ(y[0][0][0][2].item<float>(), e2);
  // Upsampling clamps the upper neighbour at the edge: 2 -> 4 samples at s = 0, 0.5, 1, 1.5.
  auto up = resize_bilinear_tf1(torch::tensor({1.f, 3.f}).view({1, 1, 2, 1}), 4, 1).flatten();
  EXPECT_TRUE(torch::equal(up, torch::tensor({1.f, 2.f, 3.f, 3.f}))) << up;
}

}  // namespace
}  // namespace aim::eval
