#include "aim/data/sampler.h"

#include <numeric>

#include "aim/core/error.h"
#include "keyed_uniform.h"  // kernels/: the one splitmix64

namespace aim {

uint64_t splitmix64(uint64_t x) { return kernels::splitmix64_step(x); }

DistributedSampler::DistributedSampler(int64_t num_samples, int64_t rank, int64_t world_size,
                                       bool shuffle, uint64_t seed)
    : num_samples_(num_samples), rank_(rank), world_size_(world_size), shuffle_(shuffle), seed_(seed) {
  AIM_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "sampler: rank ", rank,
            " outside world size ", world_size);
  AIM_CHECK(num_samples >= world_size, "sampler: ", num_samples, " samples cannot be shared by ",
            world_size, " ranks");
}

std::vector<int64_t> DistributedSampler::indices(int64_t epoch) const {
  std::vector<int64_t> order(static_cast<size_t>(num_samples_));
  std::iota(order.begin(), order.end(), 0);
  if (shuffle_) {
    // Fisher-Yates driven by splitmix64 from (seed, epoch): identical on every rank.
    uint64_t state = splitmix64(seed_ ^ splitmix64(static_cast<uint64_t>(epoch) + 0x5eedull));
    for (int64_t i = num_samples_ - 1; i > 0; --i) {
      state = splitmix64(state);
      const auto j = static_cast<int64_t>(state % static_cast<uint64_t>(i + 1));
      std::swap(order[i], order[j]);
    }
  }
  std::vector<int64_t> mine;
  mine.reserve(static_cast<size_t>(per_rank()));
  const int64_t total = per_rank() * world_size_;
  for (int64_t k = rank_; k < total; k += world_size_) mine.push_back(order[k]);
  return mine;
}

int64_t DistributedSampler::augmentation(int64_t sample, int64_t epoch, int64_t num_aug) const {
  if (num_aug <= 1) return 0;
  const uint64_t h = splitmix64(seed_ ^ splitmix64(static_cast<uint64_t>(epoch) * 0x100000001b3ull +
                                                   static_cast<uint64_t>(sample)));
  return static_cast<int64_t>(h % static_cast<uint64_t>(num_aug));
}

}  // namespace aim
