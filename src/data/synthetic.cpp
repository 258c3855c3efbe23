#include "aim/data/synthetic.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "aim/core/error.h"
#include "aim/data/code_dataset.h"
#include "aim/data/sampler.h"

namespace aim {

namespace {
constexpr int64_t kStartTokens = 8;

/// Uniform integer in [0, n) from a hash of (seed, a, b, c).
int64_t draw(uint64_t seed, uint64_t a, uint64_t b, uint64_t c, int64_t n) {
  const uint64_t h = splitmix64(splitmix64(splitmix64(splitmix64(seed) ^ a) ^ b) ^ c);
  return static_cast<int64_t>(h % static_cast<uint64_t>(n));
}
double unit(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  return static_cast<double>(splitmix64(splitmix64(splitmix64(splitmix64(seed ^ 0x5eed) ^ a) ^ b) ^ c) >> 11) *
         (1.0 / 9007199254740992.0);
}
}  // namespace

void write_synthetic_codes(const std::string& path, const SyntheticCodesOptions& o) {
  AIM_CHECK(o.classes >= 1 && o.classes <= 32767, str_cat("--classes: expected 1..32767, found ", o.classes));
  AIM_CHECK(o.first_index >= 0, str_cat("--first-index: expected >= 0, found ", o.first_index));
  AIM_CHECK(o.per_class >= 1, str_cat("--per-class: expected >= 1, found ", o.per_class));
  AIM_CHECK(o.tokens >= 2, str_cat("--tokens: expected >= 2, found ", o.tokens));
  AIM_CHECK(o.vocab_size >= kStartTokens && o.vocab_size <= 65536,
            str_cat("--vocab: expected 8..65536, found ", o.vocab_size));
  AIM_CHECK(o.follow >= 0.0 && o.follow <= 1.0, str_cat("--follow: expected [0, 1], found ", o.follow));
  CodeDatasetInfo info;
  info.num_samples = o.classes * o.per_class;
  info.num_aug = 1;
  info.tokens = o.tokens;
  info.vocab_size = o.vocab_size;
  info.image_size = 0;
  info.aug = "none";
  for (int64_t c = 0; c < o.classes; ++c) info.classes.push_back(str_cat("chain", c));
  info.tokenizer = "none (synthetic Markov-chain codes)";
  info.source = str_cat("synthetic codes: ", o.classes, " classes x ", o.per_class, ", follow ", o.follow,
                        ", seed ", o.seed);
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    AIM_CHECK(!ec, str_cat("--out ", path, ": cannot create ", parent.string(), ": ", ec.message()));
  }
  auto writer = CodeDatasetWriter::create(path, info);
  const int64_t n = info.num_samples;
  // In chunks: memory stays constant whatever --per-class asks for.
  constexpr int64_t kChunk = 16384;
  for (int64_t first = 0; first < n; first += kChunk) {
    const int64_t count = std::min(kChunk, n - first);
    auto codes = torch::empty({count, 1, o.tokens}, torch::kInt32);
    auto labels = torch::empty({count}, torch::kInt64);
    auto* cp = codes.data_ptr<int32_t>();
    auto* lp = labels.data_ptr<int64_t>();
    for (int64_t k = 0; k < count; ++k) {
      const int64_t i = first + k;
      const int64_t c = i % o.classes;  // classes interleaved
      lp[k] = c;
      const uint64_t id = static_cast<uint64_t>(o.first_index + i);
      int64_t tok = draw(o.seed, 1, c, draw(o.seed, 2, id, 0, kStartTokens), o.vocab_size);
      cp[k * o.tokens] = static_cast<int32_t>(tok);
      for (int64_t t = 1; t < o.tokens; ++t) {
        if (unit(o.seed, 3, id, t) < o.follow) {
          tok = draw(o.seed, 4, c, tok, o.vocab_size);  // the class's successor of tok
        } else {
          tok = draw(o.seed, 5, id, t, o.vocab_size);
        }
        cp[k * o.tokens + t] = static_cast<int32_t>(tok);
      }
    }
    writer->write(first, codes, labels);
  }
  writer->sync();
  writer.reset();
  code_dataset_mark_finished(path);
}

double synthetic_codes_entropy(const SyntheticCodesOptions& o) {
  const double v = static_cast<double>(o.vocab_size);
  const double p_hit = o.follow + (1.0 - o.follow) / v, p_miss = (1.0 - o.follow) / v;
  const double step = -(p_hit * std::log(p_hit)) - (v - 1.0) * (p_miss > 0 ? p_miss * std::log(p_miss) : 0.0);
  // Start tokens: 8 draws into the vocabulary (collisions ignored: log 8 is an upper bound).
  const double first = std::log(static_cast<double>(kStartTokens));
  return (first + static_cast<double>(o.tokens - 1) * step) / static_cast<double>(o.tokens);
}

}  // namespace aim
