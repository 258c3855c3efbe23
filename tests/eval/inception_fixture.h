#pragma once
// The complete weights of an inception_fid fixture folder: the README's generated tensors (every
// conv weight and fc.weight, from a hash formula) plus the stored ones (BatchNorm, fc.bias).
// Shared by the Inception parity tests and the `aim eval` tests, which need a real weights file.
#include <torch/torch.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "aim/core/safetensors.h"
#include "aim/eval/inception.h"
#include "test_util.h"

namespace aim::test {

inline uint32_t fnv1a32(const std::string& s) {
  uint32_t h = 0x811C9DC5u;
  for (unsigned char b : s) {
    h ^= b;
    h *= 0x01000193u;
  }
  return h;
}

/// The README's formula: hash of (index, key) -> u in [0, 1) -> (2u - 1) * scale in float32.
inline torch::Tensor generate_inception_weight(const std::string& name,
                                               const std::vector<int64_t>& shape, uint32_t seed,
                                               float scale) {
  auto t = torch::empty(shape, torch::kFloat);
  float* w = t.data_ptr<float>();
  const uint32_t key = fnv1a32(name) ^ seed;
  for (int64_t i = 0; i < t.numel(); ++i) {
    uint32_t x = static_cast<uint32_t>(i) * 0x9E3779B1u + key;
    x ^= x >> 16;
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    x *= 0xC2B2AE35u;
    x ^= x >> 16;
    const float u = static_cast<float>(x >> 8) * 0x1p-24f;  // exact
    const float v = 2.0f * u - 1.0f;                          // exact
    w[i] = v * scale;                                         // the one rounding
  }
  return t;
}

inline nlohmann::json read_fixture_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path.string() + ": cannot open");
  return nlohmann::json::parse(in);
}

/// All 472 tensors of the fixture folder `dir` (its config.json's "weights" section).
inline std::map<std::string, torch::Tensor> fixture_inception_weights(const std::filesystem::path& dir) {
  const auto config = read_fixture_json(dir / "config.json");
  const auto& wcfg = config.at("weights");
  const uint32_t seed = wcfg.at("seed").get<uint32_t>();
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& [k, s] : eval::fid_inception_keys()) shapes[k] = s;
  std::map<std::string, torch::Tensor> weights;
  for (const auto& [k, v] : wcfg.at("generated").at("scales").items()) {
    if (!shapes.count(k))
      throw std::runtime_error(dir.string() + ": generated key " + k + " is not in the network");
    const uint32_t bits = v.at("bits").get<uint32_t>();
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    if (scale != v.at("float32").get<float>())
      throw std::runtime_error(dir.string() + ": scale of " + k + ": bits and float32 disagree");
    weights[k] = generate_inception_weight(k, shapes[k], seed, scale);
  }
  for (auto& [k, v] : load_safetensors((dir / config.value("model_file", "model.safetensors")).string()))
    weights[k] = v;
  return weights;
}

/// The first inception_fid folder under fixtures_dir()/eval ("" when there is none).
inline std::filesystem::path first_inception_fixture() {
  for (const auto& name : fixture_cases("eval", {"config.json"}))
    if (read_fixture_json(fixtures_dir() / "eval" / name / "config.json").value("kind", "") == "inception_fid")
      return fixtures_dir() / "eval" / name;
  return {};
}

/// Smooth random RGB images (a coarse 6x6 grid upsampled bilinearly), so the Inception sees
/// structure: uint8 [n, size, size, 3], values from brightness to brightness + 0.8 of full scale.
inline torch::Tensor smooth_images(int64_t n, int64_t size, uint64_t seed, double brightness) {
  torch::manual_seed(seed);
  auto coarse = torch::rand({n, 3, 6, 6}, torch::kFloat) * 0.8 + brightness;
  auto img = torch::nn::functional::interpolate(
      coarse, torch::nn::functional::InterpolateFuncOptions()
                  .size(std::vector<int64_t>{size, size})
                  .mode(torch::kBilinear)
                  .align_corners(false));
  return (img.clamp(0, 1) * 255).round().to(torch::kByte).permute({0, 2, 3, 1}).contiguous();
}

/// Writes the weights of fixture folder `dir` (default: the first inception_fid one) as a
/// safetensors file a user's converted pt_inception would be.
inline void write_fixture_inception_weights(const std::string& path,
                                            std::filesystem::path dir = {}) {
  if (dir.empty()) dir = first_inception_fixture();
  if (dir.empty()) throw std::runtime_error("no inception_fid folder under " + (fixtures_dir() / "eval").string());
  const auto w = fixture_inception_weights(dir);
  save_safetensors(path, std::vector<std::pair<std::string, torch::Tensor>>(w.begin(), w.end()));
}

}  // namespace aim::test
