// Parity of the VQ tokenizer with LlamaGen/AiM over every fixture case: vq/* (encoder, quantiser,
// decoder) and the `decoded_images` of aim/* (the tokenizer stored under `vqvae.`).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "aim/core/config.h"
#include "aim/core/safetensors.h"
#include "aim/model/loader.h"
#include "aim/model/registry.h"
#include "aim/model/vq.h"
#include "no_tf32.h"
#include "test_util.h"

namespace aim {
namespace {

namespace fs = std::filesystem;

// fp32 vs fp64-computed goldens; README: the official code in fp32 is within ~1e-5 on images.
constexpr double kImageTol = 1e-4;

class VqParity : public ::testing::TestWithParam<std::string> {};

TEST_P(VqParity, EncodeQuantiseDecode) {
  const auto dir = test::fixtures_dir() / "vq" / GetParam();
  const auto device = test::model_device();
  test::NoTf32 fp32_convolutions;
  auto cfg = vq_config_from_json((dir / "config.json").string());
  VqModel vq(cfg);
  load_vq_state_dict(vq, load_safetensors((dir / "model.safetensors").string()),
                     (dir / "model.safetensors").string());
  vq->to(device);
  vq->eval();
  torch::NoGradGuard no_grad;
  auto g = load_safetensors((dir / "cases.safetensors").string());
  // Every documented tensor, and no other: each check below needs its tensor.
  const std::set<std::string> documented{"images", "codes", "quant", "decoded", "reconstruction"};
  for (const auto& key : documented) ASSERT_TRUE(g.count(key)) << GetParam() << ": no '" << key << "'";
  for (const auto& [key, value] : g) EXPECT_TRUE(documented.count(key)) << GetParam() << ": " << key << " is checked by no test";
  std::printf("[ case vq/%s on %s ] ch %lld, %zu levels, codebook %lld x %lld\n", GetParam().c_str(),
              device.str().c_str(), (long long)cfg.ch, cfg.ch_mult.size(),
              (long long)cfg.codebook_size, (long long)cfg.codebook_embed_dim);
  auto images = g.at("images").to(device);
  auto codes = vq->encode(images);
  const int64_t side = VqModel::Impl::side_of(codes.size(1));
  if (g.count("codes")) {
    auto expected = g.at("codes").to(device);
    const int64_t mismatches = (codes != expected).sum().item<int64_t>();
    std::printf("    codes: %lld of %lld differ\n", (long long)mismatches, (long long)codes.numel());
    EXPECT_EQ(mismatches, 0);
  }
  if (g.count("quant")) test::expect_close("quant", vq->quantized(codes, side, side), g.at("quant"), kImageTol);
  if (g.count("decoded")) {
    test::expect_close("decoded", vq->decode(g.at("codes").to(device), side, side), g.at("decoded"), kImageTol);
  }
  if (g.count("reconstruction")) {
    test::expect_close("reconstruction", vq->reconstruct(images), g.at("reconstruction"), kImageTol);
  }
}

std::vector<std::string> vq_cases() {
  auto cases = test::fixture_cases("vq", {"config.json", "model.safetensors", "cases.safetensors"});
  if (cases.empty()) cases.push_back("NO_FIXTURES_FOUND");
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Fixtures, VqParity, ::testing::ValuesIn(vq_cases()),
                         [](const auto& info) { return info.param; });

class AimTokenizerParity : public ::testing::TestWithParam<std::string> {};

TEST_P(AimTokenizerParity, DecodedImages) {
  const auto dir = test::fixtures_dir() / "aim" / GetParam();
  const auto device = test::model_device();
  test::NoTf32 fp32_convolutions;
  auto g = load_safetensors((dir / "cases.safetensors").string());
  if (!g.count("decoded_images") || !g.count("decode_tokens")) {
    GTEST_SKIP() << GetParam() << ": no decoded_images in this case";
  }
  auto cfg = vq_config_from_json((dir / "config.json").string(), "fixture.vq");
  VqModel vq(cfg);
  load_vq_state_dict(vq, load_safetensors((dir / "model.safetensors").string()),
                     (dir / "model.safetensors").string(), "vqvae.");
  vq->to(device);
  vq->eval();
  torch::NoGradGuard no_grad;
  auto tokens = g.at("decode_tokens").to(device);
  const int64_t side = VqModel::Impl::side_of(tokens.size(1));
  std::printf("[ case aim/%s on %s ] tokenizer ch %lld, %zu levels\n", GetParam().c_str(),
              device.str().c_str(), (long long)cfg.ch, cfg.ch_mult.size());
  test::expect_close("decoded_images", vq->decode(tokens, side, side), g.at("decoded_images"), kImageTol);
}

std::vector<std::string> aim_cases() {
  auto cases = test::fixture_cases("aim", {"config.json", "model.safetensors", "cases.safetensors"});
  if (cases.empty()) cases.push_back("NO_FIXTURES_FOUND");
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Fixtures, AimTokenizerParity, ::testing::ValuesIn(aim_cases()),
                         [](const auto& info) { return info.param; });

TEST(VqLayout, FullVq16HasTheOfficialKeysAndTotal) {
  VqModel vq(VqConfig{});
  std::ifstream in(test::fixtures_dir() / "official_layout" / "vq16.txt");
  std::vector<std::pair<std::string, std::string>> official;
  int64_t total = -1;
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("total ", 0) == 0) {
      total = std::stoll(line.substr(6));
    } else {
      const auto sp = line.find(' ');
      official.emplace_back(line.substr(0, sp), line.substr(sp + 1));
    }
  }
  ASSERT_FALSE(official.empty());
  std::map<std::string, std::string> ours;
  int64_t params = 0;
  for (const auto& [k, v] : vq_state_dict(vq)) {
    std::string shape = "[";
    for (int64_t i = 0; i < v.dim(); ++i) shape += (i ? "," : "") + std::to_string(v.size(i));
    ours[k] = shape + "]";
  }
  for (const auto& p : vq->parameters()) params += p.numel();
  EXPECT_EQ(ours.size(), official.size());
  for (const auto& [k, shape] : official) {
    ASSERT_TRUE(ours.count(k)) << "missing " << k;
    EXPECT_EQ(ours[k], shape) << k;
  }
  EXPECT_EQ(params, total);
  std::printf("    VQ-16: %zu entries, %lld parameters (official %lld)\n", ours.size(),
              (long long)params, (long long)total);
}

TEST(VqLoad, ALanguageModelWithoutItsTokenizerIsNamed) {
  // The fixture's language-model tensors alone, as save_pretrained writes them.
  std::vector<std::pair<std::string, torch::Tensor>> lm;
  for (const auto& [k, v] : load_safetensors((test::fixtures_dir() / "aim" / "mamba2_tiny" / "model.safetensors").string()))
    if (k.rfind("mamba.", 0) == 0) lm.emplace_back(k, v);
  ASSERT_FALSE(lm.empty());
  const auto path = (fs::temp_directory_path() / ("aim_lm_only_" + std::to_string(::getpid()) + ".safetensors")).string();
  save_safetensors(path, lm);
  const std::string msg = test::error_of([&] { load_vq_model(path); });
  fs::remove(path);
  EXPECT_NE(msg.find(path + ": holds a language model's tensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--vq"), std::string::npos) << msg;
  EXPECT_LT(msg.size(), 600u) << "one message, not a list of every tensor";
  // An AiM checkpoint with its MambaConfig as NAME.json beside it (the converter's layout): that
  // JSON is the language model's, not read as the tokenizer's.
  const fs::path fixture = test::fixtures_dir() / "aim" / "mamba2_tiny";
  const fs::path dir = fs::temp_directory_path() / ("aim_vq_beside_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  fs::copy_file(fixture / "model.safetensors", dir / "w.safetensors");
  fs::copy_file(fixture / "config.json", dir / "w.json");
  const auto vq = load_vq_model((dir / "w.safetensors").string(), test::source_dir() + "/configs/fixture_tiny_vq.json");
  EXPECT_EQ(vq.model->config.codebook_size, 512);
  const std::string beside = test::error_of([&] { load_vq_model((dir / "w.safetensors").string()); });
  EXPECT_EQ(beside.find("a language model's config"), std::string::npos) << beside;
  // With no tokenizer config its tokenizer is read as the full VQ-16, which the error says, and
  // what to pass instead.
  EXPECT_NE(beside.find("--vq " + (dir / "w.safetensors").string() + ": no tokenizer config was found for "),
            std::string::npos) << beside;
  EXPECT_NE(beside.find("read as the built-in VQ-16 (LlamaGen's vq_ds16_c2i), which it is not"), std::string::npos)
      << beside;
  EXPECT_NE(beside.find("HINT: pass its config: --vq-config"), std::string::npos) << beside;
  EXPECT_EQ(beside.find("check that the config belongs"), std::string::npos) << beside;
  // NAME.vq.json beside it (what the converter writes for an AiM checkpoint's vqvae.*) is read.
  fs::copy_file(test::source_dir() + "/configs/fixture_tiny_vq.json", dir / "w.vq.json");
  EXPECT_EQ(load_vq_model((dir / "w.safetensors").string()).model->config.codebook_size, 512);
  fs::remove_all(dir);
  // A tokenizer's folder holding its config.json (LlamaGen-style) needs no --vq-config.
  const auto folder = load_vq_model((test::fixtures_dir() / "vq" / "vq16_tiny").string());
  EXPECT_EQ(folder.model->config.ch_mult, (std::vector<int64_t>{1, 1, 1, 2, 2}));
}

}  // namespace
}  // namespace aim
