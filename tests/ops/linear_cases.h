#pragma once
// The small-batch linear kernel's test cases, shared by the CUDA test and the emulated-kernel
// test: the case, its name, and the check against an fp64 product of the same bf16 values.
#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "test_util.h"

namespace aim::test {

struct LinearCase {
  std::vector<int64_t> lead;  ///< x's leading dimensions (their product: the rows)
  int64_t in, out;
  bool bias;
  int64_t x_pad = 0;  ///< x is a [.., in] slice of a [.., in + x_pad] tensor (row stride)
};

inline std::string linear_case_name(const LinearCase& c) {
  std::string rows;
  for (const auto d : c.lead) rows += (rows.empty() ? "" : "x") + std::to_string(d);
  return "M" + rows + "_K" + std::to_string(c.in) + "_N" + std::to_string(c.out) + (c.bias ? "_bias" : "") +
         (c.x_pad ? "_stride" + std::to_string(c.in + c.x_pad) : "");
}

/// Shapes the kernel takes: 1 to 64 rows (one, two and four 16-row tiles, partly filled), K from
/// one 32-wide step (fewer steps than the block's warps) to AiM's 1024 and 2048, N not a multiple
/// of a block's 8 or 16 features, N wide enough for 16-feature blocks (more than 16 x 132; at 32
/// and at 33-64 rows), x a slice of a wider tensor and x with two leading dimensions.
inline std::vector<LinearCase> linear_cases() {
  return {
      {{1}, 32, 1, true},          {{7}, 96, 15, false, 8},    {{16}, 256, 40, true},
      {{17}, 64, 24, true},        {{32}, 1024, 200, false},   {{33}, 160, 72, true, 16},
      {{64}, 512, 136, true},      {{32}, 2048, 64, false},    {{32}, 64, 2200, true},
      {{2, 3}, 128, 48, true},     {{40}, 96, 2120, true},
  };
}

/// Runs `op` (ops::linear on `dev`) on bf16 x, weight, bias of case `c` and checks it against the
/// product in fp64 of the same values: the kernel adds in fp32 and rounds once to bf16, whose
/// rounding is up to 2^-8 of the value, so the bound is 2^-7 of each element (twice that) plus
/// 1e-5 for the fp32 sums. The op must give the same bits twice.
inline void check_linear(
    const LinearCase& c, torch::Device dev,
    const std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&)>& op,
    const std::function<bool(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&)>& kernel_takes) {
  const auto tag = linear_case_name(c);
  torch::manual_seed(static_cast<uint64_t>(c.in * 31 + c.out));
  const auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16).device(dev);
  auto shape = c.lead;
  shape.push_back(c.in + c.x_pad);
  const auto x = torch::randn(shape).to(bf16).narrow(-1, 0, c.in);
  const auto w = (torch::randn({c.out, c.in}) / std::sqrt(static_cast<double>(c.in))).to(bf16);
  const auto b = c.bias ? torch::randn({c.out}).to(bf16) : torch::Tensor();
  ASSERT_TRUE(kernel_takes(x, w, b)) << tag << ": the kernel refused the case";
  const auto out = op(x, w, b);
  auto expected_shape = c.lead;
  expected_shape.push_back(c.out);
  ASSERT_EQ(out.sizes(), torch::IntArrayRef(expected_shape)) << tag;
  ASSERT_EQ(out.scalar_type(), torch::kBFloat16) << tag;
  EXPECT_TRUE(torch::equal(out, op(x, w, b))) << tag << ": two runs differ";
  auto f64 = [](const torch::Tensor& t) { return t.to(torch::kCPU, torch::kFloat64); };
  auto ref = torch::matmul(f64(x), f64(w).t());
  if (c.bias) ref = ref + f64(b);
  expect_close(tag + " out", f64(out), ref, 1e-5, /*relative_to_max=*/false, std::ldexp(1.0, -7));
}

}  // namespace aim::test
