// The Mamba2 mixer on the CPU kernels (conv1d, SSD scan, gated RMSNorm) gives the references'
// output and gradients (input and every parameter; ops::set_cpu_kernels(false)), with and
// without the gated norm. Its backward concatenates nothing: the kernels write the gradients of
// in_proj's parts (z, x B C, dt) into their places in one buffer (ops::split_grad_slot); an
// ATen consumer's gradient (y * silu(z) without the norm) is copied there.
//
// Tolerance, max|a - b| / max|b|: 1e-4 in fp32 (the same math in another order: chunked
// reference scan against the per-head recurrence, sums over 2 x 65 rows).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include "aim/core/config.h"
#include "aim/model/mamba2.h"
#include "aim/ops/dispatch.h"
#include "test_util.h"

namespace aim {
namespace {

struct Grads {
  torch::Tensor out;
  std::vector<std::pair<std::string, torch::Tensor>> grads;  ///< "u" then parameters
  int cats = 0;                                              ///< aten::cat in the backward
};

Grads run(Mamba2Mixer& mixer, const torch::Tensor& u0, const torch::Tensor& g, bool kernels) {
  ops::set_cpu_kernels(kernels);
  mixer->zero_grad();
  auto u = u0.detach().clone().requires_grad_(true);
  auto out = mixer->forward(u);
  Grads r;
  {
    test::OpCounter cats("aten::cat");
    out.backward(g);
    r.cats = cats.count();
  }
  r.out = out.detach();
  r.grads.emplace_back("u", u.grad());
  for (const auto& p : mixer->named_parameters()) r.grads.emplace_back(p.key(), p.value().grad().clone());
  return r;
}

class Mamba2Cpu : public ::testing::TestWithParam<bool> {
 protected:
  void TearDown() override { ops::set_cpu_kernels(true); }
};

TEST_P(Mamba2Cpu, KernelsGiveTheReferencesGradientsWithoutConcatenating) {
  const bool rmsnorm = GetParam();
  const std::string tag = rmsnorm ? "norm" : "no norm";
  torch::manual_seed(31);
  SsmConfig ssm;
  ssm.d_state = 16;
  ssm.headdim = 16;
  ssm.ngroups = 2;
  ssm.chunk_size = 32;
  ssm.rmsnorm = rmsnorm;
  Mamba2Mixer mixer(Mamba2MixerOptions(64, ssm));
  const auto u = torch::randn({2, 65, 64});
  const auto g = torch::randn({2, 65, 64});

  const auto ref = run(mixer, u, g, false);
  const auto mine = run(mixer, u, g, true);
  EXPECT_EQ(mine.cats, 0) << tag;
  test::expect_close(tag + " out", mine.out, ref.out, 1e-4);
  ASSERT_EQ(mine.grads.size(), ref.grads.size());
  for (size_t i = 0; i < mine.grads.size(); ++i) {
    ASSERT_TRUE(mine.grads[i].second.defined()) << tag << " " << mine.grads[i].first;
    test::expect_close(tag + " d" + mine.grads[i].first, mine.grads[i].second, ref.grads[i].second, 1e-4);
  }
}

INSTANTIATE_TEST_SUITE_P(GatedNorm, Mamba2Cpu, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Norm" : "NoNorm"; });

}  // namespace
}  // namespace aim
