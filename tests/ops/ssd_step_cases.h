#pragma once
// The cases and the check of Mamba2's fused one-token step (ops::ssd_decode_step), shared by
// the CUDA test and the emulated-kernel test: four steps from random conv and ssm states, each
// on a fresh in_proj-like row, against the three reference ops one after the other
// (ops::ref::ssd_decode_step) on CPU copies.
//
// Tolerances. The conv state equals the reference's bit for bit (values are moved, and the one
// incoming value is rounded to the state's type by both). out: test::tolerance_for(element
// type), elementwise; the kernel sums the norm's squares in another order, and in bf16 a y that
// lands on the other side of a rounding boundary moves one bf16 step. The ssm state:
// tolerance_for(element type) (the conv output x, B and C it reads are rounded to that type).
#include <torch/torch.h>

#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "aim/ops/ssd_scan.h"
#include "ops/ssd_cases.h"
#include "test_util.h"

namespace aim::test {

struct SsdStepCase {
  int64_t batch, heads, hdim, groups, dstate, width, norm_groups;
  bool norm_before_gate, conv_bias, dt_bias;
  DMode d_mode;
  torch::ScalarType dtype, ssm_state_dtype, conv_state_dtype, weight_dtype;
  int sms = 0;            ///< the emulated device's SM count (0: its default); a GPU uses its own
  bool gpu_only = false;  ///< full AiM widths: too slow for the emulator
  int rows_in_flight = 0; ///< AIM_SSD_STEP_ROWS for the case (0: unset, the kernel's choice)
  /// The in_proj row on a 16-byte boundary with a row stride of a multiple of 16 bytes, as the
  /// model's (the kernel's norm then moves 16 bytes at a time); otherwise 3 elements in.
  bool aligned_rows = false;
};

inline std::string case_name(const SsdStepCase& c) {
  auto t = [](torch::ScalarType s) { return s == torch::kBFloat16 ? std::string("bf16") : std::string("fp32"); };
  const char* d = c.d_mode == DMode::kNone ? "_noD" : c.d_mode == DMode::kHead ? "" : "_Dhp";
  return "B" + std::to_string(c.batch) + "_H" + std::to_string(c.heads) + "_P" +
         std::to_string(c.hdim) + "_G" + std::to_string(c.groups) + "_N" +
         std::to_string(c.dstate) + "_W" + std::to_string(c.width) + "_norm" +
         std::to_string(c.norm_groups) + (c.norm_before_gate ? "_nbg" : "") +
         (c.conv_bias ? "" : "_noconvbias") + (c.dt_bias ? "" : "_nodtbias") + d + "_" +
         t(c.dtype) + "_state" + t(c.ssm_state_dtype) + "_conv" + t(c.conv_state_dtype) + "_w" +
         t(c.weight_dtype) + (c.sms ? "_sms" + std::to_string(c.sms) : "") +
         (c.rows_in_flight ? "_rows" + std::to_string(c.rows_in_flight) : "") +
         (c.aligned_rows ? "_aligned" : "");
}

inline void PrintTo(const SsdStepCase& c, std::ostream* os) { *os << case_name(c); }

/// AiM's heads (P 64, N 128, one group, width 4, one norm group) in the dtype combinations the
/// sampler makes, then edges: ngroups 2 with two norm groups and norm before gate, norm groups
/// smaller than a head, P not a power of two and odd, N not a multiple of 32, widths 2, 3 and
/// 8, no D / dt bias / conv bias, a head in one block (one SM) or split over four, N above 128
/// (a lane holds 8 of a row's elements instead of 4); the state rows a warp updates at once
/// (AIM_SSD_STEP_ROWS) forced to each of 1, 2 and 4 where a block's rows are not a multiple of
/// the 4 warps times that; in_proj rows aligned as the model's, in bf16 and fp32, with the norm's
/// sum of squares by blocks and by the last block (norm groups that a block's rows do not
/// divide: 24 or 48 rows against 32 channels, on a GPU too; with the gate before and after);
/// last, the full AiM-L mixer at batch 1 and 32 (GPU only).
inline std::vector<SsdStepCase> ssd_step_cases() {
  const auto f = torch::kFloat, h = torch::kBFloat16;
  return {
      {2, 3, 64, 1, 128, 4, 1, false, true, true, DMode::kHead, h, f, f, h},  // bf16 model
      {2, 3, 64, 1, 128, 4, 1, false, true, true, DMode::kHead, f, f, f, f},  // fp32
      {2, 3, 64, 1, 128, 4, 1, false, true, true, DMode::kHead, h, h, h, h},  // bf16 states
      {2, 3, 64, 1, 128, 4, 1, false, true, true, DMode::kHead, h, f, f, h, 1},
      {1, 4, 32, 2, 16, 3, 2, true, false, true, DMode::kChannel, f, f, f, h},
      {2, 2, 48, 1, 40, 2, 4, false, true, false, DMode::kNone, f, f, h, f},
      {3, 2, 17, 1, 33, 4, 1, false, true, true, DMode::kHead, h, f, f, f},
      {1, 2, 32, 1, 16, 8, 1, false, true, true, DMode::kHead, h, h, f, h},
      {2, 2, 32, 1, 256, 4, 1, false, true, true, DMode::kHead, h, f, f, h},
      {1, 2, 24, 1, 200, 4, 2, false, true, true, DMode::kChannel, h, h, f, h},
      {2, 3, 64, 1, 128, 4, 1, false, true, true, DMode::kHead, h, f, f, h, 0, false, 1},
      {3, 2, 17, 1, 33, 4, 1, false, true, true, DMode::kHead, h, f, f, f, 0, false, 4},
      {2, 2, 44, 1, 40, 2, 4, false, true, false, DMode::kNone, f, h, h, f, 1, false, 2},
      {1, 2, 24, 1, 200, 4, 2, false, true, true, DMode::kChannel, h, f, f, h, 0, false, 4},
      {2, 3, 64, 1, 128, 4, 1, false, true, true, DMode::kHead, h, f, f, h, 0, false, 0, true},
      {2, 3, 64, 1, 128, 4, 1, false, true, true, DMode::kHead, f, f, f, f, 0, false, 0, true},
      {2, 2, 64, 1, 32, 4, 4, true, true, true, DMode::kHead, h, f, f, f, 1, false, 0, true},
      {2, 4, 48, 1, 32, 4, 6, false, true, true, DMode::kHead, h, f, f, h, 0, false, 0, true},
      {2, 4, 48, 1, 32, 4, 6, false, true, true, DMode::kHead, f, f, f, h, 0, false, 0, true},
      {1, 32, 64, 1, 128, 4, 1, false, true, true, DMode::kHead, h, f, f, h, 0, true},
      {32, 32, 64, 1, 128, 4, 1, false, true, true, DMode::kHead, h, f, f, h, 0, true},
      {32, 32, 64, 1, 128, 4, 1, false, true, true, DMode::kHead, h, f, f, h, 0, true, 0, true},
  };
}

/// The op under test: ops::ssd_decode_step's signature.
using SsdStepFn = std::function<torch::Tensor(const torch::Tensor& zxbcdt, torch::Tensor& conv_state,
                                              torch::Tensor& ssm_state,
                                              const ops::SsdDecodeWeights& w,
                                              const torch::Tensor& arrivals)>;

inline void check_ssd_decode_step(const SsdStepCase& c, torch::Device dev, const SsdStepFn& step) {
  torch::manual_seed(17 + c.heads * 5 + c.hdim + c.dstate);
  torch::NoGradGuard no_grad;
  const auto tag = case_name(c);
  const int64_t E = c.heads * c.hdim, C = E + 2 * c.groups * c.dstate, W = c.width;
  auto cpu = [](const torch::Tensor& t) { return t.defined() ? t.to(torch::kCPU).clone() : t; };
  ops::SsdDecodeWeights w;
  w.conv_weight = randn({C, 1, W}, c.weight_dtype, dev, 0.5);
  if (c.conv_bias) w.conv_bias = randn({C}, c.weight_dtype, dev, 0.2);
  w.A = (-torch::empty({c.heads}).uniform_(0.5, 4.0)).to(dev);
  if (c.d_mode == DMode::kHead) w.D = torch::empty({c.heads}).uniform_(0.5, 1.5).to(dev);
  if (c.d_mode == DMode::kChannel) w.D = torch::empty({c.heads, c.hdim}).uniform_(0.5, 1.5).to(dev);
  if (c.dt_bias) w.dt_bias = torch::empty({c.heads}).uniform_(-6.0, -3.0).to(dev);
  w.norm_weight = (torch::rand({E}) + 0.5).to(dev, c.weight_dtype);
  w.ngroups = c.groups;
  w.norm_group_size = E / c.norm_groups;
  w.norm_before_gate = c.norm_before_gate;
  ops::SsdDecodeWeights w_r = w;
  for (auto* t : {&w_r.conv_weight, &w_r.conv_bias, &w_r.A, &w_r.D, &w_r.dt_bias, &w_r.norm_weight})
    *t = cpu(*t);

  auto conv_state = randn({c.batch, C, W}, c.conv_state_dtype, dev);
  auto ssm_state = randn({c.batch, c.heads, c.hdim, c.dstate}, c.ssm_state_dtype, dev, 0.5);
  auto conv_r = cpu(conv_state), ssm_r = cpu(ssm_state);
  auto arrivals = torch::zeros({c.batch}, torch::dtype(torch::kInt).device(dev));
  ScopedEnv rows;
  if (c.rows_in_flight > 0) rows.set("AIM_SSD_STEP_ROWS", std::to_string(c.rows_in_flight));
  for (int s = 0; s < 4; ++s) {
    // The in_proj row z | x B C | dt inside a wider buffer (row stride != width); dt such that
    // softplus(dt + dt_bias) ~ 0.001 .. 0.1 (without a bias, shifted by the bias's mean).
    const int64_t width = E + C + c.heads, first = c.aligned_rows ? 0 : 3;
    const int64_t stride = c.aligned_rows ? (width + 7) / 8 * 8 : width + 6;
    auto row = randn({c.batch, stride}, torch::kFloat, dev);
    row.narrow(1, first + E + C, c.heads).mul_(0.5).sub_(c.dt_bias ? 0.0 : 4.5);
    const auto zxbcdt = row.to(c.dtype).narrow(1, first, width);
    const auto out = step(zxbcdt, conv_state, ssm_state, w, arrivals);
    const auto out_r = ops::ref::ssd_decode_step(cpu(zxbcdt), conv_r, ssm_r, w_r);
    const auto st = tag + " step " + std::to_string(s);
    ASSERT_EQ(out.scalar_type(), c.dtype) << st;
    ASSERT_EQ(ssm_state.scalar_type(), c.ssm_state_dtype) << st;
    ASSERT_EQ(conv_state.scalar_type(), c.conv_state_dtype) << st;
    const auto tol = tolerance_for(c.dtype);
    expect_close(st + " out", out, out_r, tol.atol, /*relative_to_max=*/false, tol.rtol);
    expect_close(st + " ssm state", ssm_state, ssm_r, tol.atol, /*relative_to_max=*/false, tol.rtol);
    expect_close(st + " conv state", conv_state, conv_r, 1e-12);
    EXPECT_EQ(arrivals.count_nonzero().item<int64_t>(), 0) << st << ": counters left non-zero";
  }
}

}  // namespace aim::test
