// CPU kernel of the gated RMSNorm (see norms_cpu.h).
//
// Rows of E channels in groups of G. With the gate g = silu(z) (sigmoid from ATen, its vectorised
// exp) and u = x * g (norm after the gate) or u = x (norm before it), per group
//   r = (mean(u^2) + eps)^(-1/2),  y = u r w  (times g when the norm comes first).
// Backward, with a = w dy (times g when the norm comes first):
//   du = r a - (r^3 / G) u <a, u>,  dw += dy u r (times g),
//   gate after the norm:  dx = du g,  dz = du x silu'(z);   before:  dx = du,  dz = dy w u r silu'(z)
// with silu'(z) = s (1 + z (1 - s)). Rows go to fixed blocks whose dw partials are summed in
// order, so results do not depend on the thread count.
#include "ops/norms_cpu.h"
#include "ops/cpu_simd.h"
#include "ops/optional_inputs.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cmath>
#include <optional>
#include <vector>

#include "aim/ops/split.h"

namespace aim::ops::cpu {

namespace {

using namespace simd;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

constexpr int64_t kRowBlock = 64;  // rows per task and per dw partial

struct Rows {
  int64_t rows, E, G;
  float eps;
  bool norm_before_gate;
  const float* x;  // [rows, E]
  const float* z;  // [rows, E] or null
  const float* s;  // sigmoid(z) or null
  const float* w;  // [E]
};

/// u (the normalised quantity) and g (the gate, 1 without z) of one row.
AIM_INLINE void gate_row(const Rows& a, int64_t row, float* __restrict u, float* __restrict g) {
  const float* __restrict x = a.x + row * a.E;
  if (a.z == nullptr) {
    for (int64_t i = 0; i < a.E; ++i) u[i] = x[i], g[i] = 1.f;
    return;
  }
  const float* __restrict z = a.z + row * a.E;
  const float* __restrict s = a.s + row * a.E;
  for (int64_t i = 0; i < a.E; ++i) g[i] = z[i] * s[i];
  if (a.norm_before_gate) {
    for (int64_t i = 0; i < a.E; ++i) u[i] = x[i];
  } else {
    for (int64_t i = 0; i < a.E; ++i) u[i] = x[i] * g[i];
  }
}

template <class V>
AIM_INLINE void forward_rows(const Rows& a, int64_t begin, int64_t end, float* __restrict y,
                             float* __restrict u, float* __restrict g) {
  const int64_t E = a.E, G = a.G;
  for (int64_t row = begin; row < end; ++row) {
    gate_row(a, row, u, g);
    float* __restrict yr = y + row * E;
    for (int64_t base = 0; base < E; base += G) {
      const float r = 1.f / std::sqrt(dot<V>(u + base, u + base, G) / G + a.eps);
      const float* __restrict ug = u + base;
      const float* __restrict wg = a.w + base;
      float* __restrict yg = yr + base;
      if (a.norm_before_gate) {
        const float* __restrict gg = g + base;
        for (int64_t i = 0; i < G; ++i) yg[i] = ug[i] * r * wg[i] * gg[i];
      } else {
        for (int64_t i = 0; i < G; ++i) yg[i] = ug[i] * r * wg[i];
      }
    }
  }
}
AIM_CPU_KERNEL(ForwardRows, forward_rows);

struct Grads {
  const float* dy;
  float* dx;
  float* dz;  // or null
  float* dw;  // this block's partial [E]
};

template <class V>
AIM_INLINE void backward_rows(const Rows& a, const Grads& gr, int64_t begin, int64_t end,
                              float* __restrict u, float* __restrict g, float* __restrict av) {
  const int64_t E = a.E, G = a.G;
  const bool nbg = a.norm_before_gate;
  for (int64_t row = begin; row < end; ++row) {
    gate_row(a, row, u, g);
    const float* __restrict dy = gr.dy + row * E;
    const float* __restrict x = a.x + row * E;
    float* __restrict dx = gr.dx + row * E;
    float* __restrict dw = gr.dw;
    for (int64_t i = 0; i < E; ++i) av[i] = nbg ? a.w[i] * dy[i] * g[i] : a.w[i] * dy[i];
    for (int64_t base = 0; base < E; base += G) {
      const float* __restrict ug = u + base;
      const float r = 1.f / std::sqrt(dot<V>(ug, ug, G) / G + a.eps);
      const float k = r * r * r / G * dot<V>(av + base, ug, G);
      const float* __restrict ag = av + base;
      const float* __restrict gg = g + base;
      const float* __restrict dyg = dy + base;
      float* __restrict dwg = dw + base;
      float* __restrict dxg = dx + base;
      if (nbg) {
        for (int64_t i = 0; i < G; ++i) {
          dxg[i] = r * ag[i] - k * ug[i];
          dwg[i] += dyg[i] * ug[i] * r * gg[i];
        }
      } else {
        for (int64_t i = 0; i < G; ++i) {
          dwg[i] += dyg[i] * ug[i] * r;
          dxg[i] = r * ag[i] - k * ug[i];  // du; times g below
        }
      }
      if (gr.dz != nullptr) {
        const float* __restrict z = a.z + row * E + base;
        const float* __restrict s = a.s + row * E + base;
        const float* __restrict xg = x + base;
        const float* __restrict wg = a.w + base;
        float* __restrict dzg = gr.dz + row * E + base;
        if (nbg) {
          for (int64_t i = 0; i < G; ++i) {
            dzg[i] = dyg[i] * wg[i] * ug[i] * r * (s[i] * (1.f + z[i] * (1.f - s[i])));
          }
        } else {
          for (int64_t i = 0; i < G; ++i) {
            dzg[i] = dxg[i] * xg[i] * (s[i] * (1.f + z[i] * (1.f - s[i])));
            dxg[i] *= gg[i];
          }
        }
      }
    }
  }
}
AIM_CPU_KERNEL(BackwardRows, backward_rows);

/// Contiguous fp32 rows [R, E] of the inputs, sigmoid(z), and the pointers the loops read.
struct FloatRows {
  torch::Tensor x, z, s, w;
  Rows args;
  FloatRows(const torch::Tensor& x_, const torch::Tensor& z_, const torch::Tensor& w_, int64_t group,
            double eps, bool norm_before_gate)
      : x(as_float(x_).reshape({-1, x_.size(-1)})), w(as_float(w_)) {
    if (z_.defined()) {
      z = as_float(z_).reshape({-1, z_.size(-1)});
      s = torch::sigmoid(z);
    }
    args.rows = x.size(0);
    args.E = x.size(1);
    args.G = group;
    args.eps = static_cast<float>(eps);
    args.norm_before_gate = norm_before_gate;
    args.x = x.data_ptr<float>();
    args.z = float_ptr(z);
    args.s = float_ptr(s);
    args.w = w.data_ptr<float>();
  }
};

int64_t blocks_of(int64_t rows) { return (rows + kRowBlock - 1) / kRowBlock; }

class GatedRmsNormCpuFunction : public torch::autograd::Function<GatedRmsNormCpuFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const std::optional<torch::Tensor>& z_opt, const torch::Tensor& weight,
                               int64_t group, double eps, bool norm_before_gate) {
    const auto z = value_or_undefined(z_opt);
    const FloatRows in(x, z, weight, group, eps, norm_before_gate);
    const auto& a = in.args;
    auto y = torch::empty({a.rows, a.E}, in.x.options());
    float* yp = y.data_ptr<float>();
    at::parallel_for(0, blocks_of(a.rows), 1, [&](int64_t b0, int64_t b1) {
      std::vector<float> scratch(2 * a.E);
      for (int64_t blk = b0; blk < b1; ++blk) {
        run_kernel<ForwardRows>(a, blk * kRowBlock, std::min(a.rows, (blk + 1) * kRowBlock), yp,
                                scratch.data(), scratch.data() + a.E);
      }
    });
    ctx->save_for_backward({x, z, weight});
    ctx->saved_data["group"] = group;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["norm_before_gate"] = norm_before_gate;
    ctx->set_materialize_grads(false);
    return y.view(x.sizes()).to(x.scalar_type());
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &z = saved[1], &weight = saved[2];
    if (!grads[0].defined()) return {torch::Tensor(), torch::Tensor(), torch::Tensor(), {}, {}, {}};
    const int64_t group = ctx->saved_data["group"].toInt();
    const double eps = ctx->saved_data["eps"].toDouble();
    const bool norm_before_gate = ctx->saved_data["norm_before_gate"].toBool();
    const FloatRows in(x, z, weight, group, eps, norm_before_gate);
    const auto& a = in.args;
    const auto dy = as_float(grads[0]).reshape({a.rows, a.E});
    auto dx = torch::empty({a.rows, a.E}, in.x.options());
    torch::Tensor dz;
    if (z.defined()) dz = torch::empty({a.rows, a.E}, in.x.options());
    const int64_t nblocks = blocks_of(a.rows);
    auto dw_part = torch::zeros({nblocks, a.E}, in.x.options());
    const float* dyp = dy.data_ptr<float>();
    float* dxp = dx.data_ptr<float>();
    float* dzp = float_ptr(dz);
    float* dwp = dw_part.data_ptr<float>();
    at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
      std::vector<float> scratch(3 * a.E);
      for (int64_t blk = b0; blk < b1; ++blk) {
        const Grads gr{dyp, dxp, dzp, dwp + blk * a.E};
        run_kernel<BackwardRows>(a, gr, blk * kRowBlock, std::min(a.rows, (blk + 1) * kRowBlock),
                                 scratch.data(), scratch.data() + a.E, scratch.data() + 2 * a.E);
      }
    });
    torch::Tensor dzo;
    if (z.defined()) dzo = into_split_grad_slot(z, dz.view(z.sizes()));
    return {dx.view(x.sizes()).to(x.scalar_type()), dzo, dw_part.sum(0).to(weight.scalar_type()),
            torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

bool gated_rms_norm_supported(const torch::Tensor& x, const torch::Tensor& z, const torch::Tensor& weight) {
  auto ok = [](const torch::Tensor& t) {
    return t.device().is_cpu() && (t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kBFloat16);
  };
  return ok(x) && (!z.defined() || ok(z)) && weight.device().is_cpu() && weight.is_floating_point() &&
         x.numel() > 0;
}

torch::Tensor gated_rms_norm(const torch::Tensor& x, const torch::Tensor& z, const torch::Tensor& weight,
                             int64_t group_size, double eps, bool norm_before_gate) {
  return GatedRmsNormCpuFunction::apply(x, optional_input(z), weight, group_size, eps, norm_before_gate);
}

}  // namespace aim::ops::cpu
