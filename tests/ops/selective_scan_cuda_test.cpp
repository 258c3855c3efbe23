// The Mamba1 selective-scan CUDA kernels (scan forward and backward, one-token state update)
// against the reference on fp64 CPU copies of the same values, at the AiM Mamba1 mixer shapes
// (d_inner 1536 / 2048, d_state 16, L = 257, the mixer's channel-last slices) and at edges:
// batch 1, L = 1, L around the kept-chunk length (64) and not a multiple of the tiles, d_state
// 1 / 16 / 37 / 64 / 128 / 129 / 256, E up to 4096, each optional input on and off. Outputs and
// workspaces are poisoned with NaN before every launch; the backward runs twice and must give
// the same bits (no atomics); teacher-forced state-update steps must give the scan's outputs.
//
// A Mamba1 mixer gives the same outputs, gradients and sampling steps with the kernels on and off.
//
// Tolerances. Both sides compute in fp32 (the reference casts to fp32 inside), so they differ
// by summation order and the fast exp2/sigmoid (about 2 ulp):
//   y: test::tolerance_for(dtype), elementwise (fp32 6e-4 / 2e-3; bf16 3e-2 / 5e-2, y being
//      rounded to bf16, 2^-9 relative);
//   fp32 results (last_state, dA, dD, ddelta_bias, dinitial_state, and every gradient with
//      fp32 inputs): max|diff| / max|ref| <= 2e-4, room for fp32 sums over 257 steps and up
//      to 4096 channels;
//   gradients rounded to bf16 (du, ddelta, dz, dB, dC with bf16 inputs): 1e-2, the rounding
//      being 2^-9 of each element.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "aim/core/config.h"
#include "aim/model/mamba1.h"
#include "aim/ops/dispatch.h"
#include "aim/ops/selective_scan.h"
#include "test_util.h"

namespace aim {
namespace {

constexpr double kFp32Rel = 2e-4;
constexpr double kBf16Rel = 1e-2;

struct ScanCase {
  int64_t batch, channels, len, dstate;
  bool gate, skip, bias, softplus, init, grad_last;  ///< z, D, delta_bias, ..., d last_state
  bool channel_last;  ///< u, delta, z, B, C as slices of [B, L, *] projections, as the mixer
  torch::ScalarType dtype;
  bool edge = false;  ///< named Edge_*: small, for the sanitizer runs
};

std::string dtype_name(torch::ScalarType t) { return t == torch::kBFloat16 ? "bf16" : "fp32"; }

std::string case_name(const ScanCase& c) {
  return std::string(c.edge ? "Edge_" : "") + "B" + std::to_string(c.batch) + "_E" +
         std::to_string(c.channels) + "_L" + std::to_string(c.len) + "_N" +
         std::to_string(c.dstate) + (c.gate ? "" : "_noz") + (c.skip ? "" : "_noD") +
         (c.bias ? "" : "_nobias") + (c.softplus ? "" : "_nosoftplus") +
         (c.init ? "_init" : "") + (c.grad_last ? "_dlast" : "") +
         (c.channel_last ? "_clast" : "_contig") + "_" + dtype_name(c.dtype);
}

struct Inputs {
  torch::Tensor u, delta, A, Bm, Cm, D, z, bias, init;
};

// Realistic values: A < 0, delta' = softplus(delta + bias) in about 0.001..0.1 (or delta
// itself in 0.001..0.1 without softplus), never zeros.
Inputs make_inputs(const ScanCase& c, torch::Device dev) {
  const int64_t b = c.batch, e = c.channels, len = c.len, n = c.dstate;
  Inputs in;
  // [B, E, L]: contiguous, or channel-last as a slice of a wider [B, L, E + 40].
  auto seq = [&](double scale, double offset) {
    if (!c.channel_last) return test::randn({b, e, len}, torch::kFloat, dev, scale).add_(offset).to(c.dtype);
    auto wide = test::randn({b, len, e + 40}, torch::kFloat, dev, scale).add_(offset).to(c.dtype);
    return wide.narrow(2, 16, e).transpose(1, 2);
  };
  in.u = seq(1.0, 0.0);
  if (c.softplus) {
    in.delta = seq(0.5, 0.0);
  } else {
    auto d = torch::empty({b, len, e}, torch::kFloat).uniform_(0.001, 0.1).to(dev, c.dtype);
    in.delta = c.channel_last ? d.transpose(1, 2) : d.transpose(1, 2).contiguous();
  }
  if (c.gate) in.z = seq(1.0, 0.0);
  // B, C [B, N, L]: slices of x_dbl [B, L, R + 2N] for the mixer's layout.
  if (c.channel_last) {
    auto x_dbl = test::randn({b, len, 8 + 2 * n}, c.dtype, dev);
    in.Bm = x_dbl.narrow(2, 8, n).transpose(1, 2);
    in.Cm = x_dbl.narrow(2, 8 + n, n).transpose(1, 2);
  } else {
    in.Bm = test::randn({b, n, len}, c.dtype, dev);
    in.Cm = test::randn({b, n, len}, c.dtype, dev);
  }
  in.A = -torch::exp(torch::empty({e, n}).uniform_(std::log(0.5), std::log(16.0))).to(dev);
  if (c.skip) in.D = torch::empty({e}).uniform_(0.5, 1.5).to(dev);
  if (c.bias) {
    in.bias = (c.softplus ? torch::empty({e}).uniform_(-5.5, -3.5)
                          : torch::empty({e}).uniform_(0.0, 0.005))
                  .to(dev);
  }
  if (c.init) in.init = test::randn({b, e, n}, torch::kFloat, dev, 0.5);
  return in;
}

torch::Tensor f64_leaf(const torch::Tensor& t) {
  return t.detach().to(torch::kCPU, torch::kFloat64).contiguous().requires_grad_(true);
}
torch::Tensor to_cpu64(const torch::Tensor& t) { return t.detach().to(torch::kCPU, torch::kFloat64); }

void close_elementwise(const std::string& name, const torch::Tensor& actual,
                       const torch::Tensor& expected) {
  const auto tol = test::tolerance_for(actual.scalar_type());
  test::expect_close(name, actual, expected, tol.atol, /*relative_to_max=*/false, tol.rtol);
}

void close_relative(const std::string& name, const torch::Tensor& actual,
                    const torch::Tensor& expected) {
  test::expect_close(name, actual, expected,
                     actual.scalar_type() == torch::kBFloat16 ? kBf16Rel : kFp32Rel);
}

void expect_kernel_ran(const torch::Tensor& out, const std::string& name) {
  ASSERT_TRUE(out.grad_fn() != nullptr) << name;
  EXPECT_NE(out.grad_fn()->name().find("SelectiveScan"), std::string::npos)
      << name << ": expected the CUDA kernel's autograd node, got " << out.grad_fn()->name();
}

class SelectiveScanCudaTest : public test::CudaKernelTest<::testing::TestWithParam<ScanCase>> {};

// ---------------------------------------------------------------- scan, forward and backward

using SelectiveScanCuda = SelectiveScanCudaTest;

TEST_P(SelectiveScanCuda, ForwardAndBackwardMatchTheReference) {
  const auto c = GetParam();
  const auto tag = case_name(c);
  torch::manual_seed(11 + c.dstate * 7 + c.len);
  const auto dev = torch::Device(torch::kCUDA);
  Inputs in = make_inputs(c, dev);
  // Leaves for the gradients, with the strides of the inputs (the mixer's channel-last slices
  // keep their row pitch).
  std::vector<torch::Tensor> leaves;
  for (auto* t : {&in.u, &in.delta, &in.A, &in.Bm, &in.Cm, &in.D, &in.z, &in.bias, &in.init}) {
    if (!t->defined()) continue;
    auto leaf = torch::empty_strided(t->sizes(), t->strides(), t->options());
    leaf.copy_(*t);
    *t = leaf.requires_grad_(true);
    leaves.push_back(*t);
  }
  std::vector<std::string> names;
  for (auto [name, t] : std::vector<std::pair<const char*, torch::Tensor*>>{
           {"u", &in.u}, {"delta", &in.delta}, {"A", &in.A}, {"B", &in.Bm}, {"C", &in.Cm},
           {"D", &in.D}, {"z", &in.z}, {"delta_bias", &in.bias}, {"initial_state", &in.init}}) {
    if (t->defined()) names.push_back(name);
  }

  auto r = ops::selective_scan(in.u, in.delta, in.A, in.Bm, in.Cm, in.D, in.z, in.bias,
                               c.softplus, in.init, /*return_last_state=*/true);
  expect_kernel_ran(r.y, tag);
  ASSERT_EQ(r.y.scalar_type(), c.dtype) << tag;
  ASSERT_EQ(r.y.sizes(), in.u.sizes()) << tag;
  ASSERT_EQ(r.last_state.scalar_type(), torch::kFloat) << tag;
  ASSERT_EQ(r.last_state.sizes(), torch::IntArrayRef({c.batch, c.channels, c.dstate})) << tag;

  const auto g_y = test::randn(r.y.sizes(), c.dtype, dev);
  const auto g_last = test::randn(r.last_state.sizes(), torch::kFloat, dev);
  std::vector<torch::Tensor> outputs{r.y}, grad_outputs{g_y};
  if (c.grad_last) {
    outputs.push_back(r.last_state);
    grad_outputs.push_back(g_last);
  }
  const auto grads = torch::autograd::grad(outputs, leaves, grad_outputs, /*retain_graph=*/true);
  const auto again = torch::autograd::grad(outputs, leaves, grad_outputs);
  for (size_t i = 0; i < leaves.size(); ++i) {
    ASSERT_TRUE(grads[i].defined()) << tag << ": d" << names[i];
    EXPECT_EQ(grads[i].scalar_type(), leaves[i].scalar_type()) << tag << ": d" << names[i];
    EXPECT_EQ(grads[i].sizes(), leaves[i].sizes()) << tag << ": d" << names[i];
    EXPECT_TRUE(torch::equal(grads[i], again[i]))
        << tag << ": d" << names[i] << " differs between two backward runs";
  }

  // Oracle: the reference on fp64 CPU copies of the same values.
  std::vector<torch::Tensor> leaves_r;
  for (const auto& t : leaves) leaves_r.push_back(f64_leaf(t));
  auto pick = [&](const char* name) {
    for (size_t i = 0; i < names.size(); ++i) {
      if (names[i] == name) return leaves_r[i];
    }
    return torch::Tensor();
  };
  auto rr = ops::ref::selective_scan(pick("u"), pick("delta"), pick("A"), pick("B"), pick("C"),
                                     pick("D"), pick("z"), pick("delta_bias"), c.softplus,
                                     pick("initial_state"), /*return_last_state=*/true);
  std::vector<torch::Tensor> outputs_r{rr.y}, grad_outputs_r{to_cpu64(g_y)};
  if (c.grad_last) {
    outputs_r.push_back(rr.last_state);
    grad_outputs_r.push_back(to_cpu64(g_last));
  }
  const auto grads_r = torch::autograd::grad(outputs_r, leaves_r, grad_outputs_r);

  close_elementwise(tag + " y", r.y, rr.y);
  close_relative(tag + " last_state", r.last_state, rr.last_state);
  for (size_t i = 0; i < leaves.size(); ++i) {
    close_relative(tag + " d" + names[i], grads[i], grads_r[i]);
  }
}

std::vector<ScanCase> scan_cases() {
  std::vector<ScanCase> out;
  for (auto dt : {torch::kFloat, torch::kBFloat16}) {
    // AiM-B / AiM-L Mamba1 mixers in training (d_inner 1536 / 2048, d_state 16, the class slot
    // plus 256 tokens), and the prefill of sampling (last state kept and differentiated).
    out.push_back({2, 1536, 257, 16, true, true, true, true, false, false, true, dt});
    out.push_back({2, 2048, 257, 16, true, true, true, true, false, false, true, dt});
    out.push_back({2, 2048, 257, 16, true, true, true, true, false, true, true, dt});
    // Other state sizes, each optional input on and off, contiguous inputs.
    out.push_back({2, 256, 257, 64, true, true, true, true, true, true, false, dt});
    out.push_back({2, 96, 257, 37, true, true, true, true, true, true, false, dt});
    out.push_back({1, 64, 100, 16, false, false, false, false, false, false, false, dt});
    out.push_back({3, 40, 65, 16, true, false, true, false, true, true, true, dt});
    out.push_back({2, 70, 130, 16, false, true, false, true, true, false, false, dt});
    out.push_back({2, 130, 128, 128, true, true, true, true, true, true, true, dt});
    out.push_back({2, 24, 200, 129, true, true, true, true, true, true, false, dt});
    out.push_back({2, 8, 130, 256, true, true, true, true, true, true, false, dt});
    out.push_back({1, 24, 300, 1, true, true, true, true, true, true, false, dt});
    out.push_back({1, 4096, 33, 16, true, true, true, true, false, false, true, dt});
    // Small edges, also run under the sanitizers: L = 1, one chunk exactly, one step past it,
    // E not a multiple of the block's channels, the d_state = 256 mapping.
    out.push_back({1, 37, 1, 16, true, true, true, true, true, true, false, dt, true});
    out.push_back({2, 5, 64, 7, true, true, true, true, true, true, true, dt, true});
    out.push_back({1, 37, 65, 16, true, true, true, true, false, true, true, dt, true});
    out.push_back({1, 3, 17, 64, false, true, false, true, true, false, false, dt, true});
    out.push_back({2, 9, 33, 200, true, false, true, false, true, true, false, dt, true});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, SelectiveScanCuda, ::testing::ValuesIn(scan_cases()),
                         [](const auto& info) { return case_name(info.param); });

// ---------------------------------------------------------------- state update

using SelectiveScanCudaStep = SelectiveScanCudaTest;

// Feeding the sequence one token at a time through the state update gives the scan's y and
// last state; one step also matches the reference's step.
TEST_P(SelectiveScanCudaStep, TeacherForcedStepsEqualTheScan) {
  const auto c = GetParam();
  const auto tag = case_name(c);
  torch::manual_seed(23 + c.dstate + c.len);
  const auto dev = torch::Device(torch::kCUDA);
  torch::NoGradGuard no_grad;
  const Inputs in = make_inputs(c, dev);
  const auto scan = ops::selective_scan(in.u, in.delta, in.A, in.Bm, in.Cm, in.D, in.z, in.bias,
                                        c.softplus, in.init, /*return_last_state=*/true);
  ASSERT_TRUE(scan.last_state.defined()) << tag;

  auto state = in.init.defined()
                   ? in.init.clone()
                   : torch::zeros({c.batch, c.channels, c.dstate}, in.A.options());
  std::vector<torch::Tensor> ys;
  for (int64_t t = 0; t < c.len; ++t) {
    auto sel = [t](const torch::Tensor& x) { return x.defined() ? x.select(2, t) : x; };
    if (t == c.len / 2) {
      // One step against the reference step, from the same state.
      auto state_r = state.to(torch::kCPU, torch::kFloat64);
      auto f = [](const torch::Tensor& x) {
        return x.defined() ? x.to(torch::kCPU, torch::kFloat64) : x;
      };
      auto y_r = ops::ref::selective_state_update(state_r, f(sel(in.u)), f(sel(in.delta)),
                                                  f(in.A), f(sel(in.Bm)), f(sel(in.Cm)), f(in.D),
                                                  f(sel(in.z)), f(in.bias), c.softplus);
      auto state_k = state.clone();
      auto y_k = ops::selective_state_update(state_k, sel(in.u), sel(in.delta), in.A,
                                             sel(in.Bm), sel(in.Cm), in.D, sel(in.z), in.bias,
                                             c.softplus);
      ASSERT_EQ(y_k.scalar_type(), c.dtype) << tag;
      close_elementwise(tag + " step y vs reference", y_k, y_r);
      close_relative(tag + " step state vs reference", state_k, state_r);
    }
    ys.push_back(ops::selective_state_update(state, sel(in.u), sel(in.delta), in.A, sel(in.Bm),
                                             sel(in.Cm), in.D, sel(in.z), in.bias, c.softplus));
  }
  close_elementwise(tag + " steps y vs scan", torch::stack(ys, 2), scan.y);
  close_relative(tag + " steps state vs scan", state, scan.last_state);
}

std::vector<ScanCase> step_cases() {
  std::vector<ScanCase> out;
  for (auto dt : {torch::kFloat, torch::kBFloat16}) {
    // AiM-L decoding (channel-last slices as the mixer passes them), then other state sizes.
    out.push_back({2, 2048, 257, 16, true, true, true, true, false, false, true, dt});
    out.push_back({2, 256, 40, 64, true, true, true, true, true, false, false, dt});
    out.push_back({3, 40, 20, 37, false, false, false, false, true, false, true, dt});
    out.push_back({1, 8, 20, 256, true, true, true, true, true, false, false, dt});
    out.push_back({1, 37, 3, 1, true, true, true, true, true, false, false, dt, true});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, SelectiveScanCudaStep, ::testing::ValuesIn(step_cases()),
                         [](const auto& info) { return case_name(info.param); });

// ---------------------------------------------------------------- dispatch

class SelectiveScanCudaDispatch : public test::CudaKernelTest<::testing::Test> {};

// Without gradients to track the forward keeps no chunk states, and gives the same bits; the
// switch selects the reference on CUDA, which agrees; unsupported dtypes fall back to it.
TEST_F(SelectiveScanCudaDispatch, NoGradSwitchAndFallback) {
  torch::manual_seed(5);
  const auto dev = torch::Device(torch::kCUDA);
  const ScanCase c{2, 96, 257, 16, true, true, true, true, true, false, true, torch::kBFloat16};
  Inputs in = make_inputs(c, dev);
  const auto tracked = ops::selective_scan(in.u, in.delta, in.A.clone().requires_grad_(true),
                                           in.Bm, in.Cm, in.D, in.z, in.bias, true, in.init,
                                           true);
  expect_kernel_ran(tracked.y, "tracked");
  ops::SelectiveScanResult untracked;
  {
    torch::NoGradGuard no_grad;
    untracked = ops::selective_scan(in.u, in.delta, in.A, in.Bm, in.Cm, in.D, in.z, in.bias,
                                    true, in.init, true);
  }
  EXPECT_TRUE(torch::equal(tracked.y.detach(), untracked.y));
  EXPECT_TRUE(torch::equal(tracked.last_state.detach(), untracked.last_state));
  const auto no_last = ops::selective_scan(in.u, in.delta, in.A, in.Bm, in.Cm, in.D, in.z,
                                           in.bias, true, in.init, false);
  EXPECT_FALSE(no_last.last_state.defined());

  ops::set_cuda_kernels(false);
  const auto reference = ops::selective_scan(in.u, in.delta, in.A, in.Bm, in.Cm, in.D, in.z,
                                             in.bias, true, in.init, true);
  ops::set_cuda_kernels(true);
  close_elementwise("AIM_CUDA_KERNELS=0 y", untracked.y, reference.y);
  close_relative("AIM_CUDA_KERNELS=0 last_state", untracked.last_state, reference.last_state);

  const auto u16 = in.u.to(torch::kHalf).requires_grad_(true);
  const auto half = ops::selective_scan(u16, in.delta.to(torch::kHalf), in.A,
                                        in.Bm.to(torch::kHalf), in.Cm.to(torch::kHalf), in.D,
                                        in.z.to(torch::kHalf), in.bias, true, in.init, false);
  ASSERT_TRUE(half.y.grad_fn() != nullptr);
  EXPECT_EQ(half.y.grad_fn()->name().find("SelectiveScan"), std::string::npos)
      << "fp16 is not a kernel dtype: the reference should have run";
}

// ---------------------------------------------------------------- the Mamba1 mixer

struct MixerCase {
  int64_t d_model;
  torch::ScalarType dtype;
};

class SelectiveScanCudaMixer : public ::testing::TestWithParam<MixerCase> {
 protected:
  void SetUp() override {
#ifndef AIM_WITH_CUDA
    GTEST_SKIP() << "built without CUDA";
#endif
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible: CUDA mixer test skipped";
  }
  void TearDown() override { ops::set_cuda_kernels(true); }
};

struct MixerRun {
  torch::Tensor out, steps;
  std::vector<std::pair<std::string, torch::Tensor>> grads;  ///< "u" then parameters
};

// Training forward + backward, then a prefill of the first half and steps through the rest.
MixerRun run_mixer(Mamba1Mixer& mixer, const torch::Tensor& u0, const torch::Tensor& g,
                   bool kernels) {
  ops::set_cuda_kernels(kernels);
  mixer->zero_grad();
  MixerRun r;
  auto u = u0.detach().clone().requires_grad_(true);
  auto out = mixer->forward(u);
  out.backward(g);
  r.out = out.detach();
  r.grads.emplace_back("u", u.grad());
  for (const auto& p : mixer->named_parameters()) {
    r.grads.emplace_back(p.key(), p.value().grad().clone());
  }
  torch::NoGradGuard no_grad;
  const int64_t len = u0.size(1), half = len / 2;
  auto state = mixer->allocate_state(u0.size(0), u0.device(), u0.scalar_type());
  std::vector<torch::Tensor> outs{mixer->forward(u0.narrow(1, 0, half), &state)};
  for (int64_t t = half; t < len; ++t) outs.push_back(mixer->step(u0.select(1, t), state).unsqueeze(1));
  r.steps = torch::cat(outs, 1);
  return r;
}

TEST_P(SelectiveScanCudaMixer, KernelsOnEqualKernelsOff) {
  const auto c = GetParam();
  const auto tag = "D" + std::to_string(c.d_model) + "_" + dtype_name(c.dtype);
  torch::manual_seed(31);
  SsmConfig ssm;
  ssm.layer = "Mamba1";
  ssm.d_state = 16;
  Mamba1Mixer mixer(Mamba1MixerOptions(c.d_model, ssm, (c.d_model + 15) / 16));
  mixer->to(torch::kCUDA, c.dtype);
  const auto opts = torch::dtype(c.dtype).device(torch::kCUDA);
  const auto u = torch::randn({2, 257, c.d_model}, opts);
  const auto g = torch::randn({2, 257, c.d_model}, opts);

  const auto off = run_mixer(mixer, u, g, false);
  const auto on = run_mixer(mixer, u, g, true);
  // max|diff| / max|off|: whole mixers (projections, conv, scan) in the dtype.
  const double tol = c.dtype == torch::kBFloat16 ? 5e-2 : 2e-3;
  test::expect_close(tag + " out", on.out, off.out, tol);
  test::expect_close(tag + " prefill + steps", on.steps, off.steps, tol);
  test::expect_close(tag + " steps vs training forward", on.steps, on.out, tol);
  ASSERT_EQ(on.grads.size(), off.grads.size());
  for (size_t i = 0; i < on.grads.size(); ++i) {
    ASSERT_TRUE(on.grads[i].second.defined()) << tag << " " << on.grads[i].first;
    test::expect_close(tag + " d" + on.grads[i].first, on.grads[i].second, off.grads[i].second,
                       tol);
  }
}

INSTANTIATE_TEST_SUITE_P(Mixers, SelectiveScanCudaMixer,
                         ::testing::Values(MixerCase{768, torch::kFloat},
                                           MixerCase{768, torch::kBFloat16},
                                           MixerCase{1024, torch::kBFloat16}),
                         [](const auto& info) {
                           return "D" + std::to_string(info.param.d_model) + "_" +
                                  dtype_name(info.param.dtype);
                         });

}  // namespace
}  // namespace aim
