// The gated RMSNorm CPU kernel, forward and backward, against the reference in fp64 on random
// inputs, on each instruction-set path the CPU has: both gate orders, no gate, one and several
// groups, groups not a multiple of 16, a z sliced from a wider projection, a sampling step's
// [B, E], fp32 and bf16; the same bits at any thread count; chosen by default and turned off by
// the switch.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "aim/ops/dispatch.h"
#include "aim/ops/norms.h"
#include "ops/cpu_isas.h"
#include "ops/norms_cases.h"
#include "test_util.h"

namespace aim {
namespace {

constexpr double kEps = 1e-5;

struct GatedCase {
  int64_t batch, len, dim, group_size;  ///< len 0: x [B, E] (a sampling step)
  bool gate, norm_before_gate, z_slice;
  torch::ScalarType dtype;
};

std::string case_name(const GatedCase& c) {
  return "B" + std::to_string(c.batch) + (c.len > 0 ? "_L" + std::to_string(c.len) : "_step") + "_E" +
         std::to_string(c.dim) + "_G" + std::to_string(c.group_size) +
         (c.gate ? (c.norm_before_gate ? "_normfirst" : "_gatefirst") : "_nogate") +
         (c.z_slice ? "_zslice" : "") + (c.dtype == torch::kBFloat16 ? "_bf16" : "_fp32");
}

// max|diff| / max|expected|: fp32 arithmetic against fp64 (measured below 1e-6); bf16 outputs and
// gradients carry their rounding (2^-8 relative) on top.
double tolerance(torch::ScalarType dtype) { return dtype == torch::kBFloat16 ? 1e-2 : 1e-5; }

class GatedRmsNormCpu : public ::testing::TestWithParam<GatedCase> {};

TEST_P(GatedRmsNormCpu, ForwardAndBackwardMatchTheReference) {
  const auto c = GetParam();
  const auto tag = case_name(c);
  torch::manual_seed(31 + c.dim + c.len);
  auto shape = c.len > 0 ? std::vector<int64_t>{c.batch, c.len, c.dim} : std::vector<int64_t>{c.batch, c.dim};
  auto x = test::randn(shape, c.dtype).requires_grad_(true);
  torch::Tensor z, z_leaf;
  if (c.gate && c.z_slice) {
    auto wide_shape = shape;
    wide_shape.back() = 2 * c.dim + 40;
    z_leaf = test::randn(wide_shape, c.dtype, torch::kCPU, 2.0).requires_grad_(true);
    z = z_leaf.narrow(-1, 3, c.dim);
  } else if (c.gate) {
    z = z_leaf = test::randn(shape, c.dtype, torch::kCPU, 2.0).requires_grad_(true);
  }
  auto weight = torch::empty({c.dim}).uniform_(0.5, 1.5).requires_grad_(true);

  std::vector<torch::Tensor> inputs{x, weight};
  if (c.gate) inputs.push_back(z);
  const auto g = test::randn(x.sizes(), c.dtype);

  std::vector<torch::Tensor> inputs_r;
  for (const auto& t : inputs) inputs_r.push_back(t.detach().to(torch::kFloat64).requires_grad_(true));
  auto y_r = ops::ref::gated_rms_norm(inputs_r[0], c.gate ? inputs_r[2] : torch::Tensor(), inputs_r[1],
                                      c.group_size, kEps, c.norm_before_gate);
  const auto grads_r = torch::autograd::grad({y_r}, inputs_r, {g.to(torch::kFloat64)});
  const double tol = tolerance(c.dtype);

  ops::set_cpu_kernels(true);
  for (const auto isa : test::runnable_cpu_isas()) {
    const test::ScopedCpuIsa scope(isa);
    const auto itag = tag + test::isa_tag(isa);
    auto y = ops::gated_rms_norm(x, z, weight, c.group_size, kEps, c.norm_before_gate);
    ASSERT_EQ(y.scalar_type(), c.dtype) << itag;
    ASSERT_EQ(y.sizes(), x.sizes()) << itag;
    const auto grads = torch::autograd::grad({y}, inputs, {g});
    for (size_t i = 0; i < inputs.size(); ++i) {
      EXPECT_EQ(grads[i].scalar_type(), inputs[i].scalar_type()) << itag << ": gradient " << i;
      EXPECT_EQ(grads[i].sizes(), inputs[i].sizes()) << itag << ": gradient " << i;
    }
    test::expect_close(itag + " out", y, y_r, tol);
    test::expect_close(itag + " dx", grads[0], grads_r[0], tol);
    test::expect_close(itag + " dweight", grads[1], grads_r[1], tol);
    if (c.gate) test::expect_close(itag + " dz", grads[2], grads_r[2], tol);
  }
}

std::vector<GatedCase> cases() {
  std::vector<GatedCase> out;
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    // The demo model's mixer (d_inner 512, ngroups 1, gate first, z sliced from in_proj's output).
    out.push_back({2, 65, 512, 512, true, false, true, dtype});
    out.push_back({4, 0, 512, 512, true, false, true, dtype});
    // The other gate order, ngroups 2 and 4, no gate; more than one block of rows.
    out.push_back({2, 33, 256, 256, true, true, false, dtype});
    out.push_back({3, 50, 256, 128, true, false, false, dtype});
    out.push_back({2, 17, 128, 32, false, false, false, dtype});
    // Edges: one row, groups not a multiple of 16.
    out.push_back({1, 1, 37, 37, true, false, false, dtype});
    out.push_back({1, 0, 74, 37, true, true, true, dtype});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, GatedRmsNormCpu, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return case_name(info.param); });

// Rows in fixed blocks, weight partials summed in order: the same bits at 1 and 2 threads.
TEST(GatedRmsNormCpuKernel, SameBitsAtAnyThreadCount) {
  torch::manual_seed(8);
  const auto x0 = test::randn({5, 70, 96});
  const auto z0 = test::randn({5, 70, 96}, torch::kFloat, torch::kCPU, 2.0);
  const auto w0 = torch::empty({96}).uniform_(0.5, 1.5);
  const auto g = test::randn({5, 70, 96});
  ops::set_cpu_kernels(true);
  auto run = [&](int threads) {
    const int before = at::get_num_threads();
    at::set_num_threads(threads);
    auto x = x0.clone().requires_grad_(true), z = z0.clone().requires_grad_(true);
    auto w = w0.clone().requires_grad_(true);
    auto y = ops::gated_rms_norm(x, z, w, 48, kEps, false);
    auto grads = torch::autograd::grad({y}, {x, z, w}, {g});
    at::set_num_threads(before);
    return std::vector<torch::Tensor>{y.detach(), grads[0], grads[1], grads[2]};
  };
  auto one = run(1), two = run(2);
  for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(torch::equal(one[i], two[i])) << "output " << i;
}

// The kernel is the default on the CPU; the switch selects the reference, and both agree.
TEST(GatedRmsNormCpuKernel, SwitchSelectsTheReference) {
  torch::manual_seed(6);
  auto x = test::randn({2, 9, 64}), z = test::randn({2, 9, 64});
  auto w = torch::empty({64}).uniform_(0.5, 1.5);
  ops::set_cpu_kernels(false);
  auto ref_out = ops::gated_rms_norm(x, z, w, 64, kEps, false);
  ops::set_cpu_kernels(true);
  auto ker_out = ops::gated_rms_norm(x, z, w, 64, kEps, false);
  test::expect_close("kernel vs reference on the cpu", ker_out, ref_out, 1e-5);
}

// The previous block's gate read by the add + norm (decoding, prefill): on the CPU the op
// multiplies first, as ATen; the kernels' version of the same check runs on a GPU and emulated.
// A gate of the wrong shape is an error naming it.
TEST(AddRmsNormGate, CpuOpMultipliesFirst) {
  for (const auto& c : test::add_cases()) {
    if (!c.edge && c.len != 0) continue;
    test::check_add_rms_norm_gate(c, torch::kCPU,
                                  [](const torch::Tensor& hidden, const torch::Tensor& residual,
                                     const torch::Tensor& weight, double eps, bool res32,
                                     const torch::Tensor& shift, const torch::Tensor& scale,
                                     const torch::Tensor& gate) {
                                    return ops::add_rms_norm_modulate(hidden, residual, weight, eps,
                                                                      res32, shift, scale, gate);
                                  });
  }
  try {
    ops::add_rms_norm(torch::randn({2, 3, 8}), {}, torch::ones({8}), kEps, true, torch::ones({3, 8}));
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("hidden_gate must be [2, 8], got [3, 8]"), std::string::npos)
        << e.what();
  }
}

// out's dtype: that of the gate's product (fp32 for an fp32 gate on bf16 hidden, as ATen), or
// `out_dtype` (training under autocast asks for bf16), which is then exactly that out rounded.
TEST(AddRmsNormGate, OutDtypeIsTheProductsOrTheOneAskedFor) {
  torch::manual_seed(8);
  const auto hidden = torch::randn({2, 5, 16}).to(torch::kBFloat16);
  const auto residual = torch::randn({2, 5, 16});
  const auto gate = torch::randn({2, 16}), shift = torch::randn({2, 16}) * 0.3,
             scale = torch::randn({2, 16}) * 0.3;
  const auto w = torch::rand({16}) + 0.5;
  auto [out, res] = ops::add_rms_norm_modulate(hidden, residual, w, kEps, true, shift, scale, gate);
  EXPECT_EQ(out.scalar_type(), torch::kFloat);
  auto [out_b, res_b] =
      ops::add_rms_norm_modulate(hidden, residual, w, kEps, true, shift, scale, gate, torch::kBFloat16);
  EXPECT_EQ(out_b.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(out_b, out.to(torch::kBFloat16)));
  EXPECT_TRUE(torch::equal(res_b, res));
  // Without a gate, the same for the first block's fp32 embeddings.
  auto [out_f, res_f] = ops::add_rms_norm_modulate(residual, {}, w, kEps, true, shift, scale);
  auto [out_fb, res_fb] =
      ops::add_rms_norm_modulate(residual, {}, w, kEps, true, shift, scale, {}, torch::kBFloat16);
  EXPECT_TRUE(torch::equal(out_fb, out_f.to(torch::kBFloat16)));
  EXPECT_THROW(ops::add_rms_norm_modulate(residual, {}, w, kEps, true, shift, scale, {}, torch::kInt),
               c10::Error);
}

}  // namespace
}  // namespace aim
