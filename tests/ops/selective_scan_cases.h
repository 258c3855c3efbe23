#pragma once
// The Mamba1 selective-scan test cases shared by the CUDA kernel tests and the emulated-kernel
// tests: the case, its name, and the inputs as the mixer passes them.
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "aim/ops/selective_scan.h"
#include "aim/ops/split.h"
#include "test_util.h"

namespace aim::test {

struct ScanCase {
  int64_t batch, channels, len, dstate;
  bool gate, skip, bias, softplus, init, grad_last;  ///< z, D, delta_bias, ..., d last_state
  bool channel_last;  ///< u, delta, z, B, C as slices of [B, L, *] projections, as the mixer
  torch::ScalarType dtype;
  bool edge = false;  ///< named Edge_*: small, for the sanitizer runs
};

inline std::string dtype_name(torch::ScalarType t) { return t == torch::kBFloat16 ? "bf16" : "fp32"; }

inline std::string case_name(const ScanCase& c) {
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
inline Inputs make_inputs(const ScanCase& c, torch::Device dev) {
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

/// Scan shapes: the AiM Mamba1 mixers (L = 257), other state sizes, and the `edge` cases.
inline std::vector<ScanCase> scan_cases() {
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

/// State-update shapes: AiM-L decoding and other state sizes.
inline std::vector<ScanCase> step_cases() {
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

// ---------------------------------------------------------------- the checks

/// Tolerances. Both sides compute in fp32 (the reference casts to fp32 inside), so they differ
/// by summation order and the fast exp2/sigmoid: y elementwise with test::tolerance_for; fp32
/// results max|diff| / max|ref| <= 2e-4; gradients rounded to bf16 1e-2.
inline constexpr double kSscanFp32Rel = 2e-4;
inline constexpr double kSscanBf16Rel = 1e-2;

inline void sscan_close_elementwise(const std::string& name, const torch::Tensor& actual,
                                    const torch::Tensor& expected) {
  const auto tol = tolerance_for(actual.scalar_type());
  expect_close(name, actual, expected, tol.atol, /*relative_to_max=*/false, tol.rtol);
}

inline void sscan_close_relative(const std::string& name, const torch::Tensor& actual,
                                 const torch::Tensor& expected) {
  expect_close(name, actual, expected,
               actual.scalar_type() == torch::kBFloat16 ? kSscanBf16Rel : kSscanFp32Rel);
}

inline void sscan_expect_kernel_ran(const torch::Tensor& out, const std::string& name) {
  ASSERT_TRUE(out.grad_fn() != nullptr) << name;
  EXPECT_NE(out.grad_fn()->name().find("SelectiveScan"), std::string::npos)
      << name << ": expected the CUDA kernel's autograd node, got " << out.grad_fn()->name();
}

/// The ops under test: ops::selective_scan's and ops::selective_state_update's signatures.
using SelectiveScanFn = std::function<ops::SelectiveScanResult(
    const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
    const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D,
    const torch::Tensor& z, const torch::Tensor& delta_bias, bool delta_softplus,
    const torch::Tensor& initial_state, bool return_last_state)>;
using SelectiveStepFn = std::function<torch::Tensor(
    torch::Tensor& state, const torch::Tensor& u, const torch::Tensor& delta,
    const torch::Tensor& A, const torch::Tensor& Bm, const torch::Tensor& Cm,
    const torch::Tensor& D, const torch::Tensor& z, const torch::Tensor& delta_bias,
    bool delta_softplus)>;

/// The kernel tests' scan check of one case: `scan` (the CUDA op through dispatch, or the
/// emulated adapter) on inputs on `dev`, forward and backward (twice: the same bits), against the
/// reference on fp64 CPU copies of the same values.
inline void check_selective_scan(const ScanCase& c, torch::Device dev,
                                 const SelectiveScanFn& scan) {
  const auto tag = case_name(c);
  torch::manual_seed(11 + c.dstate * 7 + c.len);
  Inputs in = make_inputs(c, dev);
  // Leaves for the gradients, with the strides of the inputs (the mixer's channel-last slices
  // keep their row pitch).
  // Channel-last z, B and C are transposed parts of split projections, as the Mamba1 mixer
  // passes them: the first backward below writes their gradients into their places in the
  // projections' gradients (ops::split_grad_slot), the second, which finds the places handed
  // out, into tensors of their own, with the same bits.
  std::vector<torch::Tensor> leaves;
  auto split_part = [&](const torch::Tensor& t, int64_t before, int64_t after) {
    auto proj = torch::empty({t.size(0), t.size(2), before + t.size(1) + after}, t.options());
    proj.narrow(2, before, t.size(1)).copy_(t.transpose(1, 2));
    proj.requires_grad_(true);
    return ops::split_last_dim(proj, {before, t.size(1), after})[1].transpose(1, 2);
  };
  for (auto* t : {&in.u, &in.delta, &in.A, &in.Bm, &in.Cm, &in.D, &in.z, &in.bias, &in.init}) {
    if (!t->defined()) continue;
    if (c.channel_last && (t == &in.z || t == &in.Bm || t == &in.Cm)) {
      *t = split_part(*t, 8, 8);
    } else {
      auto leaf = torch::empty_strided(t->sizes(), t->strides(), t->options());
      leaf.copy_(*t);
      *t = leaf.requires_grad_(true);
    }
    leaves.push_back(*t);
  }
  std::vector<std::string> names;
  for (auto [name, t] : std::vector<std::pair<const char*, torch::Tensor*>>{
           {"u", &in.u}, {"delta", &in.delta}, {"A", &in.A}, {"B", &in.Bm}, {"C", &in.Cm},
           {"D", &in.D}, {"z", &in.z}, {"delta_bias", &in.bias}, {"initial_state", &in.init}}) {
    if (t->defined()) names.push_back(name);
  }

  auto r = scan(in.u, in.delta, in.A, in.Bm, in.Cm, in.D, in.z, in.bias, c.softplus, in.init,
                /*return_last_state=*/true);
  sscan_expect_kernel_ran(r.y, tag);
  ASSERT_EQ(r.y.scalar_type(), c.dtype) << tag;
  ASSERT_EQ(r.y.sizes(), in.u.sizes()) << tag;
  ASSERT_EQ(r.last_state.scalar_type(), torch::kFloat) << tag;
  ASSERT_EQ(r.last_state.sizes(), torch::IntArrayRef({c.batch, c.channels, c.dstate})) << tag;

  const auto g_y = randn(r.y.sizes(), c.dtype, dev);
  const auto g_last = randn(r.last_state.sizes(), torch::kFloat, dev);
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
    const bool placed = c.channel_last && (names[i] == "z" || names[i] == "B" || names[i] == "C");
    if (placed && c.len > 1) {
      EXPECT_EQ(grads[i].stride(2), leaves[i].size(1) + 16) << tag << ": d" << names[i] << " not in its place";
      EXPECT_NE(again[i].stride(2), leaves[i].size(1) + 16) << tag << ": d" << names[i];
    }
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

  sscan_close_elementwise(tag + " y", r.y, rr.y);
  sscan_close_relative(tag + " last_state", r.last_state, rr.last_state);
  for (size_t i = 0; i < leaves.size(); ++i) {
    sscan_close_relative(tag + " d" + names[i], grads[i], grads_r[i]);
  }
}

/// The kernel tests' step check of one case: the sequence fed one token at a time through `step`
/// gives `scan`'s y and last state; one step also matches the reference's step.
inline void check_selective_steps(const ScanCase& c, torch::Device dev,
                                  const SelectiveScanFn& scan, const SelectiveStepFn& step) {
  const auto tag = case_name(c);
  torch::manual_seed(23 + c.dstate + c.len);
  torch::NoGradGuard no_grad;
  const Inputs in = make_inputs(c, dev);
  const auto scanned = scan(in.u, in.delta, in.A, in.Bm, in.Cm, in.D, in.z, in.bias, c.softplus,
                            in.init, /*return_last_state=*/true);
  ASSERT_TRUE(scanned.last_state.defined()) << tag;

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
      auto y_k = step(state_k, sel(in.u), sel(in.delta), in.A, sel(in.Bm), sel(in.Cm), in.D,
                      sel(in.z), in.bias, c.softplus);
      ASSERT_EQ(y_k.scalar_type(), c.dtype) << tag;
      sscan_close_elementwise(tag + " step y vs reference", y_k, y_r);
      sscan_close_relative(tag + " step state vs reference", state_k, state_r);
    }
    ys.push_back(step(state, sel(in.u), sel(in.delta), in.A, sel(in.Bm), sel(in.Cm), in.D,
                      sel(in.z), in.bias, c.softplus));
  }
  sscan_close_elementwise(tag + " steps y vs scan", torch::stack(ys, 2), scanned.y);
  sscan_close_relative(tag + " steps state vs scan", state, scanned.last_state);
}

/// The bf16-state option of decoding: the sequence fed through `step` from a bf16 state, against
/// the reference's steps on the CPU from the same bf16 state. Both do the math in fp32, store the
/// state rounded once per step and compute y from the unrounded values; they differ by exp2 vs
/// exp and the order of the sum over n, which can move a stored value by one bf16 step, so y and
/// the state are compared at the bf16 relative tolerance whatever the input type.
inline void check_selective_steps_bf16_state(const ScanCase& c, torch::Device dev,
                                             const SelectiveStepFn& step) {
  const auto tag = case_name(c) + " bf16 state";
  torch::manual_seed(29 + c.dstate + c.len);
  torch::NoGradGuard no_grad;
  const Inputs in = make_inputs(c, dev);
  const auto init = in.init.defined()
                        ? in.init
                        : torch::zeros({c.batch, c.channels, c.dstate}, in.A.options());
  auto state_k = init.to(torch::kBFloat16).clone();
  auto state_r = init.to(torch::kCPU, torch::kBFloat16).clone();
  auto cpu = [](const torch::Tensor& x) { return x.defined() ? x.to(torch::kCPU) : x; };
  std::vector<torch::Tensor> ys_k, ys_r;
  for (int64_t t = 0; t < c.len; ++t) {
    auto sel = [t](const torch::Tensor& x) { return x.defined() ? x.select(2, t) : x; };
    ys_k.push_back(step(state_k, sel(in.u), sel(in.delta), in.A, sel(in.Bm), sel(in.Cm), in.D,
                        sel(in.z), in.bias, c.softplus));
    ys_r.push_back(ops::ref::selective_state_update(
        state_r, cpu(sel(in.u)), cpu(sel(in.delta)), cpu(in.A), cpu(sel(in.Bm)), cpu(sel(in.Cm)),
        cpu(in.D), cpu(sel(in.z)), cpu(in.bias), c.softplus));
  }
  ASSERT_EQ(state_k.scalar_type(), torch::kBFloat16) << tag;
  const auto y_k = torch::stack(ys_k, 2).cpu(), y_r = torch::stack(ys_r, 2);
  ASSERT_EQ(y_k.scalar_type(), c.dtype) << tag;
  expect_close(tag + " steps y vs reference steps", y_k.to(torch::kFloat), y_r.to(torch::kFloat),
               kSscanBf16Rel);
  expect_close(tag + " state vs reference state", state_k.cpu().to(torch::kFloat),
               state_r.to(torch::kFloat), kSscanBf16Rel);
}

}  // namespace aim::test
