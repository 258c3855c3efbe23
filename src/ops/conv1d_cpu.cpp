// CPU kernel of the causal depthwise conv1d (see conv1d_cpu.h).
//
// One task per sequence b over rows of C channels ([B, L, C], fp32): every loop is an axpy over
// the channels. The backward recomputes the pre-activation a, takes sigmoid(a) from ATen (its
// vectorised exp), and per sequence forms g = dout * silu'(a), the partial weight and bias
// gradients (summed over the sequences afterwards in a fixed order, so results do not depend on
// the thread count) and dx[t] = sum_k w[k] g[t + W - 1 - k].
#include "ops/conv1d_cpu.h"
#include "ops/cpu_simd.h"
#include "ops/optional_inputs.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <optional>
#include <vector>

#include "aim/ops/split.h"

namespace aim::ops::cpu {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;
using namespace simd;

/// x [B, C, L] (any layout) as contiguous fp32 rows [B, L, C].
torch::Tensor rows_f32(const torch::Tensor& x) {
  return x.transpose(1, 2).to(torch::kFloat).contiguous();
}

/// The weight [C, W] or [C, 1, W] as fp32 [W][C].
torch::Tensor weight_wc(const torch::Tensor& weight) {
  return weight.reshape({weight.size(0), weight.size(-1)}).to(torch::kFloat).t().contiguous();
}

/// a[t] = bias + sum_k w[k] * x[t - (W - 1) + k] for the L rows of one sequence.
template <class V>
AIM_INLINE void conv_rows(const float* __restrict x, const float* __restrict w,
                          const float* __restrict bias, float* __restrict a, int64_t L, int64_t C,
                          int64_t W) {
  for (int64_t t = 0; t < L; ++t) {
    float* __restrict o = a + t * C;
    if (bias != nullptr) {
      for (int64_t c = 0; c < C; ++c) o[c] = bias[c];
    } else {
      for (int64_t c = 0; c < C; ++c) o[c] = 0.f;
    }
    for (int64_t k = 0; k < W; ++k) {
      const int64_t src = t - (W - 1) + k;
      if (src < 0) continue;
      const float* __restrict xr = x + src * C;
      const float* __restrict wk = w + k * C;
      for (int64_t c = 0; c < C; ++c) o[c] += wk[c] * xr[c];
    }
  }
}
AIM_CPU_KERNEL(ConvRows, conv_rows);

/// One sequence of the backward. On entry `g` holds the pre-activation a (and `s` sigmoid(a)
/// when `silu`); on exit g = dout * silu'(a) (or dout). Adds to the sequence's partials dw [W][C]
/// and db [C]; writes dx rows.
template <class V>
AIM_INLINE void grad_rows(const float* __restrict x, const float* __restrict dout,
                          const float* __restrict s, const float* __restrict w, float* __restrict g,
                          float* __restrict dw, float* __restrict db, float* __restrict dx, int64_t L,
                          int64_t C, int64_t W) {
  for (int64_t t = 0; t < L; ++t) {
    float* __restrict gt = g + t * C;
    const float* __restrict dt = dout + t * C;
    if (s != nullptr) {
      const float* __restrict st = s + t * C;
      // d silu(a) / da = s (1 + a (1 - s))
      for (int64_t c = 0; c < C; ++c) gt[c] = dt[c] * (st[c] * (1.f + gt[c] * (1.f - st[c])));
    } else {
      for (int64_t c = 0; c < C; ++c) gt[c] = dt[c];
    }
    for (int64_t c = 0; c < C; ++c) db[c] += gt[c];
    for (int64_t k = 0; k < W; ++k) {
      const int64_t src = t - (W - 1) + k;
      if (src < 0) continue;
      const float* __restrict xr = x + src * C;
      float* __restrict dwk = dw + k * C;
      for (int64_t c = 0; c < C; ++c) dwk[c] += gt[c] * xr[c];
    }
  }
  for (int64_t t = 0; t < L; ++t) {
    float* __restrict o = dx + t * C;
    for (int64_t c = 0; c < C; ++c) o[c] = 0.f;
    for (int64_t k = 0; k < W; ++k) {
      const int64_t dst = t + (W - 1) - k;  // the output row that read x[t] through w[k]
      if (dst >= L) continue;
      const float* __restrict gr = g + dst * C;
      const float* __restrict wk = w + k * C;
      for (int64_t c = 0; c < C; ++c) o[c] += wk[c] * gr[c];
    }
  }
}
AIM_CPU_KERNEL(GradRows, grad_rows);

/// The pre-activation of every sequence, [B, L, C] fp32.
torch::Tensor pre_activation(const torch::Tensor& xf, const torch::Tensor& w, const torch::Tensor& bias_f) {
  const int64_t B = xf.size(0), L = xf.size(1), C = xf.size(2), W = w.size(0);
  auto a = torch::empty({B, L, C}, xf.options());
  const float* xp = xf.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const float* bp = float_ptr(bias_f);
  float* ap = a.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      run_kernel<ConvRows>(xp + b * L * C, wp, bp, ap + b * L * C, L, C, W);
    }
  });
  return a;
}

class CausalConv1dCpuFunction : public torch::autograd::Function<CausalConv1dCpuFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight,
                               const std::optional<torch::Tensor>& bias_opt, bool silu) {
    const auto bias = value_or_undefined(bias_opt);
    const auto xf = rows_f32(x);
    auto a = pre_activation(xf, weight_wc(weight), as_float(bias));
    if (silu) torch::silu_(a);
    ctx->save_for_backward({x, weight, bias});
    ctx->saved_data["silu"] = silu;
    ctx->set_materialize_grads(false);
    return a.to(x.scalar_type()).transpose(1, 2);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &weight = saved[1], &bias = saved[2];
    const bool silu = ctx->saved_data["silu"].toBool();
    if (!grads[0].defined()) return {torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
    const auto xf = rows_f32(x);
    const auto gf = rows_f32(grads[0]);
    const auto w = weight_wc(weight);
    const int64_t B = xf.size(0), L = xf.size(1), C = xf.size(2), W = w.size(0);
    auto g = pre_activation(xf, w, as_float(bias));
    torch::Tensor s;
    if (silu) s = torch::sigmoid(g);
    auto dx = torch::empty({B, L, C}, xf.options());
    auto dw_part = torch::zeros({B, W, C}, xf.options());
    auto db_part = torch::zeros({B, C}, xf.options());
    const float* xp = xf.data_ptr<float>();
    const float* gp = gf.data_ptr<float>();
    const float* sp = float_ptr(s);
    const float* wp = w.data_ptr<float>();
    float* ap = g.data_ptr<float>();
    float* dxp = dx.data_ptr<float>();
    float* dwp = dw_part.data_ptr<float>();
    float* dbp = db_part.data_ptr<float>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t off = b * L * C;
        const float* sb = sp != nullptr ? sp + off : nullptr;
        run_kernel<GradRows>(xp + off, gp + off, sb, wp, ap + off, dwp + b * W * C, dbp + b * C,
                             dxp + off, L, C, W);
      }
    });
    auto dw = dw_part.sum(0).t().reshape(weight.sizes()).to(weight.scalar_type());
    torch::Tensor db;
    if (bias.defined()) db = db_part.sum(0).to(bias.scalar_type());
    return {into_split_grad_slot(x, dx.transpose(1, 2)), dw, db, torch::Tensor()};
  }
};

}  // namespace

bool causal_conv1d_supported(const torch::Tensor& x, const torch::Tensor& weight,
                             const torch::Tensor& bias) {
  const auto type = x.scalar_type();
  return x.device().is_cpu() && (type == torch::kFloat || type == torch::kBFloat16) &&
         weight.device().is_cpu() && weight.is_floating_point() &&
         (!bias.defined() || (bias.device().is_cpu() && bias.is_floating_point())) &&
         x.size(2) >= 1 && x.numel() > 0;
}

torch::Tensor causal_conv1d(const torch::Tensor& x, const torch::Tensor& weight,
                            const torch::Tensor& bias, bool silu) {
  return CausalConv1dCpuFunction::apply(x, weight, optional_input(bias), silu);
}

}  // namespace aim::ops::cpu
