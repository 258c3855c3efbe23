// The RMS norm CUDA kernels (the block input's add + RMSNorm + adaLN modulate, Mamba2's gated
// group RMSNorm), forward and backward, against the reference on fp64 CPU copies, at the AiM-B/L
// shapes (L = 257, the sampling step's [B, D], the mixer's z sliced from in_proj's output) and
// at edge shapes. Outputs are poisoned with NaN before every launch; the backward runs twice and
// must give the same bits. One CPU test pins the reference of add_rms_norm_modulate to the
// model's former add_rms_norm + modulate.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "aim/ops/dispatch.h"
#include "aim/ops/norms.h"
#include "test_util.h"

namespace aim {
namespace {

constexpr double kEps = 1e-5;

std::string dtype_name(torch::ScalarType t) { return t == torch::kBFloat16 ? "bf16" : "fp32"; }

// Elementwise outputs: test::tolerance_for(dtype of the output), |a - b| <= atol + rtol |b|.
void close_elementwise(const std::string& name, const torch::Tensor& actual,
                       const torch::Tensor& expected) {
  const auto tol = test::tolerance_for(actual.scalar_type());
  test::expect_close(name, actual, expected, tol.atol, /*relative_to_max=*/false, tol.rtol);
}

// Sums over rows (dweight, dshift, dscale: fp32 outputs), max|a - b| / max|b|: 1e-4 with fp32
// inputs (fp32 sums of up to a few thousand rows); 1e-2 with bf16 inputs, where the kernel
// normalises the residual as stored in bf16 and the oracle the exact sum, 2^-9 apart per term.
void close_sum(const std::string& name, const torch::Tensor& actual,
               const torch::Tensor& expected, torch::ScalarType input_dtype) {
  test::expect_close(name, actual, expected, input_dtype == torch::kBFloat16 ? 1e-2 : 1e-4);
}

torch::Tensor f64_leaf(const torch::Tensor& t) {
  return t.detach().to(torch::kCPU, torch::kFloat64).contiguous().requires_grad_(true);
}

torch::Tensor to_cpu64(const torch::Tensor& t) { return t.detach().to(torch::kCPU, torch::kFloat64); }

void expect_same_bits(const std::string& name, const std::vector<torch::Tensor>& a,
                      const std::vector<torch::Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::equal(a[i], b[i])) << name << ": gradient " << i
                                          << " differs between two backward runs";
  }
}

void expect_kernel_ran(const torch::Tensor& out, const char* function, const std::string& name) {
  ASSERT_TRUE(out.grad_fn() != nullptr) << name;
  EXPECT_NE(out.grad_fn()->name().find(function), std::string::npos)
      << name << ": expected the CUDA kernel's autograd node, got " << out.grad_fn()->name();
}

// Kernel tests: on a GPU only, with poisoned outputs and the kernels switched on.
template <typename Case>
class NormsCudaTest : public test::CudaKernelTest<::testing::TestWithParam<Case>> {};

// ---------------------------------------------------------------- add_rms_norm_modulate

struct AddCase {
  int64_t batch, len, dim;  ///< len 0: hidden [B, D] (a sampling step)
  bool residual, residual_in_fp32, modulated, grad_residual;
  torch::ScalarType dtype, mod_dtype;  ///< hidden; shift and scale
  bool edge = false;                   ///< named Edge_*: small, for the sanitizer runs
};

std::string case_name(const AddCase& c) {
  return std::string(c.edge ? "Edge_" : "") + "B" + std::to_string(c.batch) + (c.len > 0 ? "_L" + std::to_string(c.len) : "_step") +
         "_D" + std::to_string(c.dim) + (c.residual ? "" : "_nores") +
         (c.residual_in_fp32 ? "_resf32" : "_resin") +
         (c.modulated ? "_mod" + dtype_name(c.mod_dtype) : "_nomod") +
         (c.grad_residual ? "" : "_nogradres") + "_" + dtype_name(c.dtype);
}

using NormsCudaAdd = NormsCudaTest<AddCase>;

TEST_P(NormsCudaAdd, ForwardAndBackwardMatchTheReference) {
  const auto c = GetParam();
  const auto tag = case_name(c);
  torch::manual_seed(17 + c.dim + c.len);
  const auto dev = torch::Device(torch::kCUDA);
  const std::vector<int64_t> shape =
      c.len > 0 ? std::vector<int64_t>{c.batch, c.len, c.dim} : std::vector<int64_t>{c.batch, c.dim};
  const auto res_dtype = c.residual_in_fp32 ? torch::kFloat : c.dtype;

  auto hidden = test::randn(shape, c.dtype, dev).requires_grad_(true);
  torch::Tensor residual, shift, scale;
  if (c.residual) residual = test::randn(shape, res_dtype, dev, 2.0).requires_grad_(true);
  auto weight = torch::empty({c.dim}).uniform_(0.5, 1.5).to(dev).requires_grad_(true);
  if (c.modulated) {
    shift = test::randn({c.batch, c.dim}, c.mod_dtype, dev, 0.3).requires_grad_(true);
    scale = test::randn({c.batch, c.dim}, c.mod_dtype, dev, 0.3).requires_grad_(true);
  }

  auto [out, res] = ops::add_rms_norm_modulate(hidden, residual, weight, kEps,
                                               c.residual_in_fp32, shift, scale);
  expect_kernel_ran(out, "AddRmsNorm", tag);
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
  const auto g_out = test::randn(out.sizes(), out.scalar_type(), dev);
  const auto g_res = test::randn(res.sizes(), res.scalar_type(), dev);
  std::vector<torch::Tensor> outputs{out}, grad_outputs{g_out};
  if (c.grad_residual) {
    outputs.push_back(res);
    grad_outputs.push_back(g_res);
  }
  const auto grads = torch::autograd::grad(outputs, inputs, grad_outputs, /*retain_graph=*/true);
  const auto again = torch::autograd::grad(outputs, inputs, grad_outputs);
  expect_same_bits(tag, grads, again);
  for (size_t i = 0; i < inputs.size(); ++i) {
    ASSERT_TRUE(grads[i].defined()) << tag << ": gradient " << i;
    EXPECT_EQ(grads[i].scalar_type(), inputs[i].scalar_type()) << tag << ": gradient " << i;
    EXPECT_EQ(grads[i].sizes(), inputs[i].sizes()) << tag << ": gradient " << i;
  }

  // Oracle: the reference on fp64 CPU copies of the same values (the residual sum exact).
  std::vector<torch::Tensor> inputs_r;
  for (const auto& t : inputs) inputs_r.push_back(f64_leaf(t));
  const auto& hidden_r = inputs_r[0];
  const auto& weight_r = inputs_r[1];
  const auto residual_r = c.residual ? inputs_r[2] : torch::Tensor();
  const auto shift_r = c.modulated ? inputs_r[inputs_r.size() - 2] : torch::Tensor();
  const auto scale_r = c.modulated ? inputs_r[inputs_r.size() - 1] : torch::Tensor();
  auto [out_r, res_r] = ops::ref::add_rms_norm_modulate(hidden_r, residual_r, weight_r, kEps,
                                                        /*residual_in_fp32=*/false, shift_r, scale_r);
  std::vector<torch::Tensor> outputs_r{out_r}, grad_outputs_r{to_cpu64(g_out)};
  if (c.grad_residual) {
    outputs_r.push_back(res_r);
    grad_outputs_r.push_back(to_cpu64(g_res));
  }
  const auto grads_r = torch::autograd::grad(outputs_r, inputs_r, grad_outputs_r);

  close_elementwise(tag + " out", out, out_r);
  close_elementwise(tag + " residual_out", res, res_r);
  close_elementwise(tag + " dhidden", grads[0], grads_r[0]);
  close_sum(tag + " dweight", grads[1], grads_r[1], c.dtype);
  if (c.residual) close_elementwise(tag + " dresidual", grads[2], grads_r[2]);
  if (c.modulated) {
    const size_t n = inputs.size();
    close_sum(tag + " dshift", grads[n - 2], grads_r[n - 2], c.dtype);
    close_sum(tag + " dscale", grads[n - 1], grads_r[n - 1], c.dtype);
  }
}

std::vector<AddCase> add_cases() {
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
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, NormsCudaAdd, ::testing::ValuesIn(add_cases()),
                         [](const auto& info) { return case_name(info.param); });

// ---------------------------------------------------------------- gated_rms_norm

struct GatedCase {
  int64_t batch, len, dim, group_size;  ///< len 0: x [B, E] (a sampling step)
  bool gate, norm_before_gate;
  int64_t z_offset;  ///< >= 0: z is a slice of a wider [.., 2E + 40] projection at this offset
  torch::ScalarType dtype;
  bool edge = false;  ///< named Edge_*: small, for the sanitizer runs
};

std::string case_name(const GatedCase& c) {
  return std::string(c.edge ? "Edge_" : "") + "B" + std::to_string(c.batch) + (c.len > 0 ? "_L" + std::to_string(c.len) : "_step") +
         "_E" + std::to_string(c.dim) + "_G" + std::to_string(c.group_size) +
         (c.gate ? (c.norm_before_gate ? "_normfirst" : "_gatefirst") : "_nogate") +
         (c.z_offset >= 0 ? "_zslice" + std::to_string(c.z_offset) : "") + "_" +
         dtype_name(c.dtype);
}

using NormsCudaGated = NormsCudaTest<GatedCase>;

TEST_P(NormsCudaGated, ForwardAndBackwardMatchTheReference) {
  const auto c = GetParam();
  const auto tag = case_name(c);
  torch::manual_seed(29 + c.dim + c.len);
  const auto dev = torch::Device(torch::kCUDA);
  auto shape = c.len > 0 ? std::vector<int64_t>{c.batch, c.len, c.dim}
                         : std::vector<int64_t>{c.batch, c.dim};

  auto x = test::randn(shape, c.dtype, dev).requires_grad_(true);
  torch::Tensor z;
  if (c.gate && c.z_offset >= 0) {
    auto wide_shape = shape;
    wide_shape.back() = 2 * c.dim + 40;
    auto wide = test::randn(wide_shape, c.dtype, dev, 2.0).requires_grad_(true);
    z = wide.narrow(-1, c.z_offset, c.dim);
  } else if (c.gate) {
    z = test::randn(shape, c.dtype, dev, 2.0).requires_grad_(true);
  }
  auto weight = torch::empty({c.dim}).uniform_(0.5, 1.5).to(dev).requires_grad_(true);

  auto y = ops::gated_rms_norm(x, z, weight, c.group_size, kEps, c.norm_before_gate);
  expect_kernel_ran(y, "GatedRmsNorm", tag);
  ASSERT_EQ(y.scalar_type(), c.dtype) << tag;
  ASSERT_EQ(y.sizes(), x.sizes()) << tag;

  std::vector<torch::Tensor> inputs{x, weight};
  if (c.gate) inputs.push_back(z);
  const auto g = test::randn(y.sizes(), c.dtype, dev);
  const auto grads = torch::autograd::grad({y}, inputs, {g}, /*retain_graph=*/true);
  const auto again = torch::autograd::grad({y}, inputs, {g});
  expect_same_bits(tag, grads, again);
  for (size_t i = 0; i < inputs.size(); ++i) {
    ASSERT_TRUE(grads[i].defined()) << tag << ": gradient " << i;
    EXPECT_EQ(grads[i].scalar_type(), inputs[i].scalar_type()) << tag << ": gradient " << i;
    EXPECT_EQ(grads[i].sizes(), inputs[i].sizes()) << tag << ": gradient " << i;
  }

  std::vector<torch::Tensor> inputs_r;
  for (const auto& t : inputs) inputs_r.push_back(f64_leaf(t));
  const auto z_r = c.gate ? inputs_r[2] : torch::Tensor();
  auto y_r = ops::ref::gated_rms_norm(inputs_r[0], z_r, inputs_r[1], c.group_size, kEps,
                                      c.norm_before_gate);
  const auto grads_r = torch::autograd::grad({y_r}, inputs_r, {to_cpu64(g)});

  close_elementwise(tag + " out", y, y_r);
  close_elementwise(tag + " dx", grads[0], grads_r[0]);
  close_sum(tag + " dweight", grads[1], grads_r[1], c.dtype);
  if (c.gate) close_elementwise(tag + " dz", grads[2], grads_r[2]);
}

std::vector<GatedCase> gated_cases() {
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
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, NormsCudaGated, ::testing::ValuesIn(gated_cases()),
                         [](const auto& info) { return case_name(info.param); });

// ---------------------------------------------------------------- dispatch

// The kernels are used by default on CUDA and the switch turns them off; both paths give the
// same dtypes and agree through the public ops on the same device.
TEST(NormsDispatch, SwitchSelectsTheReferenceOnCuda) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible";
  torch::manual_seed(3);
  const auto dev = torch::Device(torch::kCUDA);
  auto hidden = test::randn({2, 257, 1024}, torch::kBFloat16, dev).requires_grad_(true);
  auto residual = test::randn({2, 257, 1024}, torch::kFloat, dev).requires_grad_(true);
  auto weight = torch::empty({1024}).uniform_(0.5, 1.5).to(dev).requires_grad_(true);
  auto shift = test::randn({2, 1024}, torch::kFloat, dev, 0.3).requires_grad_(true);
  auto scale = test::randn({2, 1024}, torch::kFloat, dev, 0.3).requires_grad_(true);
  auto z = test::randn({2, 257, 2048}, torch::kBFloat16, dev).requires_grad_(true);
  auto x = test::randn({2, 257, 2048}, torch::kBFloat16, dev).requires_grad_(true);
  auto gweight = torch::empty({2048}).uniform_(0.5, 1.5).to(dev).requires_grad_(true);
  const std::vector<torch::Tensor> inputs{hidden, residual, weight, shift, scale, x, z, gweight};

  auto run = [&](bool kernels) {
    ops::set_cuda_kernels(kernels);
    auto [out, res] = ops::add_rms_norm_modulate(hidden, residual, weight, kEps, true, shift, scale);
    auto y = ops::gated_rms_norm(x, z, gweight, 2048, kEps, false);
    ops::set_cuda_kernels(true);
    torch::manual_seed(5);
    auto g_out = test::randn(out.sizes(), out.scalar_type(), dev);
    auto g_res = test::randn(res.sizes(), res.scalar_type(), dev);
    auto g_y = test::randn(y.sizes(), y.scalar_type(), dev);
    auto grads = torch::autograd::grad({out, res, y}, inputs, {g_out, g_res, g_y});
    std::vector<torch::Tensor> all{out, res, y};
    all.insert(all.end(), grads.begin(), grads.end());
    return all;
  };
  const auto ker = run(true);
  const auto ref = run(false);
  // The reference rounds intermediates (normed, its gradient) to bf16: bf16 tolerances, and the
  // sums over rows relative to their largest value.
  const char* names[] = {"out", "residual_out", "gated out", "dhidden", "dresidual", "dweight",
                         "dshift", "dscale", "dx", "dz", "gated dweight"};
  const bool row_sum[] = {false, false, false, false, false, true, true, true, false, false, true};
  for (size_t i = 0; i < ker.size(); ++i) {
    const std::string name = std::string("kernel vs reference on cuda: ") + names[i];
    EXPECT_EQ(ker[i].scalar_type(), ref[i].scalar_type()) << name;
    EXPECT_EQ(ker[i].sizes(), ref[i].sizes()) << name;
    if (row_sum[i]) {
      close_sum(name, ker[i], ref[i], torch::kBFloat16);
    } else {
      const auto tol = test::tolerance_for(torch::kBFloat16);
      test::expect_close(name, ker[i], ref[i], tol.atol, /*relative_to_max=*/false, tol.rtol);
    }
  }
}

// ---------------------------------------------------------------- reference (CPU, always runs)

// add_rms_norm_modulate's reference is exactly what the AiM block computed before it existed:
// add_rms_norm, then x * (1 + scale) + shift broadcast over L; its gradients reach every input.
TEST(AddRmsNormModulate, ReferenceIsAddRmsNormThenModulate) {
  torch::manual_seed(5);
  for (bool sequence : {true, false}) {
    const std::vector<int64_t> shape =
        sequence ? std::vector<int64_t>{2, 5, 16} : std::vector<int64_t>{2, 16};
    const std::string tag = sequence ? "[B, L, D]" : "[B, D]";
    auto hidden = torch::randn(shape).requires_grad_(true);
    auto residual = torch::randn(shape).requires_grad_(true);
    auto weight = torch::empty({16}).uniform_(0.5, 1.5).requires_grad_(true);
    auto shift = (torch::randn({2, 16}) * 0.3).requires_grad_(true);
    auto scale = (torch::randn({2, 16}) * 0.3).requires_grad_(true);

    auto [out, res] = ops::add_rms_norm_modulate(hidden, residual, weight, kEps, true, shift, scale);
    auto [normed, res_plain] = ops::add_rms_norm(hidden, residual, weight, kEps, true);
    auto expected = sequence ? normed * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
                             : normed * (1 + scale) + shift;
    EXPECT_TRUE(torch::equal(out, expected)) << tag;
    EXPECT_TRUE(torch::equal(res, res_plain)) << tag;

    const std::vector<torch::Tensor> inputs{hidden, residual, weight, shift, scale};
    const auto g_out = torch::randn(out.sizes()), g_res = torch::randn(res.sizes());
    const auto grads = torch::autograd::grad({out, res}, inputs, {g_out, g_res});
    const auto grads_expected = torch::autograd::grad({expected, res_plain}, inputs, {g_out, g_res});
    for (size_t i = 0; i < inputs.size(); ++i) {
      ASSERT_TRUE(grads[i].defined()) << tag << ": gradient " << i;
      EXPECT_EQ(grads[i].sizes(), inputs[i].sizes()) << tag << ": gradient " << i;
      EXPECT_GT(grads[i].abs().sum().item<double>(), 0.0) << tag << ": gradient " << i;
      EXPECT_TRUE(torch::equal(grads[i], grads_expected[i])) << tag << ": gradient " << i;
    }
  }
  // Without shift and scale it is add_rms_norm, the first block (no residual) included.
  auto hidden = torch::randn({2, 5, 16});
  auto weight = torch::empty({16}).uniform_(0.5, 1.5);
  auto [out, res] = ops::add_rms_norm_modulate(hidden, {}, weight, kEps, false, {}, {});
  auto [normed, res_plain] = ops::add_rms_norm(hidden, {}, weight, kEps, false);
  EXPECT_TRUE(torch::equal(out, normed));
  EXPECT_TRUE(torch::equal(res, res_plain));
  // Shape errors name the op and the tensor.
  try {
    ops::add_rms_norm_modulate(hidden, {}, weight, kEps, false, torch::zeros({2, 8}),
                               torch::zeros({2, 8}));
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("add_rms_norm_modulate: shift must be"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace aim
