#pragma once
// The RMS norm kernel test cases and checks shared by the CUDA kernel tests and the
// emulated-kernel tests: the block input's add + RMSNorm + adaLN modulate and Mamba2's gated group RMSNorm.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "aim/ops/norms.h"
#include "aim/ops/split.h"
#include "test_util.h"

namespace aim::test {

inline constexpr double kNormEps = 1e-5;

inline std::string norms_dtype_name(torch::ScalarType t) {
  return t == torch::kBFloat16 ? "bf16" : "fp32";
}

// Elementwise outputs: tolerance_for(dtype of the output), |a - b| <= atol + rtol |b|.
inline void norms_close_elementwise(const std::string& name, const torch::Tensor& actual,
                                    const torch::Tensor& expected) {
  const auto tol = tolerance_for(actual.scalar_type());
  expect_close(name, actual, expected, tol.atol, /*relative_to_max=*/false, tol.rtol);
}

// Sums over rows (dweight, dshift, dscale: fp32 outputs), max|a - b| / max|b|: 1e-4 with fp32
// inputs (fp32 sums of up to a few thousand rows); 1e-2 with bf16 inputs, where the kernel
// normalises the residual as stored in bf16 and the oracle the exact sum, 2^-9 apart per term.
inline void norms_close_sum(const std::string& name, const torch::Tensor& actual,
                            const torch::Tensor& expected, torch::ScalarType input_dtype) {
  expect_close(name, actual, expected, input_dtype == torch::kBFloat16 ? 1e-2 : 1e-4);
}

inline void norms_expect_same_bits(const std::string& name, const std::vector<torch::Tensor>& a,
                                   const std::vector<torch::Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::equal(a[i], b[i])) << name << ": gradient " << i
                                          << " differs between two backward runs";
  }
}

inline void norms_expect_kernel_ran(const torch::Tensor& out, const char* function,
                                    const std::string& name) {
  ASSERT_TRUE(out.grad_fn() != nullptr) << name;
  EXPECT_NE(out.grad_fn()->name().find(function), std::string::npos)
      << name << ": expected the CUDA kernel's autograd node, got " << out.grad_fn()->name();
}

/// The ops under test: ops::add_rms_norm_modulate's and ops::gated_rms_norm's signatures.
using AddRmsNormFn = std::function<std::pair<torch::Tensor, torch::Tensor>(
    const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight,
    double eps, bool residual_in_fp32, const torch::Tensor& shift, const torch::Tensor& scale)>;
using GatedRmsNormFn = std::function<torch::Tensor(const torch::Tensor& x, const torch::Tensor& z,
                                                   const torch::Tensor& weight, int64_t group_size,
                                                   double eps, bool norm_before_gate)>;

// ---------------------------------------------------------------- add_rms_norm_modulate

struct AddCase {
  int64_t batch, len, dim;  ///< len 0: hidden [B, D] (a sampling step)
  bool residual, residual_in_fp32, modulated, grad_residual;
  torch::ScalarType dtype, mod_dtype;  ///< hidden; shift and scale
  bool edge = false;                   ///< named Edge_*: small, for the sanitizer runs
  torch::ScalarType weight_dtype = torch::kFloat;  ///< bf16: a bf16 model's sampling step
};

inline std::string case_name(const AddCase& c) {
  return std::string(c.edge ? "Edge_" : "") + "B" + std::to_string(c.batch) + (c.len > 0 ? "_L" + std::to_string(c.len) : "_step") +
         "_D" + std::to_string(c.dim) + (c.residual ? "" : "_nores") +
         (c.residual_in_fp32 ? "_resf32" : "_resin") +
         (c.modulated ? "_mod" + norms_dtype_name(c.mod_dtype) : "_nomod") +
         (c.grad_residual ? "" : "_nogradres") +
         (c.weight_dtype == torch::kBFloat16 ? "_wbf16" : "") + "_" + norms_dtype_name(c.dtype);
}

/// The gradients of `outputs` for `inputs`, taken twice: the same bits both times, and each
/// defined with its input's dtype and shape. Empty after a failed check.
inline std::vector<torch::Tensor> norms_grads_twice(const std::string& tag,
                                                    const std::vector<torch::Tensor>& outputs,
                                                    const std::vector<torch::Tensor>& inputs,
                                                    const std::vector<torch::Tensor>& grad_outputs) {
  const auto grads = torch::autograd::grad(outputs, inputs, grad_outputs, /*retain_graph=*/true);
  const auto again = torch::autograd::grad(outputs, inputs, grad_outputs);
  norms_expect_same_bits(tag, grads, again);
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!grads[i].defined()) {
      ADD_FAILURE() << tag << ": gradient " << i << " undefined";
      return {};
    }
    EXPECT_EQ(grads[i].scalar_type(), inputs[i].scalar_type()) << tag << ": gradient " << i;
    EXPECT_EQ(grads[i].sizes(), inputs[i].sizes()) << tag << ": gradient " << i;
  }
  return grads;
}

/// The kernel tests' check of one case: `op` (the CUDA op through dispatch, or the emulated
/// adapter) on inputs on `dev`, forward and backward (twice: the same bits), against the
/// reference on fp64 CPU copies.
inline void check_add_rms_norm(const AddCase& c, torch::Device dev, const AddRmsNormFn& op) {
  const auto tag = case_name(c);
  torch::manual_seed(17 + c.dim + c.len);
  const std::vector<int64_t> shape =
      c.len > 0 ? std::vector<int64_t>{c.batch, c.len, c.dim} : std::vector<int64_t>{c.batch, c.dim};
  const auto res_dtype = c.residual_in_fp32 ? torch::kFloat : c.dtype;

  auto hidden = randn(shape, c.dtype, dev).requires_grad_(true);
  torch::Tensor residual, shift, scale;
  if (c.residual) residual = randn(shape, res_dtype, dev, 2.0).requires_grad_(true);
  auto weight = torch::empty({c.dim}).uniform_(0.5, 1.5).to(dev, c.weight_dtype).requires_grad_(true);
  if (c.modulated) {
    shift = randn({c.batch, c.dim}, c.mod_dtype, dev, 0.3).requires_grad_(true);
    scale = randn({c.batch, c.dim}, c.mod_dtype, dev, 0.3).requires_grad_(true);
  }

  auto [out, res] = op(hidden, residual, weight, kNormEps,
                                               c.residual_in_fp32, shift, scale);
  norms_expect_kernel_ran(out, "AddRmsNorm", tag);
  ASSERT_EQ(out.scalar_type(), c.dtype) << tag;
  ASSERT_EQ(res.scalar_type(), res_dtype) << tag;
  ASSERT_EQ(out.sizes(), hidden.sizes()) << tag;
  ASSERT_EQ(res.sizes(), hidden.sizes()) << tag;

  std::vector<torch::Tensor> inputs{hidden, weight};
  if (c.residual) inputs.push_back(residual);
  if (c.modulated) {
    inputs.push_back(shift);
    inputs.push_back(scale);
  }
  const auto g_out = randn(out.sizes(), out.scalar_type(), dev);
  const auto g_res = randn(res.sizes(), res.scalar_type(), dev);
  std::vector<torch::Tensor> outputs{out}, grad_outputs{g_out};
  if (c.grad_residual) {
    outputs.push_back(res);
    grad_outputs.push_back(g_res);
  }
  const auto grads = norms_grads_twice(tag, outputs, inputs, grad_outputs);
  if (grads.empty()) return;

  // Oracle: the reference on fp64 CPU copies of the same values (the residual sum exact).
  std::vector<torch::Tensor> inputs_r;
  for (const auto& t : inputs) inputs_r.push_back(f64_leaf(t));
  const auto& hidden_r = inputs_r[0];
  const auto& weight_r = inputs_r[1];
  const auto residual_r = c.residual ? inputs_r[2] : torch::Tensor();
  const auto shift_r = c.modulated ? inputs_r[inputs_r.size() - 2] : torch::Tensor();
  const auto scale_r = c.modulated ? inputs_r[inputs_r.size() - 1] : torch::Tensor();
  auto [out_r, res_r] = ops::ref::add_rms_norm_modulate(hidden_r, residual_r, weight_r, kNormEps,
                                                        /*residual_in_fp32=*/false, shift_r, scale_r);
  std::vector<torch::Tensor> outputs_r{out_r}, grad_outputs_r{to_cpu64(g_out)};
  if (c.grad_residual) {
    outputs_r.push_back(res_r);
    grad_outputs_r.push_back(to_cpu64(g_res));
  }
  const auto grads_r = torch::autograd::grad(outputs_r, inputs_r, grad_outputs_r);

  norms_close_elementwise(tag + " out", out, out_r);
  norms_close_elementwise(tag + " residual_out", res, res_r);
  norms_close_elementwise(tag + " dhidden", grads[0], grads_r[0]);
  norms_close_sum(tag + " dweight", grads[1], grads_r[1], c.dtype);
  if (c.residual) norms_close_elementwise(tag + " dresidual", grads[2], grads_r[2]);
  if (c.modulated) {
    const size_t n = inputs.size();
    norms_close_sum(tag + " dshift", grads[n - 2], grads_r[n - 2], c.dtype);
    norms_close_sum(tag + " dscale", grads[n - 1], grads_r[n - 1], c.dtype);
  }
}

/// ops::add_rms_norm_modulate's signature with the previous block's gate.
using AddRmsNormGateFn = std::function<std::pair<torch::Tensor, torch::Tensor>(
    const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight,
    double eps, bool residual_in_fp32, const torch::Tensor& shift, const torch::Tensor& scale,
    const torch::Tensor& hidden_gate)>;

/// The gated read (hidden_gate, without gradients: decoding and prefill): `op` with a gate
/// [B, D] in hidden's dtype gives the bits of the same op on hidden_gate * hidden multiplied
/// by ATen first (the kernel rounds the product to hidden's type as ATen does), and the
/// reference's values within test::tolerance_for.
inline void check_add_rms_norm_gate(const AddCase& c, torch::Device dev, const AddRmsNormGateFn& op) {
  const auto tag = case_name(c) + " gated";
  torch::manual_seed(23 + c.dim + c.len);
  torch::NoGradGuard no_grad;
  const std::vector<int64_t> shape =
      c.len > 0 ? std::vector<int64_t>{c.batch, c.len, c.dim} : std::vector<int64_t>{c.batch, c.dim};
  const auto res_dtype = c.residual_in_fp32 ? torch::kFloat : c.dtype;
  const auto hidden = randn(shape, c.dtype, dev);
  const auto gate = randn({c.batch, c.dim}, c.dtype, dev, 0.7);
  const auto weight = torch::empty({c.dim}).uniform_(0.5, 1.5).to(dev, c.weight_dtype);
  torch::Tensor residual, shift, scale;
  if (c.residual) residual = randn(shape, res_dtype, dev, 2.0);
  if (c.modulated) {
    shift = randn({c.batch, c.dim}, c.mod_dtype, dev, 0.3);
    scale = randn({c.batch, c.dim}, c.mod_dtype, dev, 0.3);
  }
  auto [out, res] = op(hidden, residual, weight, kNormEps, c.residual_in_fp32, shift, scale, gate);
  auto [out_m, res_m] = op(ops::ref::gate_hidden(hidden, gate), residual, weight, kNormEps,
                           c.residual_in_fp32, shift, scale, {});
  EXPECT_TRUE(torch::equal(out, out_m)) << tag << ": out differs from the multiply-first op";
  EXPECT_TRUE(torch::equal(res, res_m)) << tag << ": residual_out differs from the multiply-first op";
  auto cpu = [](const torch::Tensor& t) { return t.defined() ? t.to(torch::kCPU) : t; };
  auto [out_r, res_r] = ops::ref::add_rms_norm_modulate(cpu(hidden), cpu(residual), cpu(weight),
                                                        kNormEps, c.residual_in_fp32, cpu(shift),
                                                        cpu(scale), cpu(gate));
  norms_close_elementwise(tag + " out", out, out_r);
  norms_close_elementwise(tag + " residual_out", res, res_r);
}

/// The gated block input of training: hidden (the previous out_proj's, bf16 under autocast) and
/// the previous block's gate (the adaLN table's: `mod_dtype`, fp32 for AiM-L) with gradients,
/// `op` returning out in hidden's dtype (autocast's, which in_proj reads). Forward: out is the
/// multiply-first op's out rounded to hidden's dtype and residual_out its bits. Backward (twice:
/// the same bits): every gradient, dgate included, against the reference in fp64.
inline void check_add_rms_norm_gate_grad(const AddCase& c, torch::Device dev,
                                         const AddRmsNormGateFn& op) {
  const auto tag = case_name(c) + " gated, with gradients";
  torch::manual_seed(29 + c.dim + c.len);
  const std::vector<int64_t> shape =
      c.len > 0 ? std::vector<int64_t>{c.batch, c.len, c.dim} : std::vector<int64_t>{c.batch, c.dim};
  const auto res_dtype = c.residual_in_fp32 ? torch::kFloat : c.dtype;
  auto hidden = randn(shape, c.dtype, dev).requires_grad_(true);
  auto gate = randn({c.batch, c.dim}, c.mod_dtype, dev, 0.7).requires_grad_(true);
  auto weight = torch::empty({c.dim}).uniform_(0.5, 1.5).to(dev, c.weight_dtype).requires_grad_(true);
  std::vector<torch::Tensor> inputs{hidden, gate, weight};
  torch::Tensor residual, shift, scale;
  if (c.residual) inputs.push_back(residual = randn(shape, res_dtype, dev, 2.0).requires_grad_(true));
  if (c.modulated) {
    inputs.push_back(shift = randn({c.batch, c.dim}, c.mod_dtype, dev, 0.3).requires_grad_(true));
    inputs.push_back(scale = randn({c.batch, c.dim}, c.mod_dtype, dev, 0.3).requires_grad_(true));
  }
  auto [out, res] = op(hidden, residual, weight, kNormEps, c.residual_in_fp32, shift, scale, gate);
  norms_expect_kernel_ran(out, "AddRmsNorm", tag);
  ASSERT_EQ(out.scalar_type(), c.dtype) << tag;
  ASSERT_EQ(res.scalar_type(), res_dtype) << tag;
  {
    torch::NoGradGuard no_grad;
    auto [out_m, res_m] = op(ops::ref::gate_hidden(hidden, gate), residual, weight, kNormEps,
                             c.residual_in_fp32, shift, scale, {});
    EXPECT_TRUE(torch::equal(out, out_m.to(c.dtype))) << tag << ": out is not the multiply-first op's";
    EXPECT_TRUE(torch::equal(res, res_m)) << tag << ": residual_out is not the multiply-first op's";
  }

  const auto g_out = randn(out.sizes(), out.scalar_type(), dev);
  const auto g_res = randn(res.sizes(), res.scalar_type(), dev);
  std::vector<torch::Tensor> outputs{out}, grad_outputs{g_out};
  if (c.grad_residual) {
    outputs.push_back(res);
    grad_outputs.push_back(g_res);
  }
  const auto grads = norms_grads_twice(tag, outputs, inputs, grad_outputs);
  if (grads.empty()) return;

  // Oracle: the reference (gate multiply, add, norm, modulate) on fp64 copies. A bf16 gate on
  // bf16 hidden has a bf16 product (ATen's): rounded once here too (the fp64 product of two
  // bf16 values is exact), with the identity as its gradient.
  std::vector<torch::Tensor> inputs_r;
  for (const auto& t : inputs) inputs_r.push_back(f64_leaf(t));
  const size_t n = inputs.size();
  const auto residual_r = c.residual ? inputs_r[3] : torch::Tensor();
  const auto shift_r = c.modulated ? inputs_r[n - 2] : torch::Tensor();
  const auto scale_r = c.modulated ? inputs_r[n - 1] : torch::Tensor();
  auto gated_r = ops::ref::gate_hidden(inputs_r[0], inputs_r[1]);
  if (c.dtype == torch::kBFloat16 && c.mod_dtype == torch::kBFloat16) {
    gated_r = gated_r + (gated_r.to(torch::kBFloat16).to(torch::kFloat64) - gated_r).detach();
  }
  auto [out_r, res_r] = ops::ref::add_rms_norm_modulate(gated_r, residual_r, inputs_r[2],
                                                        kNormEps, false, shift_r, scale_r);
  std::vector<torch::Tensor> outputs_r{out_r}, grad_outputs_r{to_cpu64(g_out)};
  if (c.grad_residual) {
    outputs_r.push_back(res_r);
    grad_outputs_r.push_back(to_cpu64(g_res));
  }
  const auto grads_r = torch::autograd::grad(outputs_r, inputs_r, grad_outputs_r);
  norms_close_elementwise(tag + " out", out, out_r);
  norms_close_elementwise(tag + " residual_out", res, res_r);
  norms_close_elementwise(tag + " dhidden", grads[0], grads_r[0]);
  norms_close_sum(tag + " dgate", grads[1], grads_r[1], c.dtype);
  norms_close_sum(tag + " dweight", grads[2], grads_r[2], c.dtype);
  if (c.residual) norms_close_elementwise(tag + " dresidual", grads[3], grads_r[3]);
  if (c.modulated) {
    norms_close_sum(tag + " dshift", grads[n - 2], grads_r[n - 2], c.dtype);
    norms_close_sum(tag + " dscale", grads[n - 1], grads_r[n - 1], c.dtype);
  }
}

/// add_rms_norm_modulate shapes: AiM-B/L blocks, norm_f, a sampling step and the `edge` cases.
inline std::vector<AddCase> add_cases() {
  std::vector<AddCase> out;
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    // AiM-B (per-layer adaLN: shift/scale in the hidden dtype) and AiM-L (adaLN-group: fp32).
    out.push_back({2, 257, 768, true, true, true, true, dtype, dtype});
    out.push_back({4, 257, 1024, true, true, true, true, dtype, torch::kFloat});
    // The first block (no residual yet), the residual kept in the hidden dtype.
    out.push_back({2, 257, 768, false, true, true, true, dtype, dtype});
    out.push_back({3, 257, 1024, true, false, true, true, dtype, dtype});
    out.push_back({2, 257, 1024, false, false, true, true, dtype, dtype});
    // norm_f: no modulation, the residual output unused.
    out.push_back({2, 257, 1024, true, true, false, false, dtype, dtype});
    // A sampling step: hidden [B, D].
    out.push_back({4, 0, 1024, true, true, true, true, dtype, torch::kFloat});
    // Edges: one row, D not a multiple of 4 or 8, the largest D.
    out.push_back({1, 1, 37, true, true, true, true, dtype, dtype, true});
    out.push_back({1, 0, 37, true, false, true, false, dtype, dtype, true});
    out.push_back({3, 5, 37, true, true, true, true, dtype, dtype, true});
    out.push_back({2, 9, 8192, true, true, true, true, dtype, dtype, true});
  }
  // A bf16 model's sampling step: weight, shift and scale read as bf16 (no conversions); bf16
  // weights with fp32 modulation; and edges with bf16 parameters on the 4-wide and the scalar
  // paths.
  const auto h = torch::kBFloat16, f = torch::kFloat;
  out.push_back({4, 0, 1024, true, true, true, true, h, h, false, h});
  out.push_back({2, 5, 1024, true, true, true, true, h, f, false, h});
  out.push_back({1, 0, 36, true, true, true, false, h, h, true, h});
  out.push_back({3, 5, 37, true, true, true, true, h, h, true, h});
  return out;
}

// ---------------------------------------------------------------- gated_rms_norm

struct GatedCase {
  int64_t batch, len, dim, group_size;  ///< len 0: x [B, E] (a sampling step)
  bool gate, norm_before_gate;
  int64_t z_offset;  ///< >= 0: z is a slice of a wider [.., 2E + 40] projection at this offset
  torch::ScalarType dtype;
  bool edge = false;  ///< named Edge_*: small, for the sanitizer runs
  torch::ScalarType weight_dtype = torch::kFloat;  ///< bf16: a bf16 model's sampling step
};

inline std::string case_name(const GatedCase& c) {
  return std::string(c.edge ? "Edge_" : "") + "B" + std::to_string(c.batch) + (c.len > 0 ? "_L" + std::to_string(c.len) : "_step") +
         "_E" + std::to_string(c.dim) + "_G" + std::to_string(c.group_size) +
         (c.gate ? (c.norm_before_gate ? "_normfirst" : "_gatefirst") : "_nogate") +
         (c.z_offset >= 0 ? "_zslice" + std::to_string(c.z_offset) : "") +
         (c.weight_dtype == torch::kBFloat16 ? "_wbf16" : "") + "_" + norms_dtype_name(c.dtype);
}

/// The kernel tests' check of one case: `op` (the CUDA op through dispatch, or the emulated
/// adapter) on inputs on `dev`, forward and backward (twice: the same bits), against the
/// reference on fp64 CPU copies.
inline void check_gated_rms_norm(const GatedCase& c, torch::Device dev,
                                 const GatedRmsNormFn& op) {
  const auto tag = case_name(c);
  torch::manual_seed(29 + c.dim + c.len);
  auto shape = c.len > 0 ? std::vector<int64_t>{c.batch, c.len, c.dim}
                         : std::vector<int64_t>{c.batch, c.dim};

  auto x = randn(shape, c.dtype, dev).requires_grad_(true);
  torch::Tensor z;
  if (c.gate && c.z_offset >= 0) {
    auto wide_shape = shape;
    wide_shape.back() = 2 * c.dim + 40;
    auto wide = randn(wide_shape, c.dtype, dev, 2.0).requires_grad_(true);
    // As a Mamba2 mixer splits in_proj's output: dz then goes to z's place in wide's gradient
    // (ops::split_grad_slot), rows at wide's stride, in the first backward below; the second
    // finds the place handed out and writes a tensor of its own, which must hold the same bits.
    z = ops::split_last_dim(wide, {c.z_offset, c.dim, c.dim + 40 - c.z_offset})[1];
  } else if (c.gate) {
    z = randn(shape, c.dtype, dev, 2.0).requires_grad_(true);
  }
  auto weight = torch::empty({c.dim}).uniform_(0.5, 1.5).to(dev, c.weight_dtype).requires_grad_(true);

  auto y = op(x, z, weight, c.group_size, kNormEps, c.norm_before_gate);
  norms_expect_kernel_ran(y, "GatedRmsNorm", tag);
  ASSERT_EQ(y.scalar_type(), c.dtype) << tag;
  ASSERT_EQ(y.sizes(), x.sizes()) << tag;

  std::vector<torch::Tensor> inputs{x, weight};
  if (c.gate) inputs.push_back(z);
  const auto g = randn(y.sizes(), c.dtype, dev);
  const auto grads = torch::autograd::grad({y}, inputs, {g}, /*retain_graph=*/true);
  const auto again = torch::autograd::grad({y}, inputs, {g});
  norms_expect_same_bits(tag, grads, again);
  if (c.gate && c.z_offset >= 0) {
    EXPECT_EQ(grads[2].stride(-2), 2 * c.dim + 40) << tag << ": dz not written into its place";
    EXPECT_EQ(again[2].stride(-2), c.dim) << tag;
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    ASSERT_TRUE(grads[i].defined()) << tag << ": gradient " << i;
    EXPECT_EQ(grads[i].scalar_type(), inputs[i].scalar_type()) << tag << ": gradient " << i;
    EXPECT_EQ(grads[i].sizes(), inputs[i].sizes()) << tag << ": gradient " << i;
  }

  std::vector<torch::Tensor> inputs_r;
  for (const auto& t : inputs) inputs_r.push_back(f64_leaf(t));
  const auto z_r = c.gate ? inputs_r[2] : torch::Tensor();
  auto y_r = ops::ref::gated_rms_norm(inputs_r[0], z_r, inputs_r[1], c.group_size, kNormEps,
                                      c.norm_before_gate);
  const auto grads_r = torch::autograd::grad({y_r}, inputs_r, {to_cpu64(g)});

  norms_close_elementwise(tag + " out", y, y_r);
  norms_close_elementwise(tag + " dx", grads[0], grads_r[0]);
  norms_close_sum(tag + " dweight", grads[1], grads_r[1], c.dtype);
  if (c.gate) norms_close_elementwise(tag + " dz", grads[2], grads_r[2]);
}

/// gated_rms_norm shapes: AiM-B/L mixers, other orders and groups, and the `edge` cases.
inline std::vector<GatedCase> gated_cases() {
  std::vector<GatedCase> out;
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    // AiM-B / AiM-L mixers (ngroups 1, norm_before_gate false, z sliced from in_proj's output).
    out.push_back({2, 257, 1536, 1536, true, false, 0, dtype});
    out.push_back({2, 257, 2048, 2048, true, false, 0, dtype});
    out.push_back({4, 0, 2048, 2048, true, false, 0, dtype});
    // The other gate order, ngroups 2, no gate, a z slice off the 4-element alignment.
    out.push_back({2, 33, 1536, 1536, true, true, -1, dtype});
    out.push_back({2, 65, 2048, 1024, true, false, -1, dtype});
    out.push_back({3, 7, 1536, 768, true, true, 0, dtype});
    out.push_back({2, 17, 1024, 512, false, false, -1, dtype});
    out.push_back({2, 9, 1024, 1024, true, false, 3, dtype});
    // Edges: one row, groups not a multiple of 4 or 8, the largest group.
    out.push_back({1, 1, 37, 37, true, false, -1, dtype, true});
    out.push_back({1, 0, 74, 37, true, true, 0, dtype, true});
    out.push_back({2, 9, 8192, 8192, true, false, -1, dtype, true});
  }
  // A bf16 model's sampling step (the weight read as bf16), and edges with a bf16 weight.
  const auto h = torch::kBFloat16;
  out.push_back({4, 0, 2048, 2048, true, false, 0, h, false, h});
  out.push_back({1, 0, 74, 37, true, true, 0, h, true, h});
  out.push_back({2, 3, 72, 36, true, false, -1, h, true, h});
  return out;
}

// ---------------------------------------------------------------- add_rms_norm_modulate_linear

/// One decoding step's block input and in_proj: hidden [rows, D].
struct NormLinearCase {
  int64_t rows, dim, features;
  bool residual, gate, modulated, bias, residual_in_fp32;
  torch::ScalarType dtype;        ///< hidden, gate, the linear weight and bias, out
  torch::ScalarType param_dtype;  ///< the norm's weight, shift and scale
  bool edge = false;              ///< named Edge_*: small, for the sanitizer runs
};

inline std::string case_name(const NormLinearCase& c) {
  return std::string(c.edge ? "Edge_" : "") + "R" + std::to_string(c.rows) + "_D" +
         std::to_string(c.dim) + "_N" + std::to_string(c.features) +
         (c.residual ? "" : "_nores") + (c.gate ? "" : "_nogate") +
         (c.modulated ? "" : "_nomod") + (c.bias ? "_bias" : "") +
         (c.residual_in_fp32 ? "_resf32" : "_resin") + "_p" + norms_dtype_name(c.param_dtype) +
         "_" + norms_dtype_name(c.dtype);
}

/// ops::add_rms_norm_modulate_linear's signature.
using NormLinearFn = std::function<std::pair<torch::Tensor, torch::Tensor>(
    const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight,
    double eps, bool residual_in_fp32, const torch::Tensor& shift, const torch::Tensor& scale,
    const torch::Tensor& hidden_gate, const torch::Tensor& linear_weight,
    const torch::Tensor& linear_bias)>;

/// The fused block input + linear (`op`) on inputs on `dev`, against the norm op alone
/// (`norm_op`, the norm kernel of the same build): residual' the same bits, and the projection
/// equal to the norm's output projected in fp64 within test::tolerance_for(dtype) elementwise
/// (the two differ only in the order of the fp32 sums and the output's rounding); and against
/// the fp64 reference of the whole (the normalised rows not rounded to dtype) by max|diff| /
/// max|ref|: 1e-2 in bf16, 1e-4 in fp32.
inline void check_norm_linear(const NormLinearCase& c, torch::Device dev, const NormLinearFn& op,
                              const AddRmsNormGateFn& norm_op) {
  const auto tag = case_name(c);
  torch::manual_seed(31 + c.dim + c.features + c.rows);
  torch::NoGradGuard no_grad;
  const auto res_dtype = c.residual_in_fp32 ? torch::kFloat : c.dtype;
  const auto hidden = randn({c.rows, c.dim}, c.dtype, dev);
  const auto weight = torch::empty({c.dim}).uniform_(0.5, 1.5).to(dev, c.param_dtype);
  torch::Tensor residual, gate, shift, scale, bias;
  if (c.residual) residual = randn({c.rows, c.dim}, res_dtype, dev, 2.0);
  if (c.gate) gate = randn({c.rows, c.dim}, c.dtype, dev, 0.7);
  if (c.modulated) {
    shift = randn({c.rows, c.dim}, c.param_dtype, dev, 0.3);
    scale = randn({c.rows, c.dim}, c.param_dtype, dev, 0.3);
  }
  const auto linear_weight =
      randn({c.features, c.dim}, c.dtype, dev, 1.0 / std::sqrt(static_cast<double>(c.dim)));
  if (c.bias) bias = randn({c.features}, c.dtype, dev, 0.5);

  auto [out, res] =
      op(hidden, residual, weight, kNormEps, c.residual_in_fp32, shift, scale, gate, linear_weight, bias);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{c.rows, c.features})) << tag;
  ASSERT_EQ(out.scalar_type(), c.dtype) << tag;
  ASSERT_EQ(res.sizes(), hidden.sizes()) << tag;
  ASSERT_EQ(res.scalar_type(), res_dtype) << tag;

  auto [x_n, res_n] = norm_op(hidden, residual, weight, kNormEps, c.residual_in_fp32, shift, scale, gate);
  EXPECT_TRUE(torch::equal(res, res_n)) << tag << ": residual_out differs from the norm op's";
  auto cpu64 = [](const torch::Tensor& t) { return t.defined() ? to_cpu64(t) : t; };
  const auto projected = torch::nn::functional::linear(cpu64(x_n), cpu64(linear_weight), cpu64(bias));
  norms_close_elementwise(tag + " out vs norm + fp64 linear", out, projected);

  // The gated hidden as ATen rounds it (the op's semantics), the rest in fp64.
  const auto gated = gate.defined() ? ops::ref::gate_hidden(hidden, gate) : hidden;
  auto [x_r, res_r] = ops::ref::add_rms_norm_modulate(cpu64(gated), cpu64(residual), cpu64(weight),
                                                      kNormEps, /*residual_in_fp32=*/false,
                                                      cpu64(shift), cpu64(scale));
  const auto out_r = torch::nn::functional::linear(x_r, cpu64(linear_weight), cpu64(bias));
  expect_close(tag + " out vs fp64 reference", out, out_r, c.dtype == torch::kBFloat16 ? 1e-2 : 1e-4);
  norms_close_elementwise(tag + " residual_out vs fp64 reference", res, res_r);
}

/// Decoding steps of AiM-B/L/XL/1B (rows: batch x 2 with guidance; in_proj widths of Mamba2 and
/// Mamba1 blocks), every row count the kernel takes, and the `edge` cases.
inline std::vector<NormLinearCase> norm_linear_cases() {
  std::vector<NormLinearCase> out;
  const auto h = torch::kBFloat16, f = torch::kFloat;
  // bf16 models: adaLN-group modulation in bf16 (AiM-L/XL/1B), rows 2 (one image with
  // guidance), 1, 4 and 8; the residual in fp32.
  out.push_back({2, 1024, 4384, true, true, true, false, true, h, h});
  out.push_back({1, 768, 3352, true, true, true, false, true, h, h});
  out.push_back({4, 1536, 6448, true, true, true, false, true, h, h});
  out.push_back({8, 1024, 4384, true, true, true, false, true, h, h});
  out.push_back({2, 2048, 8512, true, true, true, false, true, h, h});
  // Three rows (padded to four), the first block (no residual, no gate), a Mamba1 in_proj, bias,
  // the residual in bf16, fp32 modulation.
  out.push_back({3, 1024, 4384, true, true, true, false, true, h, h});
  out.push_back({2, 1024, 4384, false, false, true, false, true, h, h});
  out.push_back({6, 768, 3072, true, true, true, true, false, h, f});
  // fp32 models.
  out.push_back({2, 1024, 4384, true, true, true, false, true, f, f});
  out.push_back({5, 768, 3352, true, true, false, true, true, f, f});
  // fp32 rows in shared memory at and past 48 KiB: 8 rows of AiM-XL's 1536 (exactly 48 KiB, so
  // the kernel's static scratch takes it over the default limit) and of AiM-1B's 2048 (64 KiB).
  // A few features: the shared memory does not depend on them.
  out.push_back({8, 1536, 40, true, true, true, false, true, f, f});
  out.push_back({6, 2048, 40, true, true, true, false, true, f, f});
  // Edges: D not a multiple of the 256-element warp stride, fewer features than one warp's
  // four, features not a multiple of four, one row, D = 8 (bf16) / 4 (fp32).
  out.push_back({2, 264, 37, true, true, true, true, true, h, h, true});
  out.push_back({1, 40, 3, true, false, true, false, false, h, f, true});
  out.push_back({7, 8, 70, true, true, true, true, true, h, h, true});
  out.push_back({2, 36, 45, true, true, true, true, true, f, f, true});
  out.push_back({8, 4, 9, false, false, false, false, true, f, f, true});
  return out;
}

}  // namespace aim::test
