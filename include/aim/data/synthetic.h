#pragma once
// A synthetic class-conditional code dataset for trying the trainer without a tokenizer or
// images: each class is a Markov chain over the vocabulary (a class-specific successor of every
// token, taken with probability `follow`, otherwise a uniform token), so a model has something
// to learn and the best achievable loss is known.
#include <cstdint>
#include <string>

namespace aim {

struct SyntheticCodesOptions {
  int64_t classes = 10;
  int64_t per_class = 100;   ///< images per class
  int64_t tokens = 64;       ///< codes per image
  int64_t vocab_size = 512;
  double follow = 0.9;       ///< probability of the class's successor token
  uint64_t seed = 0;         ///< the chains (same seed = same distribution)
  int64_t first_index = 0;   ///< per-sequence randomness starts here: a held-out split of the
                             ///< same distribution uses the same seed and an unused range
};

/// Writes the dataset (AIMCODE1, one augmentation) to `path`, replacing a file there.
void write_synthetic_codes(const std::string& path, const SyntheticCodesOptions& options);

/// Expected per-token cross-entropy (nats) of the true distribution: the floor a perfect
/// model reaches, averaged over the positions of an image (the first token is uniform over the
/// class's 8 start tokens).
double synthetic_codes_entropy(const SyntheticCodesOptions& options);

}  // namespace aim
