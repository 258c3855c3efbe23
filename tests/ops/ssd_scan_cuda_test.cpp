// The Mamba2 SSD scan CUDA kernels, forward (y, final state) and backward (x, dt, A, B, C, D,
// dt_bias), against the reference on fp64 CPU copies of the same values, at the AiM-B/L/XL/1B
// mixer shapes (L = 257, x/B/C/dt sliced from one in_proj-like output, as the mixer passes them)
// and at edge shapes: batch 1, L = 1, L around the kernels' chunk of 32, ngroups 2 and 4,
// d_state 16 / 40 (padded to 48) / 64 / 256, headdim 32 / 96 / 128 (two P tiles), D per head,
// per channel or none, no dt_bias, no softplus, an initial state. Outputs are poisoned with NaN
// before every launch; the backward runs twice and must give the same bits (no atomics). The
// fused one-token step against the reference ops, and over hundreds of steps against the three
// CUDA kernels it replaces (its blocks meet through a counter, which only a device exercises).
//
// Tolerances. The final state and dx: test::tolerance_for(input dtype), elementwise; y: the same
// in fp32, max|a - b| / max|b| <= 1e-2 in bf16 (test::expect_y_close says why). The
// gradients that are sums over positions, heads or P (dt, A, B, C, D, dt_bias): max|a - b| /
// max|b| <= 1e-3 for fp32 (fp32 math with fast-math exp over up to 257 steps; ~1e-6 seen in an
// emulation) and 3e-2 for bf16, where the kernels round the products' computed operands (decay
// matrices, scaled x / dy, S, dS) to bf16 like the inputs, 2^-9 relative each (~6e-3 seen).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "aim/ops/conv1d.h"
#include "aim/ops/dispatch.h"
#include "aim/ops/norms.h"
#include "aim/ops/ssd_scan.h"
#include "ops/ssd_cases.h"
#include "ops/ssd_step_cases.h"
#include "test_util.h"
#ifdef AIM_WITH_CUDA
#include "ops/ssd_scan_cuda.h"
#endif

namespace aim {
namespace {

using test::DMode;
using test::SsdCase;
using test::case_name;
using test::make_inputs;
using test::ssd_cases;

// The scan on CUDA tensors through dispatch, as test::check_ssd_scan calls it.
ops::SsdScanResult cuda_scan(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                             const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D,
                             const torch::Tensor& dt_bias, bool softplus, const torch::Tensor& init,
                             bool return_final) {
  return ops::ssd_scan(x, dt, A, Bm, Cm, D, dt_bias, softplus, /*chunk_size=*/256, init, return_final);
}

class SsdScanCuda : public test::CudaKernelTest<::testing::TestWithParam<SsdCase>> {};

TEST_P(SsdScanCuda, ForwardAndBackwardMatchTheReference) {
  test::check_ssd_scan(GetParam(), torch::kCUDA, cuda_scan);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SsdScanCuda, ::testing::ValuesIn(ssd_cases()),
                         [](const auto& info) { return case_name(info.param); });

#ifdef AIM_WITH_CUDA
// The backward's thread block clusters over heads (kernels/ssd_scan.h) at every size, forced by
// AIM_SSD_BWD_CLUSTER: the tiling picks it on this device and the scan matches the reference.
class SsdScanClusterCuda : public test::CudaKernelTest<::testing::TestWithParam<int>> {};

TEST_P(SsdScanClusterCuda, EveryClusterSizeMatchesTheReference) {
  test::check_ssd_scan_clusters(
      GetParam(), torch::kCUDA, ops::cuda::ssd_scan_bwd_cluster_heads, cuda_scan);
}

INSTANTIATE_TEST_SUITE_P(Sizes, SsdScanClusterCuda, ::testing::Values(1, 2, 4, 8),
                         [](const auto& info) { return "K" + std::to_string(info.param); });

// AIM_SSD_SCAN=tiles: the kernels that keep the state in shared memory, on the bf16 edge cases
// that run on the register-state kernels by default.
class SsdScanTilesCuda : public test::CudaKernelTest<::testing::TestWithParam<SsdCase>> {};

TEST_P(SsdScanTilesCuda, SharedMemoryStateKernelsMatchTheReference) {
  const test::ScopedEnv tiles("AIM_SSD_SCAN", "tiles");
  test::check_ssd_scan(GetParam(), torch::kCUDA, cuda_scan);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SsdScanTilesCuda, ::testing::ValuesIn(test::ssd_register_kernel_cases()),
                         [](const auto& info) { return case_name(info.param); });

// AIM_SSD_BWD_PAIRS=0: the register backward with a block per slice (h, P tile), where by default
// a block adds two slices' dB / dC.
class SsdScanUnpairedCuda : public test::CudaKernelTest<::testing::TestWithParam<SsdCase>> {};

TEST_P(SsdScanUnpairedCuda, OneSlicePerBlockMatchesTheReference) {
  const test::ScopedEnv unpaired(test::kPairsEnv, "0");
  test::check_ssd_scan(GetParam(), torch::kCUDA, cuda_scan);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SsdScanUnpairedCuda, ::testing::ValuesIn(test::ssd_unpaired_cases()),
                         [](const auto& info) { return case_name(info.param); });

// x, B and C split from one tensor, as the mixer passes them: their gradients come back packed
// (no concatenation) with the bits of the unpacked scan.
class SsdScanPackedCuda : public test::CudaKernelTest<> {};

TEST_F(SsdScanPackedCuda, GradientsOfASplitTensorComeBackPacked) {
  test::check_ssd_scan_packed(torch::kCUDA, cuda_scan);
}
#endif

// The kernels run by default on CUDA and the switch turns them off; both agree through the
// public op on the same device, with and without the final state.
TEST(SsdScanCudaDispatch, SwitchSelectsTheReferenceOnCuda) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible";
  torch::manual_seed(5);
  const SsdCase c{2, 100, 4, 64, 1, 128, DMode::kHead, true, true, true, true, torch::kFloat};
  const auto in = make_inputs(c, torch::kCUDA);
  torch::NoGradGuard no_grad;
  ops::set_cuda_kernels(false);
  auto ref = ops::ssd_scan(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, in.dt_bias, true, 256, in.init, true);
  ops::set_cuda_kernels(true);
  auto ker = ops::ssd_scan(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, in.dt_bias, true, 256, in.init, true);
  auto ker_y = ops::ssd_scan(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, in.dt_bias, true, 256, in.init, false);
  test::expect_close("kernel vs reference y", ker.y, ref.y, 1e-4);
  test::expect_close("kernel vs reference final state", ker.final_state, ref.final_state, 1e-4);
  EXPECT_TRUE(torch::equal(ker_y.y, ker.y));
  EXPECT_FALSE(ker_y.final_state.defined());
}

// The kernels give no gradient for the initial state: asking for one is an error that says so.
TEST(SsdScanCudaDispatch, InitialStateRequiringGradIsRefused) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible";
  ops::set_cuda_kernels(true);
  const SsdCase c{1, 8, 2, 32, 1, 16, DMode::kHead, true, true, true, true, torch::kFloat};
  auto in = make_inputs(c, torch::kCUDA);
  auto init = in.init.clone().requires_grad_(true);
  try {
    ops::ssd_scan(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, in.dt_bias, true, 256, init, true);
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("initial_state"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------- fused one-token step

// ops::ssd_decode_step through dispatch on CUDA tensors (the fused kernel) against the three
// reference ops (test::check_ssd_decode_step; the full AiM-L mixer included).
class SsdDecodeStepCuda : public test::CudaKernelTest<::testing::TestWithParam<test::SsdStepCase>> {};

TEST_P(SsdDecodeStepCuda, FusedStepEqualsTheThreeReferenceOps) {
  test::check_ssd_decode_step(GetParam(), torch::kCUDA,
                              [](const torch::Tensor& zxbcdt, torch::Tensor& conv_state,
                                 torch::Tensor& ssm_state, const ops::SsdDecodeWeights& w,
                                 const torch::Tensor& arrivals) {
#ifdef AIM_WITH_CUDA
                                EXPECT_TRUE(ops::cuda::ssd_decode_step_supported(zxbcdt, conv_state,
                                                                                 ssm_state, w));
#endif
                                return ops::ssd_decode_step(zxbcdt, conv_state, ssm_state, w, arrivals);
                              });
}

INSTANTIATE_TEST_SUITE_P(Shapes, SsdDecodeStepCuda, ::testing::ValuesIn(test::ssd_step_cases()),
                         [](const auto& info) { return test::case_name(info.param); });

// The fused step's blocks of one sequence meet through a counter: the last to arrive finishes
// the sequence (the norm over all heads, the B/C window shift) and resets the counter. Only a
// device runs blocks concurrently, so this runs many steps there: AiM-L's mixer (32 heads of
// 64, d_state 128) for one image with guidance (2 rows) and for 256 (512 rows), bf16 with fp32
// states, each step from the states the three kernels (conv update, state update, gated norm)
// also start from. Every step's output and states within the bf16 elementwise tolerance of
// theirs, the conv state the same bits, the counters back at zero.
TEST(SsdDecodeStepCudaStress, ManyStepsEqualTheThreeKernels) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible";
  ops::set_cuda_kernels(true);
  torch::NoGradGuard no_grad;
  torch::manual_seed(41);
  const auto dev = torch::Device(torch::kCUDA);
  const auto h = torch::kBFloat16;
  const int64_t H = 32, P = 64, N = 128, G = 1, W = 4, E = H * P, C = E + 2 * G * N;
  ops::SsdDecodeWeights w;
  w.conv_weight = test::randn({C, 1, W}, h, dev, 0.5);
  w.conv_bias = test::randn({C}, h, dev, 0.2);
  w.A = (-torch::empty({H}).uniform_(0.5, 4.0)).to(dev);
  w.D = torch::empty({H}).uniform_(0.5, 1.5).to(dev);
  w.dt_bias = torch::empty({H}).uniform_(-6.0, -3.0).to(dev);
  w.norm_weight = (torch::rand({E}) + 0.5).to(dev, h);
  w.ngroups = G;
  w.norm_group_size = E;
  w.norm_before_gate = false;
  const auto tol = test::tolerance_for(h);
  // max over elements of |a - b| / (atol + rtol |b|), on the device (the 512-row state is 128M
  // values).
  auto used = [&](const torch::Tensor& a, const torch::Tensor& b) {
    const auto af = a.to(torch::kFloat), bf = b.to(torch::kFloat);
    return ((af - bf).abs() / (tol.atol + tol.rtol * bf.abs())).max().item<double>();
  };
  for (const int64_t batch : {int64_t{2}, int64_t{512}}) {
    const int steps = batch == 2 ? 300 : 20;
    const auto tag = "B" + std::to_string(batch);
    auto conv_state = test::randn({batch, C, W}, torch::kFloat, dev);
    auto ssm_state = test::randn({batch, H, P, N}, torch::kFloat, dev, 0.5);
    auto arrivals = torch::zeros({batch}, torch::dtype(torch::kInt).device(dev));
    double worst_out = 0, worst_state = 0;
    int worst_out_step = -1, worst_state_step = -1;
    for (int s = 0; s < steps; ++s) {
      auto row = test::randn({batch, E + C + H + 6}, torch::kFloat, dev);
      row.narrow(1, 3 + E + C, H).mul_(0.5);
      const auto zxbcdt = row.to(h).narrow(1, 3, E + C + H);
      auto conv3 = conv_state.clone(), ssm3 = ssm_state.clone();
      const auto out = ops::ssd_decode_step(zxbcdt, conv_state, ssm_state, w, arrivals);
      const auto xbc = ops::causal_conv1d_update(zxbcdt.narrow(1, E, C), conv3, w.conv_weight,
                                                 w.conv_bias, /*silu=*/true);
      const auto y = ops::ssd_state_update(
          ssm3, xbc.narrow(1, 0, E).reshape({batch, H, P}), zxbcdt.narrow(1, E + C, H), w.A,
          xbc.narrow(1, E, G * N).reshape({batch, G, N}),
          xbc.narrow(1, E + G * N, G * N).reshape({batch, G, N}), w.D, w.dt_bias, true);
      const auto out3 = ops::gated_rms_norm(y.reshape({batch, E}), zxbcdt.narrow(1, 0, E),
                                            w.norm_weight, E, 1e-5, false);
      ASSERT_TRUE(torch::equal(conv_state, conv3)) << tag << " step " << s << ": conv state";
      ASSERT_EQ(arrivals.count_nonzero().item<int64_t>(), 0) << tag << " step " << s
                                                             << ": counters left non-zero";
      const double u_out = used(out, out3), u_state = used(ssm_state, ssm3);
      ASSERT_TRUE(std::isfinite(u_out) && std::isfinite(u_state)) << tag << " step " << s;
      if (u_out > worst_out) worst_out = u_out, worst_out_step = s;
      if (u_state > worst_state) worst_state = u_state, worst_state_step = s;
    }
    std::printf("    %s, %d steps: out used %.1f%% of the tolerance at most (step %d), ssm state %.1f%% (step %d)\n",
                tag.c_str(), steps, 100 * worst_out, worst_out_step, 100 * worst_state, worst_state_step);
    EXPECT_LE(worst_out, 1.0) << tag << ": out, step " << worst_out_step;
    EXPECT_LE(worst_state, 1.0) << tag << ": ssm state, step " << worst_state_step;
  }
}

}  // namespace
}  // namespace aim
