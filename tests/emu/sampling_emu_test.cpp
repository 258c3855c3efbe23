// The fused guidance + temperature + top-k + top-p + draw kernel (kernels/sample_tokens*.cu[h])
// run by the CPU emulator through the CUDA adapter's own code (src/ops/sampling_cuda.cpp), with
// the GPU test's grid check (test::check_sample_grid: the fp64 oracle and the CPU reference,
// every setting, vocabularies 16384 / 1000 / 33, fp32 and bf16, with and without guidance) at 1
// and 7 rows; the device-computed uniforms equal sample_uniform bit for bit; a step read from a
// tensor (as a replayed CUDA graph reads its counter) gives the tokens of the scalar step.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>

#include "aim/ops/sampling.h"
#include "aim/sample/generate.h"
#include "emu_test_util.h"
#include "ops/sampling_cuda.h"
#include "ops/sampling_oracle.h"

namespace aim {
namespace {

namespace emu_t = test::emu;

class SampleTokensEmu : public emu_t::EmulatedKernelTest<::testing::TestWithParam<test::GridCase>> {};

TEST_P(SampleTokensEmu, TokensEqualTheDefinition) {
  test::check_sample_grid(
      GetParam(), torch::kCPU, {1, 7},
      [](const torch::Tensor& cond, const torch::Tensor& uncond, double cfg, double temperature,
         int64_t top_k, double top_p, uint64_t seed, const torch::Tensor& ids, int64_t step) {
        return ops::cuda_emu::sample_tokens_keyed(cond, uncond, cfg, temperature, top_k, top_p,
                                                  seed, ids, step, {});
      },
      [](const torch::Tensor& cond, const torch::Tensor& uncond, const test::Settings& s) {
        return ops::cuda_emu::sample_tokens_keyed_supported(cond, uncond, s.temperature, s.top_k,
                                                            s.top_p);
      });
}

INSTANTIATE_TEST_SUITE_P(Kernel, SampleTokensEmu,
                         ::testing::Values(test::GridCase{torch::kFloat, false},
                                           test::GridCase{torch::kFloat, true},
                                           test::GridCase{torch::kBFloat16, false},
                                           test::GridCase{torch::kBFloat16, true}),
                         [](const auto& info) {
                           return emu_t::dtype_tag(info.param.dtype) +
                                  (info.param.guided ? "_cfg" : "_plain");
                         });

class SampleTokensEmuDevice : public emu_t::EmulatedKernelTest<> {};

TEST_F(SampleTokensEmuDevice, UniformIsSampleUniform) {
  // Small and large sample ids, negative ones too: the hash takes any int64.
  std::vector<int64_t> id{0, 1, 2, 77, 4095, -1, -123456789, INT64_MAX, INT64_MIN + 5};
  const auto ids = torch::tensor(id, torch::kLong);
  const auto cond = torch::randn({ids.size(0), 2});
  int64_t checked = 0, differ = 0;
  for (uint64_t seed : {0ull, 0xdeadbeefull, ~0ull}) {
    for (int64_t step : {int64_t{0}, int64_t{255}, (int64_t{1} << 40) + 3}) {
      auto uniforms = torch::empty({ids.size(0)}, torch::kDouble);
      ops::cuda_emu::sample_tokens_keyed(cond, {}, 1.0, 1.0, 0, 1.0, seed, ids, step, {}, uniforms);
      for (size_t b = 0; b < id.size(); ++b) {
        const double want = sample_uniform(seed, id[b], step);
        const double have = uniforms[static_cast<int64_t>(b)].item<double>();
        differ += std::memcmp(&want, &have, sizeof(double)) != 0;
        ++checked;
      }
    }
  }
  EXPECT_EQ(differ, 0) << "of " << checked;
}

TEST_F(SampleTokensEmuDevice, StepFromATensorEqualsTheScalar) {
  torch::manual_seed(6);
  auto [cond, uncond] = test::make_logits(4, 16384, torch::kBFloat16, true, torch::kCPU);
  const auto ids = torch::arange(100, 104, torch::kLong);
  for (const test::Settings& s : {test::Settings{1.0, 0, 1.0}, test::Settings{1.0, 50, 0.9},
                                  test::Settings{0.8, 0, 0.95}}) {
    for (int64_t t : {0, 1, 200}) {
      const auto counter = torch::full({}, t, torch::kLong);
      const auto a = ops::cuda_emu::sample_tokens_keyed(cond, uncond, 4.0, s.temperature, s.top_k,
                                                        s.top_p, 3, ids, /*step_value=*/999, counter);
      const auto b = ops::cuda_emu::sample_tokens_keyed(cond, uncond, 4.0, s.temperature, s.top_k,
                                                        s.top_p, 3, ids, t, {});
      EXPECT_TRUE(torch::equal(a, b)) << test::describe(s) << " step " << t;
    }
  }
}

}  // namespace
}  // namespace aim
