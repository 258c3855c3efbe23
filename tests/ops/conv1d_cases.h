#pragma once
// The causal conv1d test cases shared by the CUDA, CPU and emulated kernel tests: the case, its
// name, the input as the mixers pass it, and the kernel tests' check.
#include <torch/torch.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "aim/ops/conv1d.h"
#include "aim/ops/split.h"
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
/// emulated adapter; the state may be undefined) on inputs on `dev`, forward and backward
/// (twice: the same bits), against the reference in fp64 on the CPU.
inline void check_causal_conv1d(const ConvCase& c, torch::Device dev, const ConvFn& conv) {
  torch::manual_seed(7 + c.width * 13 + c.len);
  torch::Tensor x;
  if (c.channel_last) {
    // conv_input's projection, split as a Mamba2 mixer splits in_proj's output: dx goes to x's
    // place in the projection's gradient (ops::split_grad_slot) in the first backward below; the
    // second finds the place handed out and writes a tensor of its own, with the same bits.
    auto wide = randn({c.batch, c.len, c.channels + 40}, c.dtype, dev).requires_grad_(true);
    x = ops::split_last_dim(wide, {20, c.channels, 20})[1].transpose(1, 2);
  } else {
    x = conv_input(c, dev).requires_grad_(true);
  }
  auto w = randn({c.channels, 1, c.width}, torch::kFloat, dev, 0.5).requires_grad_(true);
  torch::Tensor b;
  if (c.bias) b = randn({c.channels}, torch::kFloat, dev, 0.2).requires_grad_(true);

  auto [out, state] = conv(x, w, b, c.silu);
  ASSERT_EQ(out.scalar_type(), c.dtype);
  auto g = randn(out.sizes(), c.dtype, dev);
  std::vector<torch::Tensor> inputs{x, w};
  if (c.bias) inputs.push_back(b);
  const auto grads = torch::autograd::grad({out}, inputs, {g}, /*retain_graph=*/true);
  // The weight and bias gradients are sums over batch and time: the same bits on every run.
  const auto again = torch::autograd::grad({out}, inputs, {g});
  for (size_t i = 0; i < grads.size(); ++i) {
    EXPECT_TRUE(torch::equal(grads[i], again[i]))
        << case_name(c) << ": gradient " << i << " differs between two backward runs";
  }
  if (c.channel_last && c.len > 1) {
    EXPECT_EQ(grads[0].stride(2), c.channels + 40) << case_name(c) << ": dx not written into its place";
    EXPECT_EQ(again[0].stride(2), c.channels) << case_name(c);
  }

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
    // Channel-last with channels in groups of 4 (the vector kernels, as AiM's) at the other
    // widths, without bias or SiLU, and at length 1.
    out.push_back({3, 72, 65, 2, true, false, true, dtype});
    out.push_back({2, 36, 130, 6, true, true, true, dtype});
    out.push_back({1, 132, 200, 3, true, false, false, dtype});
    out.push_back({1, 40, 1, 4, true, true, true, dtype});
  }
  // More than 65535 time chunks of the weight gradient (64 steps each): the grid's z limit, past
  // which its blocks walk the chunks.
  out.push_back({1, 1, 64 * 65535 + 65, 4, false, true, true, torch::kFloat});
  return out;
}

/// The one-token update of sampling: x [B, C] (a slice of the in_proj output, or contiguous),
/// the window state in its own type, weight and bias in theirs (the model's dtype, or fp32).
struct ConvUpdateCase {
  int64_t batch, channels, width;
  bool strided_x, bias, silu;
  torch::ScalarType dtype, state_dtype, weight_dtype;
};

inline std::string case_name(const ConvUpdateCase& c) {
  auto n = [](torch::ScalarType t) { return t == torch::kBFloat16 ? std::string("bf16") : std::string("fp32"); };
  return "B" + std::to_string(c.batch) + "_C" + std::to_string(c.channels) + "_W" +
         std::to_string(c.width) + (c.strided_x ? "_slice" : "_contig") + (c.bias ? "" : "_nobias") +
         (c.silu ? "" : "_nosilu") + "_x" + n(c.dtype) + "_state" + n(c.state_dtype) + "_w" +
         n(c.weight_dtype);
}

/// ops::causal_conv1d_update's signature: conv_state updated in place, returns [B, C].
using ConvUpdateFn = std::function<torch::Tensor(const torch::Tensor& x, torch::Tensor& conv_state,
                                                 const torch::Tensor& weight,
                                                 const torch::Tensor& bias, bool silu)>;

/// The kernel tests' check of the update: four steps from a random window, each against the
/// reference's step on the CPU from the same window. The shifted window (the incoming value
/// rounded to the state's type) must be equal; the output within conv_tolerance.
inline void check_causal_conv1d_update(const ConvUpdateCase& c, torch::Device dev,
                                       const ConvUpdateFn& update) {
  torch::manual_seed(11 + c.width * 7 + c.channels);
  torch::NoGradGuard no_grad;
  const auto tag = case_name(c);
  const auto w = randn({c.channels, 1, c.width}, c.weight_dtype, dev, 0.5);
  const auto b = c.bias ? randn({c.channels}, c.weight_dtype, dev, 0.2) : torch::Tensor();
  auto state = randn({c.batch, c.channels, c.width}, c.state_dtype, dev);
  auto state_r = state.to(torch::kCPU).clone();  // its own copy on the CPU too
  auto cpu = [](const torch::Tensor& t) { return t.defined() ? t.to(torch::kCPU) : t; };
  for (int step = 0; step < 4; ++step) {
    const auto x = c.strided_x
                       ? randn({c.batch, c.channels + 40}, c.dtype, dev).narrow(1, 20, c.channels)
                       : randn({c.batch, c.channels}, c.dtype, dev);
    const auto out = update(x, state, w, b, c.silu);
    const auto out_r = ops::ref::causal_conv1d_update(cpu(x), state_r, cpu(w), cpu(b), c.silu);
    ASSERT_EQ(out.scalar_type(), c.dtype) << tag;
    ASSERT_EQ(state.scalar_type(), c.state_dtype) << tag;
    const auto s = tag + " step " + std::to_string(step);
    expect_close(s + " out", out, out_r, conv_tolerance(c.dtype));
    expect_close(s + " state", state, state_r, 1e-12);
  }
}

/// The update's cases: the AiM-B/L Mamba2 conv channels at sampling batch sizes, the dtype
/// combinations the samplers make (bf16 model with an fp32 or bf16 state; fp32), the other
/// widths, and edges (batch 1, channels not a multiple of a block, width 1 and 8).
inline std::vector<ConvUpdateCase> conv_update_cases() {
  const auto f = torch::kFloat, h = torch::kBFloat16;
  return {
      {32, 1792, 4, true, true, true, h, f, h},   // AiM-B, bf16 model, fp32 conv state
      {16, 2304, 4, true, true, true, h, h, h},   // AiM-L, bf16 model and state
      {8, 2304, 4, true, true, true, f, f, f},    // fp32 sampling
      {3, 96, 4, false, true, true, f, f, f},     // Mamba1's contiguous x
      {2, 70, 2, true, false, true, h, f, f},     // fp32 weights with a bf16 model
      {2, 70, 3, false, true, false, f, h, f},    // a bf16 state under fp32 inputs
      {1, 37, 8, true, true, true, h, f, h},      // the 8-tap path
      {1, 300, 1, false, true, true, f, f, f},    // width 1: the state is the input
  };
}

}  // namespace aim::test
