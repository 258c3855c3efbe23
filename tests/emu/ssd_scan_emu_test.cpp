// The Mamba2 SSD scan kernels (kernels/ssd_scan_*.cuh) run by the CPU emulator through the CUDA
// adapter's own code (src/ops/ssd_scan_cuda.cpp: tiling, buffers, the partial sums and their
// reductions, the autograd function), with the GPU test's check (test::check_ssd_scan) on its
// edge cases (batch 1, L around the chunk of 32, ngroups 2 and 4, d_state 16 / 40 / 64 / 256,
// headdim 32 / 96 / 128, D per head, per channel or none, no dt_bias, no softplus, an initial
// state) and on one AiM-shaped mixer with fewer heads. The one-token update kernel
// (kernels/ssd_state_update_kernel.cuh), fed a sequence token by token through its adapter,
// gives the reference scan's y and final state. The fused step (kernels/ssd_step.cu: conv
// update, state update and gated norm in one launch, the last block of each sequence finishing
// it) equals the three reference ops, with its heads split over blocks and whole.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <utility>

#include "aim/ops/conv1d.h"
#include "aim/ops/ssd_scan.h"
#include "emu_test_util.h"
#include "ops/ssd_cases.h"
#include "ops/ssd_step_cases.h"
#include "ops/conv1d_cuda.h"
#include "ops/ssd_scan_cuda.h"

namespace aim {
namespace {

using test::DMode;
using test::SsdCase;
namespace emu_t = test::emu;

// The scan through the emulated kernels, as test::check_ssd_scan calls it.
ops::SsdScanResult emulated_scan(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                                 const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D,
                                 const torch::Tensor& dt_bias, bool softplus, const torch::Tensor& init,
                                 bool return_final) {
  return ops::cuda_emu::ssd_scan(x, dt, A, Bm, Cm, D, dt_bias, softplus, init, return_final);
}

// With `var`=`value` in the environment the scan refuses to run, naming the variable and the
// value found.
void expect_env_value_refused(const char* var, const std::string& value) {
  const auto x = torch::randn({1, 8, 2, 32}), dt = torch::rand({1, 8, 2}), A = -torch::rand({2});
  const auto Bm = torch::randn({1, 8, 1, 16}), Cm = torch::randn({1, 8, 1, 16});
  test::expect_env_value_refused(var, value,
                                 [&] { ops::cuda_emu::ssd_scan(x, dt, A, Bm, Cm, {}, {}, true, {}, false); });
}

class SsdScanEmu : public emu_t::EmulatedKernelTest<::testing::TestWithParam<SsdCase>> {};

TEST_P(SsdScanEmu, ForwardAndBackwardMatchTheReference) {
  test::check_ssd_scan(GetParam(), torch::kCPU,
                       [](const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                          const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D,
                          const torch::Tensor& dt_bias, bool softplus, const torch::Tensor& init,
                          bool return_final) {
                         EXPECT_TRUE(ops::cuda_emu::ssd_scan_supported(x, dt, A, Bm, Cm, D,
                                                                       dt_bias, init));
                         return ops::cuda_emu::ssd_scan(x, dt, A, Bm, Cm, D, dt_bias, softplus,
                                                        init, return_final);
                       });
}

std::vector<SsdCase> cases() {
  std::vector<SsdCase> out;
  for (const auto& c : test::ssd_cases()) {
    if (c.edge) out.push_back(c);
  }
  // An AiM mixer (L = 257, P 64, N 128) with 3 heads instead of 24-64.
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    out.push_back({2, 257, 3, 64, 1, 128, DMode::kHead, true, true, false, true, dtype});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, SsdScanEmu, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return test::case_name(info.param); });

// AIM_SSD_ELEMENT_LOADS=1 (a benchmark's comparison) loads aligned inputs element by element: the
// same results; a value other than 0 or 1 is an error naming the variable.
TEST(SsdScanEmuConfig, ElementLoadsOnAlignedInputsMatchTheReference) {
  const test::ScopedEnv element("AIM_SSD_ELEMENT_LOADS", "1");
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    const SsdCase c{1, 65, 2, 64, 1, 128, DMode::kHead, true, true, true, true, dtype, true};
    test::check_ssd_scan(c, torch::kCPU,
                         emulated_scan);
  }
  expect_env_value_refused("AIM_SSD_ELEMENT_LOADS", "yes");
}

// AIM_SSD_SCAN=tiles (a benchmark's comparison) runs the kernels that keep the state in shared
// memory where the register-state ones apply (bf16 on 16-byte boundaries, d_state <= 128, which the
// cases above run on the register kernels): the bf16 edge cases on them. A value other than regs
// or tiles is an error naming the variable.
class SsdScanTilesEmu : public emu_t::EmulatedKernelTest<::testing::TestWithParam<SsdCase>> {};

TEST_P(SsdScanTilesEmu, SharedMemoryStateKernelsMatchTheReference) {
  const test::ScopedEnv tiles("AIM_SSD_SCAN", "tiles");
  test::check_ssd_scan(GetParam(), torch::kCPU,
                       emulated_scan);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SsdScanTilesEmu, ::testing::ValuesIn(test::ssd_register_kernel_cases()),
                         [](const auto& info) { return test::case_name(info.param); });

TEST(SsdScanEmuConfig, AMalformedKernelChoiceNamesTheVariable) {
  expect_env_value_refused("AIM_SSD_SCAN", "fast");
}

// ---------------------------------------------------------------- pairs of slices

// The register backward adds the dB / dC of two slices (h, P tile) of a group in one block where
// a group's heads x P tiles pair up (kernels::ssd_scan_bwd_slice_pairs); the cases above run it.
// Here: the launch it chose (a block of twice the warps, half the blocks along x), and the
// block per slice that AIM_SSD_BWD_PAIRS=0 asks for.
class SsdScanPairsEmu : public emu_t::EmulatedKernelTest<> {
 protected:
  // The grid's x and the block's threads of the backward's last launch for case `c`.
  static std::pair<unsigned, unsigned> backward_launch(const SsdCase& c) {
    torch::manual_seed(2);
    const auto in = test::make_inputs(c, torch::kCPU);
    auto r = ops::cuda_emu::ssd_scan(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, in.dt_bias, c.softplus, {}, false);
    torch::autograd::grad({r.y}, {in.proj}, {test::randn(r.y.sizes(), c.dtype, torch::kCPU)});
    return {::emu::last_launch_grid().x, ::emu::last_launch_block().x};
  }
};

TEST_F(SsdScanPairsEmu, ABlockAddsTwoSlicesWhereTheyPairUp) {
  using Launch = std::pair<unsigned, unsigned>;
  auto bf16 = [](int64_t heads, int64_t hdim, int64_t groups) {
    return SsdCase{1, 33, heads, hdim, groups, 64, DMode::kHead, true, true, false, true, torch::kBFloat16, true};
  };
  // 4 heads of P 64 in one group: 2 blocks of 2 x 4 warps.
  EXPECT_EQ(backward_launch(bf16(4, 64, 1)), Launch(2, 256));
  // 2 heads of P 128 (2 P tiles each): a head's two tiles in a block.
  EXPECT_EQ(backward_launch(bf16(2, 128, 1)), Launch(2, 256));
  // 4 heads of P 32 in 4 groups: one slice per group, nothing to pair (2 warps per block).
  EXPECT_EQ(backward_launch(bf16(4, 32, 4)), Launch(4, 64));
  // 3 heads: an odd count.
  EXPECT_EQ(backward_launch(bf16(3, 64, 1)), Launch(3, 128));
  const test::ScopedEnv unpaired(test::kPairsEnv, "0");
  EXPECT_EQ(backward_launch(bf16(4, 64, 1)), Launch(4, 128));
}

TEST_F(SsdScanPairsEmu, AMalformedPairsChoiceNamesTheVariable) {
  const SsdCase c{1, 8, 2, 32, 1, 16, DMode::kNone, true, true, false, true, torch::kBFloat16, true};
  test::expect_env_value_refused(test::kPairsEnv, "2", [&] { backward_launch(c); });
}

class SsdScanUnpairedEmu : public emu_t::EmulatedKernelTest<::testing::TestWithParam<SsdCase>> {};

TEST_P(SsdScanUnpairedEmu, OneSlicePerBlockMatchesTheReference) {
  const test::ScopedEnv unpaired(test::kPairsEnv, "0");
  test::check_ssd_scan(GetParam(), torch::kCPU, emulated_scan);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SsdScanUnpairedEmu, ::testing::ValuesIn(test::ssd_unpaired_cases()),
                         [](const auto& info) { return test::case_name(info.param); });

// ---------------------------------------------------------------- clusters over heads

// The backward adds the dB / dC of a cluster of heads in distributed shared memory
// (kernels/ssd_scan.h): every cluster size, forced by AIM_SSD_BWD_CLUSTER.
class SsdScanClusterEmu : public emu_t::EmulatedKernelTest<::testing::TestWithParam<int>> {};

TEST_P(SsdScanClusterEmu, EveryClusterSizeMatchesTheReference) {
  test::check_ssd_scan_clusters(
      GetParam(), torch::kCPU, ops::cuda_emu::ssd_scan_bwd_cluster_heads,
      emulated_scan);
}

// x, B and C split from one tensor, as the mixer passes them: their gradients come back packed
// (no concatenation) with the bits of the unpacked scan.
class SsdScanPackedEmu : public emu_t::EmulatedKernelTest<> {};

TEST_F(SsdScanPackedEmu, GradientsOfASplitTensorComeBackPacked) {
  test::check_ssd_scan_packed(torch::kCPU, emulated_scan);
}

TEST(SsdScanClusterEmuConfig, AMalformedClusterSizeNamesTheVariable) {
  expect_env_value_refused(test::kClusterEnv, "3");
}

INSTANTIATE_TEST_SUITE_P(Sizes, SsdScanClusterEmu, ::testing::Values(1, 2, 4, 8),
                         [](const auto& info) { return "K" + std::to_string(info.param); });

// ---------------------------------------------------------------- one-token update

class SsdStateUpdateEmu : public emu_t::EmulatedKernelTest<::testing::TestWithParam<SsdCase>> {};

TEST_P(SsdStateUpdateEmu, TeacherForcedStepsEqualTheScan) {
  const auto c = GetParam();
  const auto tag = test::case_name(c);
  torch::manual_seed(5 + c.len + c.dstate);
  torch::NoGradGuard no_grad;
  const auto in = test::make_inputs(c, torch::kCPU);
  auto state = in.init.defined() ? in.init.clone()
                                 : torch::zeros({c.batch, c.heads, c.hdim, c.dstate}, torch::kFloat);
  std::vector<torch::Tensor> ys;
  EXPECT_TRUE(ops::cuda_emu::ssd_state_update_supported(state, in.x.select(1, 0),
                                                        in.Bm.select(1, 0), in.D));
  for (int64_t t = 0; t < c.len; ++t) {
    ys.push_back(ops::cuda_emu::ssd_state_update(state, in.x.select(1, t), in.dt.select(1, t),
                                                 in.A, in.Bm.select(1, t), in.Cm.select(1, t),
                                                 in.D, in.dt_bias, c.softplus));
  }
  auto f = [](const torch::Tensor& t) { return t.defined() ? t.to(torch::kFloat64) : t; };
  const auto rr = ops::ref::ssd_scan(f(in.x), f(in.dt), f(in.A), f(in.Bm), f(in.Cm), f(in.D),
                                     f(in.dt_bias), c.softplus, 64, f(in.init), true);
  test::ssd_close_elementwise(tag + " steps y vs scan", torch::stack(ys, 1), rr.y, c.dtype);
  test::ssd_close_elementwise(tag + " steps state vs scan", state, rr.final_state, c.dtype);
}

// A bf16 state (the decoding option): the kernel and the reference, each from its own bf16
// state, step by step; both do the math in fp32 and round the stored state once per step.
TEST_P(SsdStateUpdateEmu, Bf16StateStepsEqualTheReferenceSteps) {
  const auto c = GetParam();
  const auto tag = test::case_name(c) + " bf16 state";
  torch::manual_seed(9 + c.len + c.dstate);
  torch::NoGradGuard no_grad;
  const auto in = test::make_inputs(c, torch::kCPU);
  auto init = in.init.defined() ? in.init : torch::zeros({c.batch, c.heads, c.hdim, c.dstate});
  auto state_k = init.to(torch::kBFloat16), state_r = init.to(torch::kBFloat16);
  ASSERT_TRUE(ops::cuda_emu::ssd_state_update_supported(state_k, in.x.select(1, 0),
                                                        in.Bm.select(1, 0), in.D));
  std::vector<torch::Tensor> ys_k, ys_r;
  for (int64_t t = 0; t < c.len; ++t) {
    const auto x = in.x.select(1, t), dt = in.dt.select(1, t);
    const auto bm = in.Bm.select(1, t), cm = in.Cm.select(1, t);
    ys_k.push_back(ops::cuda_emu::ssd_state_update(state_k, x, dt, in.A, bm, cm, in.D, in.dt_bias,
                                                   c.softplus));
    ys_r.push_back(ops::ref::ssd_state_update(state_r, x, dt, in.A, bm, cm, in.D, in.dt_bias,
                                              c.softplus));
  }
  ASSERT_EQ(state_k.scalar_type(), torch::kBFloat16);
  test::ssd_close_elementwise(tag + " y", torch::stack(ys_k, 1), torch::stack(ys_r, 1), c.dtype);
  test::ssd_close_elementwise(tag + " state", state_k, state_r, torch::kBFloat16);
}

std::vector<SsdCase> step_cases() {
  std::vector<SsdCase> out;
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    // AiM's heads (P 64, N 128); ngroups 2 with D per channel; d_state 40 without D or bias;
    // no softplus.
    out.push_back({2, 12, 3, 64, 1, 128, DMode::kHead, true, true, true, true, dtype});
    out.push_back({1, 9, 4, 32, 2, 16, DMode::kChannel, true, true, true, true, dtype});
    out.push_back({1, 7, 2, 64, 1, 40, DMode::kNone, false, true, false, true, dtype});
    out.push_back({1, 7, 2, 64, 1, 64, DMode::kHead, true, false, true, true, dtype});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, SsdStateUpdateEmu, ::testing::ValuesIn(step_cases()),
                         [](const auto& info) { return test::case_name(info.param); });

// What the one-token kernels leave to the reference (the emulated table is installed for this
// whole program, so ops:: dispatch would take the kernel): a call autograd records (the kernel
// has no backward: the state update's output came back without one), and a conv state whose rows
// share memory (an expanded cache, which threads would update at once; the reference refuses it).
class OneTokenFallbackEmu : public emu_t::EmulatedKernelTest<> {};

TEST_F(OneTokenFallbackEmu, RecordedCallsAndSharedStatesGoToTheReference) {
  torch::manual_seed(8);
  auto state = torch::zeros({2, 2, 8, 4});
  const auto x = torch::randn({2, 2, 8}), dt = torch::rand({2, 2}), A = -torch::rand({2});
  const auto Bm = torch::randn({2, 1, 4}), Cm = torch::randn({2, 1, 4});
  const auto D = torch::randn({2}, torch::requires_grad());
  ASSERT_TRUE(ops::cuda_emu::ssd_state_update_supported(state, x, Bm, D));
  const auto y = ops::ssd_state_update(state, x, dt, A, Bm, Cm, D, torch::Tensor(), true);
  EXPECT_TRUE(y.requires_grad()) << "the emulated kernel ran: no backward";
  {
    torch::NoGradGuard no_grad;
    auto again = torch::zeros({2, 2, 8, 4});
    const auto y_kernel = ops::ssd_state_update(again, x, dt, A, Bm, Cm, D, torch::Tensor(), true);
    test::expect_close("state update, kernel against reference", y_kernel, y.detach(), 1e-5);
  }
  const auto w = torch::randn({6, 4}), b = torch::randn({6});
  auto shared = torch::zeros({1, 6, 4}).expand({3, 6, 4});
  EXPECT_FALSE(ops::cuda_emu::causal_conv1d_update_supported(torch::randn({3, 6}), shared, w, b));
  EXPECT_THROW(ops::causal_conv1d_update(torch::randn({3, 6}), shared, w, b, true), c10::Error);
}

// ---------------------------------------------------------------- fused one-token step

class SsdDecodeStepEmu : public emu_t::EmulatedKernelTest<::testing::TestWithParam<test::SsdStepCase>> {
 protected:
  void TearDown() override {
    ::emu::device().sm_count = sms_;
    EmulatedKernelTest::TearDown();
  }
  int sms_ = ::emu::device().sm_count;
};

// In the forward schedule the sequence's last block is its highest; in the reverse one its
// first: both finish the row.
TEST_P(SsdDecodeStepEmu, FusedStepEqualsTheThreeReferenceOps) {
  const auto c = GetParam();
  if (c.sms > 0) ::emu::device().sm_count = c.sms;
  const uint64_t launches = ::emu::launch_count();
  test::check_ssd_decode_step(c, torch::kCPU,
                              [](const torch::Tensor& zxbcdt, torch::Tensor& conv_state,
                                 torch::Tensor& ssm_state, const ops::SsdDecodeWeights& w,
                                 const torch::Tensor& arrivals) {
                                EXPECT_TRUE(ops::cuda_emu::ssd_decode_step_supported(zxbcdt, conv_state,
                                                                                    ssm_state, w));
                                return ops::cuda_emu::ssd_decode_step(zxbcdt, conv_state, ssm_state, w,
                                                                      arrivals);
                              });
  EXPECT_EQ(::emu::launch_count() - launches, 4u) << "one launch per step";
}

std::vector<test::SsdStepCase> decode_step_cases() {
  std::vector<test::SsdStepCase> out;
  for (const auto& c : test::ssd_step_cases()) {
    if (!c.gpu_only) out.push_back(c);
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, SsdDecodeStepEmu, ::testing::ValuesIn(decode_step_cases()),
                         [](const auto& info) { return test::case_name(info.param); });

TEST(SsdDecodeStepEmuConfig, AMalformedRowCountNamesTheVariable) {
  const int64_t H = 2, P = 16, N = 16, W = 4, E = H * P, C = E + 2 * N;
  ops::SsdDecodeWeights w;
  w.conv_weight = torch::randn({C, 1, W});
  w.A = -torch::rand({H}) - 0.5;
  w.norm_weight = torch::rand({E}) + 0.5;
  w.ngroups = 1;
  w.norm_group_size = E;
  auto conv_state = torch::randn({1, C, W}), ssm_state = torch::randn({1, H, P, N});
  const auto zxbcdt = torch::randn({1, E + C + H});
  test::expect_env_value_refused("AIM_SSD_STEP_ROWS", "3", [&] {
    ops::cuda_emu::ssd_decode_step(zxbcdt, conv_state, ssm_state, w, torch::Tensor());
  });
}

}  // namespace
}  // namespace aim
