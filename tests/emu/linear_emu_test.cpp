// The small-batch linear kernel (kernels/skinny_linear.cu) run by the CPU emulator through its
// adapter (src/ops/linear_cuda.cpp) with the GPU test's check (tests/ops/linear_cases.h), and
// the shapes and tensors it refuses, for which ops::linear runs torch's linear.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "aim/ops/dispatch.h"
#include "aim/ops/linear.h"
#include "emu_test_util.h"
#include "ops/linear_cases.h"
#include "ops/linear_cuda.h"

namespace aim {
namespace {

namespace emu_t = test::emu;

class LinearEmu : public emu_t::EmulatedKernelTest<::testing::TestWithParam<test::LinearCase>> {};

TEST_P(LinearEmu, MatchesTheProductInFp64) {
  const auto launches = ::emu::launch_count();
  test::check_linear(GetParam(), torch::kCPU, ops::cuda_emu::linear, ops::cuda_emu::linear_supported);
  EXPECT_EQ(::emu::launch_count() - launches, 2u) << "one launch per call";
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinearEmu, ::testing::ValuesIn(test::linear_cases()),
                         [](const auto& info) { return test::linear_case_name(info.param); });

// What the kernel does not take goes to torch's linear through ops::linear, with its result.
TEST(LinearEmuDispatch, RefusedCasesRunTorchsLinear) {
  const auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16);
  const auto w = torch::randn({24, 64}).to(bf16);
  struct Refused {
    const char* what;
    torch::Tensor x, w;
  };
  const std::vector<Refused> refused{
      {"65 rows", torch::randn({65, 64}).to(bf16), w},
      {"K not a multiple of 32", torch::randn({4, 40}).to(bf16), torch::randn({24, 40}).to(bf16)},
      {"fp32", torch::randn({4, 64}), w.to(torch::kFloat)},
      {"a gradient asked", torch::randn({4, 64}).to(bf16).requires_grad_(true), w},
      {"x's rows off 16-byte boundaries", torch::randn({4, 66}).to(bf16).narrow(1, 2, 64), w},
  };
  for (const auto& r : refused) {
    EXPECT_FALSE(ops::cuda_emu::linear_supported(r.x, r.w, {})) << r.what;
    const auto launches = ::emu::launch_count();
    const auto out = ops::linear(r.x, r.w);
    EXPECT_EQ(::emu::launch_count(), launches) << r.what << ": a kernel ran";
    EXPECT_TRUE(torch::equal(out, torch::nn::functional::linear(r.x, r.w))) << r.what;
  }
  // And what it takes goes to the kernel, unless AIM_SMALL_LINEAR=0; another value is an error
  // that names the variable.
  const auto x = torch::randn({4, 64}).to(bf16);
  auto launches = ::emu::launch_count();
  ops::linear(x, w);
  EXPECT_EQ(::emu::launch_count() - launches, 1u);
  {
    const test::ScopedEnv off("AIM_SMALL_LINEAR", "0");
    launches = ::emu::launch_count();
    EXPECT_TRUE(torch::equal(ops::linear(x, w), torch::nn::functional::linear(x, w)));
    EXPECT_EQ(::emu::launch_count(), launches) << "AIM_SMALL_LINEAR=0: a kernel ran";
  }
  test::expect_env_value_refused("AIM_SMALL_LINEAR", "yes", [&] { ops::linear(x, w); });
}

// Inside a decoding step's scope (aim/ops/dispatch.h) the kernel launches as a dependent of the
// previous kernel, prefetching its weight slices (in bounds: the sanitizer checks the ranges);
// outside it, or with AIM_PDL=0, plainly. The same bits either way.
TEST(LinearEmuDispatch, DependentLaunchesOnlyInsideADecodingStep) {
  const auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16);
  const auto x = torch::randn({3, 96}).to(bf16), w = torch::randn({40, 96}).to(bf16);
  const auto b = torch::randn({40}).to(bf16);
  const auto plain = ops::linear(x, w, b);
  EXPECT_FALSE(::emu::last_launch_dependent());
  {
    const ops::DependentLaunchScope scope;
    EXPECT_TRUE(ops::dependent_launch_enabled());
    const auto dependent = ops::linear(x, w, b);
    EXPECT_TRUE(::emu::last_launch_dependent());
    EXPECT_TRUE(torch::equal(dependent, plain));
    {
      const test::ScopedEnv off("AIM_PDL", "0");
      EXPECT_TRUE(torch::equal(ops::linear(x, w, b), plain));
      EXPECT_FALSE(::emu::last_launch_dependent());
    }
    test::expect_env_value_refused("AIM_PDL", "on", [&] { ops::linear(x, w, b); });
  }
  EXPECT_FALSE(ops::dependent_launch_enabled());
}

// Blocks past the first wave (two per SM) find their weights in L2: every block asks for the
// slice of the block one wave after it, the last one partial here (200 features: 13 blocks of
// 16, on 2 emulated SMs a wave of 4). In bounds (the sanitizer checks the ranges), and the same
// bits as with every block in the first wave.
TEST(LinearEmuDispatch, BlocksPrefetchTheSliceOneWaveLater) {
  const auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16);
  const int64_t k = 96, n = 200;
  const auto x = torch::randn({3, k}).to(bf16), w = torch::randn({n, k}).to(bf16);
  const int64_t row = k * 2;  // bytes of one weight row
  auto before = ::emu::prefetched_bytes();
  const auto one_wave = ops::linear(x, w);
  EXPECT_EQ(::emu::prefetched_bytes() - before, 0u) << "25 blocks of 8 fit a wave of 264: nothing ahead";
  struct SmCount {  // 2 SMs until the test ends
    int saved = ::emu::device().sm_count;
    SmCount() { ::emu::device().sm_count = 2; }
    ~SmCount() { ::emu::device().sm_count = saved; }
  };
  const SmCount two_sms;
  before = ::emu::prefetched_bytes();
  const auto waves = ops::linear(x, w);
  const uint64_t ahead = ::emu::prefetched_bytes() - before;
  {
    // Inside a decoding step each block also asks for its own slice first.
    const ops::DependentLaunchScope scope;
    before = ::emu::prefetched_bytes();
    EXPECT_TRUE(torch::equal(ops::linear(x, w), one_wave));
    EXPECT_EQ(::emu::prefetched_bytes() - before, ahead + static_cast<uint64_t>(n * row));
  }
  EXPECT_EQ(::emu::last_launch_grid().x, 13u);
  // Blocks 0..8 ask for blocks 4..12: eight slices of 16 rows and the last one's 8.
  EXPECT_EQ(ahead, static_cast<uint64_t>((8 * 16 + 8) * row));
  EXPECT_TRUE(torch::equal(waves, one_wave));
}

}  // namespace
}  // namespace aim
