// Activation checkpointing (AimBackboneImpl::recompute_every, train.recompute_every): the loss
// and every gradient equal those of the plain backward, for both mixers, both adaLN forms, fp32
// and bf16 autocast, every block or every other one; and the tensors kept between the forward
// and the backward, and the step's peak, shrink as they should (CPU allocations counted through
// c10's memory-reporting hook).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include <c10/core/Allocator.h>
#include <c10/util/ThreadLocalDebugInfo.h>

#include "aim/core/autocast.h"
#include "aim/core/config.h"
#include "aim/model/aim.h"
#include "test_util.h"

namespace aim {
namespace {

struct Step {
  torch::Tensor loss;
  std::vector<std::pair<std::string, torch::Tensor>> grads;
};

Step train_step(AimModel& m, const torch::Tensor& tokens, const torch::Tensor& labels, bool bf16,
                int64_t recompute_every) {
  m->backbone->recompute_every = recompute_every;
  m->zero_grad();
  torch::manual_seed(3);  // class and token dropout draw the same in every run
  torch::Tensor loss;
  {
    AutocastScope autocast(bf16, torch::kCPU);
    loss = m->loss(tokens, labels);
  }
  loss.backward();
  Step s;
  s.loss = loss.detach().clone();
  for (const auto& p : m->named_parameters()) {
    if (p.value().grad().defined()) s.grads.emplace_back(p.key(), p.value().grad().clone());
  }
  return s;
}

using Case = std::tuple<std::string, bool, bool>;  // mixer, adaLN-group, bf16

class Recompute : public ::testing::TestWithParam<Case> {};

TEST_P(Recompute, LossAndEveryGradientEqualThePlainBackward) {
  const auto& [layer, group, bf16] = GetParam();
  torch::manual_seed(0);
  AimModel m(test::tiny_model_config(group, layer));
  m->train();
  // Weights away from their initialisation (zero gates and biases would hide terms).
  {
    torch::NoGradGuard ng;
    for (auto& p : m->parameters()) p.add_(torch::randn_like(p) * 0.05);
  }
  const auto tokens = torch::randint(0, m->config.vocab_size, {3, m->config.num_tokens + 1});
  const auto labels = torch::randint(0, m->config.num_classes, {3});
  const auto plain = train_step(m, tokens, labels, bf16, 0);
  ASSERT_EQ(plain.grads.size(), m->parameters().size());
  for (const int64_t every : {1, 2}) {
    const auto r = train_step(m, tokens, labels, bf16, every);
    // The same ops on the same inputs: the same bits. The parameters' gradients are summed in
    // the same order (one contribution per block), so they match exactly as well. Except, under
    // bf16 autocast on some CPUs (seen: an AVX-512 Xeon without AVX512-BF16, Mamba1 with an adaLN
    // per layer), the embeddings' gradients, which sum every position's and sample's: there they
    // differ in the last bits of the fp32 sums (2.4e-8 of the largest), so bf16 cases allow 1e-6.
    EXPECT_TRUE(torch::equal(r.loss, plain.loss)) << "every " << every << ": " << r.loss.item<double>() << " vs "
                                                  << plain.loss.item<double>();
    ASSERT_EQ(r.grads.size(), plain.grads.size()) << "every " << every;
    for (size_t i = 0; i < r.grads.size(); ++i) {
      const auto& [name, g] = r.grads[i];
      const auto& want = plain.grads[i].second;
      ASSERT_EQ(name, plain.grads[i].first);
      const double diff = (g - want).abs().max().item<double>(), top = want.abs().max().item<double>();
      const bool embedding = name.find("embeddings.") != std::string::npos;
      EXPECT_TRUE(bf16 && embedding ? diff <= 1e-6 * top : torch::equal(g, want))
          << name << " (every " << every << "): max|diff| " << diff << " of max|grad| " << top;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, Recompute,
                         ::testing::Combine(::testing::Values("Mamba2", "Mamba1"), ::testing::Bool(),
                                            ::testing::Bool()),
                         [](const auto& info) {
                           return std::get<0>(info.param) + (std::get<1>(info.param) ? "_group" : "_perlayer") +
                                  (std::get<2>(info.param) ? "_bf16" : "_fp32");
                         });

/// CPU tensor memory of this thread while in scope: c10's CPU allocator reports every
/// allocation and free, with its running total, to the memory-reporting debug info.
class CpuMemoryWatch : public c10::MemoryReportingInfoBase {
 public:
  void reportMemoryUsage(void*, int64_t, size_t total_allocated, size_t, c10::Device device) override {
    if (!device.is_cpu()) return;
    current = static_cast<int64_t>(total_allocated);
    peak = std::max(peak, current);
  }
  bool memoryProfilingEnabled() const override { return true; }
  int64_t current = 0, peak = 0;
};

struct Memory {
  int64_t kept = 0;  ///< held between the forward and the backward, above the start
  int64_t peak = 0;  ///< highest during forward + backward, above the start
};

Memory measure_step(AimModel& m, const torch::Tensor& tokens, const torch::Tensor& labels, int64_t every) {
  m->backbone->recompute_every = every;
  m->zero_grad();
  auto watch = std::make_shared<CpuMemoryWatch>();
  c10::DebugInfoGuard guard(c10::DebugInfoKind::PROFILER_STATE, watch);
  // The first report gives the base; a scratch allocation makes one.
  { auto scratch = torch::empty({1}); }
  const int64_t base = watch->current;
  watch->peak = base;
  auto loss = m->loss(tokens, labels);
  Memory mem;
  mem.kept = watch->current - base;
  loss.backward();
  mem.peak = watch->peak - base;
  return mem;
}

TEST(RecomputeMemory, KeepsTheBlockInputsOnly) {
  // 8 layers of width 64, 8 sequences of 64 tokens, fp32. Without recomputation a block keeps
  // dozens of [B, L, *] tensors for its backward; with it, its inputs (hidden, and the residual
  // the previous block returned), 2 x B x L x D x 4 bytes = 256 KiB, with the rest of the step
  // (embeddings, final norm, logits and loss) unchanged.
  ModelConfig c = test::tiny_model_config(true, "Mamba2");
  c.n_layer = 8;
  c.resolve();
  c.validate();
  torch::manual_seed(0);
  AimModel m(c);
  m->train();
  const auto tokens = torch::randint(0, c.vocab_size, {8, c.num_tokens + 1});
  const auto labels = torch::randint(0, c.num_classes, {8});
  measure_step(m, tokens, labels, 0);  // first-use allocations (grads) out of the way
  const auto plain = measure_step(m, tokens, labels, 0);
  const auto every = measure_step(m, tokens, labels, 1);
  const auto half = measure_step(m, tokens, labels, 2);
  std::printf("    kept after the forward: plain %.2f MiB, every block %.2f MiB, every other %.2f MiB\n"
              "    peak of the step:       plain %.2f MiB, every block %.2f MiB, every other %.2f MiB\n",
              plain.kept / 1048576.0, every.kept / 1048576.0, half.kept / 1048576.0, plain.peak / 1048576.0,
              every.peak / 1048576.0, half.peak / 1048576.0);
  const int64_t block_bytes = 8 * 64 * 64 * 4;  // one [B, L, D] fp32 tensor
  const int64_t per_block_plain = (plain.kept - every.kept) / c.n_layer;
  // What a plain block keeps, besides its inputs, is several [B, L, D]-sized tensors; the
  // recomputed one keeps none of them.
  EXPECT_GT(per_block_plain, 4 * block_bytes);
  EXPECT_LT(every.kept, plain.kept / 2);
  // Every other block: about half the savings.
  EXPECT_NEAR(static_cast<double>(plain.kept - half.kept) / static_cast<double>(plain.kept - every.kept), 0.5, 0.1);
  EXPECT_LT(every.peak, plain.peak);
}

}  // namespace
}  // namespace aim
