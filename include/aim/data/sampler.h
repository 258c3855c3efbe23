#pragma once
// Which samples a rank sees in an epoch, with torch's DistributedSampler semantics: a seeded
// permutation per epoch (seed + epoch), the first floor(N / world) * world entries kept
// (drop_last), rank r taking positions r, r + world, ... Every sample appears at most once per
// epoch across ranks, and exactly once when N is a multiple of world. Deterministic on every
// platform (own RNG, not std::shuffle).
#include <cstdint>
#include <vector>

namespace aim {

/// splitmix64: a small, well-mixed, portable 64-bit hash/generator step.
uint64_t splitmix64(uint64_t x);

class DistributedSampler {
 public:
  DistributedSampler(int64_t num_samples, int64_t rank, int64_t world_size, bool shuffle,
                     uint64_t seed);
  /// This rank's sample indices for `epoch`, in order.
  std::vector<int64_t> indices(int64_t epoch) const;
  /// Samples per rank per epoch.
  int64_t per_rank() const { return num_samples_ / world_size_; }
  /// Augmentation of `sample` in `epoch`, uniform in [0, num_aug), independent of rank count.
  int64_t augmentation(int64_t sample, int64_t epoch, int64_t num_aug) const;

 private:
  int64_t num_samples_, rank_, world_size_;
  bool shuffle_;
  uint64_t seed_;
};

}  // namespace aim
