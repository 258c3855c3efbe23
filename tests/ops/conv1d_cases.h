#pragma once
// The causal conv1d test cases shared by the CUDA, CPU and emulated kernel tests: the case, its
// name, the input as the mixers pass it, and the kernel tests' check.
#include <torch/torch.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "aim/ops/conv1d.h"
#include "test_util.h"

namespace aim::test {

struct ConvCase {
  int64_t batch, channels, len, width;
  bool channel_last, bias, silu;
  torch::ScalarType dtype;
};

inline std::string case_name(const ConvCase& c) {
  return "B" + std::to_string(c.batch) + "_C" + std::to_string(c.channels) + "_L" +
         std::to_string(c.len) + "_W" + std::to_string(c.width) +
         (c.channel_last ? "_clast" : "_contig") + (c.bias ? "" : "_nobias") +
         (c.silu ? "" : "_nosilu") + (c.dtype == torch::kBFloat16 ? "_bf16" : "_fp32");
}

/// x [B, C, L]: channel-last as a slice of a wider [B, L, C + 40] projection, like the Mamba2
/// mixer's, or contiguous (Mamba1's layout).
inline torch::Tensor conv_input(const ConvCase& c, torch::Device device) {
  if (c.channel_last) {
    return randn({c.batch, c.len, c.channels + 40}, c.dtype, device).narrow(2, 20, c.channels).transpose(1, 2);
  }
  return randn({c.batch, c.channels, c.len}, c.dtype, device);
}

/// The op under test: {output, conv state (or undefined)} of x [B, C, L], weight [C, 1, W],
/// bias [C] or undefined.
using ConvFn = std::function<std::pair<torch::Tensor, torch::Tensor>(
    const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias, bool silu)>;

// max|diff| / max|expected|: fp32 arithmetic (fast-math exp) vs fp64; bf16 outputs carry their
// rounding (2^-8 relative) on top.
inline double conv_tolerance(torch::ScalarType dtype) {
  return dtype == torch::kBFloat16 ? 1e-2 : 2e-5;
}

/// The kernel tests' check of one case: `conv` (ops::causal_conv1d through dispatch, or the
/// emulated adapter; the state may be undefined) on inputs on `dev`, forward and backward,
/// against the reference in fp64 on the CPU.
inline void check_causal_conv1d(const ConvCase& c, torch::Device dev, const ConvFn& conv) {
  torch::manual_seed(7 + c.width * 13 + c.len);
  auto x = conv_input(c, dev).requires_grad_(true);
  auto w = randn({c.channels, 1, c.width}, torch::kFloat, dev, 0.5).requires_grad_(true);
  torch::Tensor b;
  if (c.bias) b = randn({c.channels}, torch::kFloat, dev, 0.2).requires_grad_(true);

  auto [out, state] = conv(x, w, b, c.silu);
  ASSERT_EQ(out.scalar_type(), c.dtype);
  auto g = randn(out.sizes(), c.dtype, dev);
  std::vector<torch::Tensor> inputs{x, w};
  if (c.bias) inputs.push_back(b);
  const auto grads = torch::autograd::grad({out}, inputs, {g});

  // Oracle: the reference on fp64 CPU copies of the same values.
  auto xr = f64_leaf(x), wr = f64_leaf(w);
  torch::Tensor br;
  if (c.bias) br = f64_leaf(b);
  auto [out_r, state_r] = ops::ref::causal_conv1d(xr, wr, br, c.silu, true);
  std::vector<torch::Tensor> inputs_r{xr, wr};
  if (c.bias) inputs_r.push_back(br);
  const auto grads_r =
      torch::autograd::grad({out_r}, inputs_r, {g.detach().to(torch::kCPU, torch::kFloat64)});

  const double tol = conv_tolerance(c.dtype);
  const auto tag = case_name(c);
  expect_close(tag + " out", out, out_r, tol);
  if (state.defined()) expect_close(tag + " state", state, state_r, 1e-12);
  expect_close(tag + " dx", grads[0], grads_r[0], tol);
  expect_close(tag + " dweight", grads[1], grads_r[1], tol);
  EXPECT_EQ(grads[1].sizes(), w.sizes());
  if (c.bias) expect_close(tag + " dbias", grads[2], grads_r[2], tol);
  if (c.channel_last && c.len > 1) {
    EXPECT_EQ(out.stride(1), 1) << "channel-last input, channel-last output";
  }
}

/// The kernel tests' cases: the AiM-B/L Mamba2 conv widths and the Mamba1 layout at the
/// training length, the other widths, and edges.
inline std::vector<ConvCase> conv_kernel_cases() {
  std::vector<ConvCase> out;
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    // AiM-B and AiM-L Mamba2 conv widths (d_inner + 2 * d_state), the training length.
    out.push_back({2, 1792, 257, 4, true, true, true, dtype});
    out.push_back({2, 2304, 257, 4, true, true, true, dtype});
    // Mamba1 layout (contiguous [B, C, L]) and the other widths.
    out.push_back({2, 96, 257, 4, false, true, true, dtype});
    out.push_back({3, 70, 65, 2, true, false, true, dtype});
    out.push_back({3, 70, 65, 3, false, true, false, dtype});
    out.push_back({2, 33, 130, 6, true, true, true, dtype});  // width > 4: the 8-tap path
    // Edges: batch 1, length 1, length below the width, channels not a multiple of a warp.
    out.push_back({1, 37, 1, 4, true, true, true, dtype});
    out.push_back({1, 37, 3, 4, false, true, true, dtype});
    out.push_back({1, 129, 200, 4, true, false, false, dtype});
  }
  return out;
}

}  // namespace aim::test
