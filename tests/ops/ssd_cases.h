#pragma once
// The Mamba2 SSD scan test cases shared by the CUDA kernel tests and the emulated-kernel tests:
// the case, its name, and the inputs as the mixer passes them.
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "aim/ops/split.h"
#include "aim/ops/ssd_scan.h"
#include "test_util.h"

namespace aim::test {

enum class DMode { kNone, kHead, kChannel };

struct SsdCase {
  int64_t batch, len, heads, hdim, groups, dstate;
  DMode d_mode;
  bool dt_bias, softplus, init, grad_final;
  torch::ScalarType dtype;
  bool edge = false;  ///< named Edge_*: small, for the sanitizer runs
  /// x, B and C 4 or 8 bytes past a 16-byte boundary (the kernels then load them element by
  /// element, not in 16-byte vectors)
  bool misaligned = false;
};

inline std::string case_name(const SsdCase& c) {
  const char* d = c.d_mode == DMode::kNone ? "_noD" : c.d_mode == DMode::kHead ? "" : "_Dhp";
  return std::string(c.edge ? "Edge_" : "") + "B" + std::to_string(c.batch) + "_L" +
         std::to_string(c.len) + "_H" + std::to_string(c.heads) + "_P" + std::to_string(c.hdim) +
         "_G" + std::to_string(c.groups) + "_N" + std::to_string(c.dstate) + d +
         (c.dt_bias ? "" : "_nobias") + (c.softplus ? "" : "_nosoftplus") + (c.init ? "_init" : "") +
         (c.grad_final ? "" : "_yonly") + (c.misaligned ? "_misaligned" : "") +
         (c.dtype == torch::kBFloat16 ? "_bf16" : "_fp32");
}

/// Inputs on `device` in `dtype`: x, B, C slices of one [B, L, H*P + 2GN + 16] projection from
/// element 8 (2 when misaligned) and dt a part of a wider [B, L, H + 4] one (unit last stride,
/// other strides not contiguous).
/// softplus(dt + dt_bias) ~ 0.001 .. 0.1, A in [-4, -0.5], never zeros.
struct SsdInputs {
  torch::Tensor proj, dtp;  ///< leaves
  torch::Tensor x, dt, A, Bm, Cm, D, dt_bias, init;
};

inline SsdInputs make_inputs(const SsdCase& c, torch::Device dev) {
  SsdInputs in;
  const int64_t hp = c.heads * c.hdim, gn = c.groups * c.dstate;
  const int64_t at = c.misaligned ? 2 : 8;
  in.proj = test::randn({c.batch, c.len, hp + 2 * gn + 16}, c.dtype, dev).requires_grad_(true);
  in.x = in.proj.narrow(2, at, hp).view({c.batch, c.len, c.heads, c.hdim});
  in.Bm = in.proj.narrow(2, at + hp, gn).view({c.batch, c.len, c.groups, c.dstate});
  in.Cm = in.proj.narrow(2, at + hp + gn, gn).view({c.batch, c.len, c.groups, c.dstate});
  torch::Tensor dt_values;
  if (c.softplus) {
    dt_values = torch::randn({c.batch, c.len, c.heads + 4}) * 0.5;
    if (!c.dt_bias) dt_values = dt_values - 4.5;
  } else {
    dt_values = torch::empty({c.batch, c.len, c.heads + 4}).uniform_(0.001, 0.09);
  }
  in.dtp = dt_values.to(dev, c.dtype).requires_grad_(true);
  // Split as a Mamba2 mixer splits in_proj's output: ddt goes to dt's place in dtp's gradient
  // (ops::split_grad_slot) in check_ssd_scan's first backward, to a tensor of its own in the
  // second, which finds the place handed out.
  in.dt = ops::split_last_dim(in.dtp, {2, c.heads, 2})[1];
  in.A = (-torch::empty({c.heads}).uniform_(0.5, 4.0)).to(dev).requires_grad_(true);
  if (c.d_mode == DMode::kHead) in.D = torch::empty({c.heads}).uniform_(0.5, 1.5);
  if (c.d_mode == DMode::kChannel) in.D = torch::empty({c.heads, c.hdim}).uniform_(0.5, 1.5);
  if (in.D.defined()) in.D = in.D.to(dev).requires_grad_(true);
  if (c.dt_bias) {
    auto bias = c.softplus ? torch::empty({c.heads}).uniform_(-6.0, -3.0)
                           : torch::empty({c.heads}).uniform_(0.0, 0.01);
    in.dt_bias = bias.to(dev).requires_grad_(true);
  }
  if (c.init) in.init = test::randn({c.batch, c.heads, c.hdim, c.dstate}, torch::kFloat, dev);
  return in;
}

/// y of the kernels against the fp64 reference. fp32: test::tolerance_for, elementwise. bf16:
/// max|a - b| / max|b| <= 1e-2. The kernels round the state to bf16 before the tensor-core
/// read-out C S^T, so y's error scales with sum_n |C_n S_n| 2^-9, not with |y|: with an initial
/// state (prefill) the elementwise bound fails where the read-out cancels (an emulation of the
/// kernels gave 1.0-1.6x of it at 2.7e-3 to 4e-3 of max|y|).
inline void expect_y_close(const std::string& name, const torch::Tensor& actual,
                           const torch::Tensor& expected, torch::ScalarType input_dtype) {
  if (input_dtype == torch::kBFloat16) {
    test::expect_close(name, actual, expected, 1e-2);
    return;
  }
  const auto tol = test::tolerance_for(input_dtype);
  test::expect_close(name, actual, expected, tol.atol, /*relative_to_max=*/false, tol.rtol);
}

/// The shapes of the kernel tests: AiM-B/L/XL/1B mixers (L = 257) and the `edge` cases; inputs
/// on 16-byte boundaries but for the two `misaligned` ones.
inline std::vector<SsdCase> ssd_cases() {
  std::vector<SsdCase> out;
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    // AiM-B/L/XL/1B mixers: d_model 768/1024/1536/2048 -> H = 24/32/48/64, P 64, N 128, G 1.
    for (int64_t heads : {24, 32, 48, 64}) {
      out.push_back({2, 257, heads, 64, 1, 128, DMode::kHead, true, true, false, true, dtype});
    }
    // Prefill: an initial state and the final state's gradient too; D per channel.
    out.push_back({2, 257, 8, 64, 1, 128, DMode::kChannel, true, true, true, true, dtype});
    // Lengths around the chunk (32), batch 1.
    for (int64_t len : {1, 31, 32, 33, 63, 64, 65}) {
      out.push_back({1, len, 2, 64, 1, 128, DMode::kHead, true, true, false, true, dtype, true});
    }
    // ngroups 2 and 4; d_state 16, 40 (padded to 48), 64, 256; headdim 32, 96, 128.
    out.push_back({2, 65, 4, 64, 2, 64, DMode::kHead, true, true, true, true, dtype, true});
    out.push_back({1, 40, 8, 32, 4, 16, DMode::kChannel, true, true, false, true, dtype, true});
    out.push_back({1, 70, 4, 64, 2, 40, DMode::kHead, true, true, true, true, dtype, true});
    out.push_back({1, 45, 2, 64, 1, 256, DMode::kHead, true, true, true, true, dtype, true});
    out.push_back({2, 257, 4, 64, 1, 256, DMode::kHead, true, true, false, true, dtype});
    out.push_back({1, 50, 2, 128, 1, 128, DMode::kChannel, true, true, true, true, dtype, true});
    out.push_back({1, 50, 2, 96, 2, 64, DMode::kHead, true, true, false, true, dtype, true});
    out.push_back({2, 257, 4, 128, 1, 128, DMode::kHead, true, true, false, true, dtype});
    // headdim not a multiple of the register kernels' 16-row warp tiles: 40 (a partial tile in
    // the one P tile) and 72 (a second P tile of 8 rows).
    out.push_back({1, 37, 4, 40, 2, 32, DMode::kChannel, true, true, true, true, dtype, true});
    out.push_back({1, 65, 2, 72, 1, 64, DMode::kHead, true, true, false, true, dtype, true});
    // No D, no dt_bias, no softplus, only y used.
    out.push_back({1, 40, 2, 64, 1, 64, DMode::kNone, true, true, false, true, dtype, true});
    out.push_back({1, 40, 2, 64, 1, 64, DMode::kHead, false, true, false, true, dtype, true});
    out.push_back({1, 40, 2, 64, 1, 64, DMode::kHead, true, false, true, true, dtype, true});
    out.push_back({1, 40, 2, 64, 1, 64, DMode::kHead, true, true, true, false, dtype, true});
    // Inputs off a 16-byte boundary (loaded element by element): a partial last chunk, and
    // groups with a padded d_state and an initial state.
    out.push_back({1, 65, 2, 64, 1, 128, DMode::kHead, true, true, false, true, dtype, true, true});
    out.push_back({1, 70, 4, 64, 2, 40, DMode::kHead, true, true, true, true, dtype, true, true});
  }
  return out;
}

// ---------------------------------------------------------------- the scan check

/// The op under test: ops::ssd_scan's arguments without the reference's chunk size.
using SsdScanFn = std::function<ops::SsdScanResult(
    const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
    const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D,
    const torch::Tensor& dt_bias, bool softplus, const torch::Tensor& init, bool return_final)>;

/// The bf16 edge cases the register-state kernels take by default (aligned, d_state <= 128): run
/// again with AIM_SSD_SCAN=tiles, they keep the shared-memory state kernels covered.
inline std::vector<SsdCase> ssd_register_kernel_cases() {
  std::vector<SsdCase> out;
  for (const auto& c : ssd_cases()) {
    if (c.edge && !c.misaligned && c.dtype == torch::kBFloat16 && c.dstate <= 128) out.push_back(c);
  }
  return out;
}

/// AIM_SSD_BWD_PAIRS=0: the register backward runs a block per slice (h, P tile) where it would
/// add pairs of slices in one block (every register case above but those with an odd number of
/// heads x P tiles per group).
constexpr const char* kPairsEnv = "AIM_SSD_BWD_PAIRS";

/// Register cases for the one-slice-per-block backward: a partial chunk, groups with 2 heads,
/// d_state 16 / 40 / 64, headdim 32 / 96 / 128 (P tiles of one head pair up there by default).
inline std::vector<SsdCase> ssd_unpaired_cases() {
  std::vector<SsdCase> out;
  for (const auto& c : ssd_register_kernel_cases()) {
    if (c.len == 33 || c.groups > 1 || c.hdim != 64) out.push_back(c);
  }
  return out;
}

inline double ssd_sum_tolerance(torch::ScalarType dtype) {
  return dtype == torch::kBFloat16 ? 3e-2 : 1e-3;
}

inline void ssd_close_elementwise(const std::string& name, const torch::Tensor& actual,
                                  const torch::Tensor& expected, torch::ScalarType input_dtype) {
  const auto tol = tolerance_for(input_dtype);
  expect_close(name, actual, expected, tol.atol, /*relative_to_max=*/false, tol.rtol);
}

/// The kernel tests' check of one case: `scan` (the CUDA op through dispatch, or the emulated
/// adapter) on inputs on `dev`, forward and backward, against the chunked reference in fp64 on
/// the CPU (itself checked against the recurrence). The backward runs twice and must give the
/// same bits (no atomics).
inline void check_ssd_scan(const SsdCase& c, torch::Device dev, const SsdScanFn& scan) {
  const auto tag = case_name(c);
  torch::manual_seed(11 + c.len + c.heads * 7 + c.dstate);
  const auto in = make_inputs(c, dev);

  auto r = scan(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, in.dt_bias, c.softplus, in.init,
                /*return_final_state=*/true);
  ASSERT_TRUE(r.y.grad_fn() != nullptr) << tag;
  EXPECT_NE(r.y.grad_fn()->name().find("SsdScan"), std::string::npos)
      << tag << ": expected the CUDA kernel's autograd node, got " << r.y.grad_fn()->name();
  ASSERT_EQ(r.y.scalar_type(), c.dtype) << tag;
  ASSERT_EQ(r.y.sizes(), in.x.sizes()) << tag;
  ASSERT_EQ(r.final_state.scalar_type(), torch::kFloat) << tag;
  ASSERT_EQ(r.final_state.sizes(), torch::IntArrayRef({c.batch, c.heads, c.hdim, c.dstate})) << tag;

  std::vector<torch::Tensor> inputs{in.x, in.dt, in.A, in.Bm, in.Cm};
  if (in.D.defined()) inputs.push_back(in.D);
  if (in.dt_bias.defined()) inputs.push_back(in.dt_bias);
  const auto gy = randn(r.y.sizes(), c.dtype, dev);
  const auto gs = randn(r.final_state.sizes(), torch::kFloat, dev);
  std::vector<torch::Tensor> outputs{r.y}, grad_outputs{gy};
  if (c.grad_final) {
    outputs.push_back(r.final_state);
    grad_outputs.push_back(gs);
  }
  const auto grads = torch::autograd::grad(outputs, inputs, grad_outputs, /*retain_graph=*/true);
  const auto again = torch::autograd::grad(outputs, inputs, grad_outputs);
  for (size_t i = 0; i < inputs.size(); ++i) {
    ASSERT_TRUE(grads[i].defined()) << tag << ": gradient " << i;
    EXPECT_EQ(grads[i].scalar_type(), inputs[i].scalar_type()) << tag << ": gradient " << i;
    EXPECT_EQ(grads[i].sizes(), inputs[i].sizes()) << tag << ": gradient " << i;
    EXPECT_TRUE(torch::equal(grads[i], again[i]))
        << tag << ": gradient " << i << " differs between two backward runs";
  }
  if (c.len > 1) {
    EXPECT_EQ(grads[1].stride(1), c.heads + 4) << tag << ": ddt not written into its place";
    EXPECT_EQ(again[1].stride(1), c.heads) << tag;
  }

  // Oracle: the chunked reference (itself checked against the recurrence) in fp64 on the CPU.
  std::vector<torch::Tensor> inputs_r;
  for (const auto& t : inputs) inputs_r.push_back(f64_leaf(t));
  const auto D_r = in.D.defined() ? inputs_r[5] : torch::Tensor();
  const auto bias_r = in.dt_bias.defined() ? inputs_r.back() : torch::Tensor();
  const auto init_r = in.init.defined() ? to_cpu64(in.init) : torch::Tensor();
  auto rr = ops::ref::ssd_scan(inputs_r[0], inputs_r[1], inputs_r[2], inputs_r[3], inputs_r[4],
                               D_r, bias_r, c.softplus, /*chunk_size=*/64, init_r, true);
  std::vector<torch::Tensor> outputs_r{rr.y}, grad_outputs_r{to_cpu64(gy)};
  if (c.grad_final) {
    outputs_r.push_back(rr.final_state);
    grad_outputs_r.push_back(to_cpu64(gs));
  }
  const auto grads_r = torch::autograd::grad(outputs_r, inputs_r, grad_outputs_r);

  expect_y_close(tag + " y", r.y, rr.y, c.dtype);
  ssd_close_elementwise(tag + " final_state", r.final_state, rr.final_state, c.dtype);
  ssd_close_elementwise(tag + " dx", grads[0], grads_r[0], c.dtype);
  const double tol = ssd_sum_tolerance(c.dtype);
  expect_close(tag + " ddt", grads[1], grads_r[1], tol);
  if (grads_r[2].abs().max().item<double>() == 0) {
    // One step and no initial state: no decay reaches any term, so dA is exactly zero; the
    // kernels' segment sums (cumsum_t - cumsum_s, 0 only up to rounding on a GPU) leave noise
    // of the order of 1e-10, which a tolerance relative to max|dA| = 0 cannot measure.
    const double found = grads[2].abs().max().item<double>();
    std::printf("    %-58s max|a| %.3e where the reference is exactly 0 (bound 1e-6)\n",
                (tag + " dA").c_str(), found);
    EXPECT_LE(found, 1e-6) << tag << " dA: the reference is exactly zero";
  } else {
    expect_close(tag + " dA", grads[2], grads_r[2], tol);
  }
  expect_close(tag + " dB", grads[3], grads_r[3], tol);
  expect_close(tag + " dC", grads[4], grads_r[4], tol);
  size_t k = 5;
  if (in.D.defined()) {
    expect_close(tag + " dD", grads[k], grads_r[k], tol);
    ++k;
  }
  if (in.dt_bias.defined()) expect_close(tag + " ddt_bias", grads[k], grads_r[k], tol);
}

// ---------------------------------------------------------------- clusters over heads

/// AIM_SSD_BWD_CLUSTER: the largest cluster of heads the scan's backward forms.
constexpr const char* kClusterEnv = "AIM_SSD_BWD_CLUSTER";

/// The scan with the backward's cluster of heads at most `kc`, on 8 heads in one group and in
/// two (a cluster stays inside a group), fp32 and bf16, d_state 40 (padded), an initial state:
/// `cluster_of(x, B)` (the adapter under test's choice) must give min(kc, heads per group), and
/// the scan must match the reference.
inline void check_ssd_scan_clusters(
    int kc, torch::Device dev,
    const std::function<int(const torch::Tensor&, const torch::Tensor&)>& cluster_of,
    const SsdScanFn& scan) {
  const ScopedEnv size(kClusterEnv, std::to_string(kc));
  for (int64_t groups : {1, 2}) {
    for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
      const SsdCase c{1, 45, 8, 64, groups, 40, DMode::kHead, true, true, true, true, dtype, true};
      const int per_group = static_cast<int>(c.heads / groups);
      const auto opts = torch::TensorOptions().dtype(dtype).device(dev);
      const auto x = torch::empty({c.batch, c.len, c.heads, c.hdim}, opts);
      const auto Bm = torch::empty({c.batch, c.len, c.groups, c.dstate}, opts);
      ASSERT_EQ(cluster_of(x, Bm), std::min(kc, per_group)) << case_name(c);
      check_ssd_scan(c, dev, scan);
    }
  }
}

// ---------------------------------------------------------------- packed x, B, C

/// x, B and C as the Mamba2 mixer passes them: ops::split_last_dim of one [B, L, x | B | C]
/// tensor (G groups of N, H heads of P). The scan's backward writes their gradients into their
/// places in one buffer (ops::split_grad_slot), which split_last_dim passes on as the packed
/// tensor's gradient (the same memory: no concatenation), and y and every gradient have the bits
/// of the same scan on separate copies of x, B and C.
inline void check_ssd_scan_packed_case(torch::Device dev, torch::ScalarType dtype, int64_t groups,
                                       const SsdScanFn& scan) {
  const int64_t b = 2, l = 45, h = 4, p = 32, n = 16, hp = h * p, gn = groups * n;
  const std::string tag = std::string(dtype == torch::kBFloat16 ? "bf16" : "fp32") + " G" +
                          std::to_string(groups);
  torch::manual_seed(3 + groups);
  const auto opts = torch::TensorOptions().dtype(dtype).device(dev);
  const auto fopts = torch::TensorOptions().dtype(torch::kFloat).device(dev);
  auto xbc = torch::randn({b, l, hp + 2 * gn}).to(opts).requires_grad_(true);
  const auto dt = (torch::randn({b, l, h}) * 0.5).to(opts);
  const auto A = -(torch::rand({h}) * 3 + 0.5).to(fopts);
  const auto D = torch::rand({h}).to(fopts) + 0.5;
  const auto bias = (torch::rand({h}) * 2 - 4).to(fopts);
  const auto parts = ops::split_last_dim(xbc, {hp, gn, gn});
  const auto x = parts[0].reshape({b, l, h, p});
  const auto bm = parts[1].reshape({b, l, groups, n});
  const auto cm = parts[2].reshape({b, l, groups, n});
  const auto y = scan(x, dt, A, bm, cm, D, bias, true, {}, false).y;
  const auto gy = torch::randn(y.sizes()).to(opts);
  const auto g = torch::autograd::grad({y}, {x, bm, cm, xbc}, {gy});
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(g[i].stride(1), hp + 2 * gn) << tag << ": gradient " << i << " not in its place";
    EXPECT_TRUE(g[i].is_alias_of(g[3])) << tag << ": gradient " << i << " not in the buffer";
  }
  EXPECT_EQ(g[3].data_ptr(), g[0].data_ptr()) << tag << ": the packed gradient was copied";

  auto x2 = x.detach().clone().requires_grad_(true), b2 = bm.detach().clone().requires_grad_(true);
  auto c2 = cm.detach().clone().requires_grad_(true);
  const auto y2 = scan(x2, dt, A, b2, c2, D, bias, true, {}, false).y;
  const auto g2 = torch::autograd::grad({y2}, {x2, b2, c2}, {gy});
  EXPECT_TRUE(torch::equal(y, y2)) << tag;
  EXPECT_TRUE(torch::equal(g[0], g2[0])) << tag << " dx";
  EXPECT_TRUE(torch::equal(g[1], g2[1])) << tag << " dB";
  EXPECT_TRUE(torch::equal(g[2], g2[2])) << tag << " dC";
  EXPECT_TRUE(torch::equal(g[3], torch::cat({g2[0].flatten(2), g2[1].flatten(2), g2[2].flatten(2)}, -1)))
      << tag << " d(x | B | C)";
}

/// check_ssd_scan_packed_case in fp32 and bf16, with 1 and 2 groups.
inline void check_ssd_scan_packed(torch::Device dev, const SsdScanFn& scan) {
  for (int64_t groups : {1, 2}) {
    for (auto dtype : {torch::kFloat, torch::kBFloat16}) check_ssd_scan_packed_case(dev, dtype, groups, scan);
  }
}

}  // namespace aim::test
