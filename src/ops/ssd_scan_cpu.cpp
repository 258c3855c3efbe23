// CPU kernel of the SSD scan (see ssd_scan_cpu.h).
//
// Per (sequence b, head h) the state is kept transposed, S[n][p], so that every update is an
// axpy over the head dimension p (vectorised without reassociation); the reductions over p (dB,
// dC, dt and A gradients) use lane-split accumulators. The hot loops are compiled for AVX-512,
// AVX2 and the baseline and chosen at load time (GCC target_clones).
//
// Backward recomputes the states of its (b, h) forward into a per-thread buffer [L][N][P] and
// walks back once:
//   dS      += C_t (outer) dy_t                 (y_t = S_t C_t + D x_t)
//   dC_t[n]  = <S_t[n], dy_t>
//   dx_t     = D dy_t + dt'_t sum_n B_t[n] dS[n]
//   dB_t[n]  = dt'_t <dS[n], x_t>
//   da_t     = sum_n <dS[n], S_{t-1}[n]>         (a_t = exp(dt'_t A))
//   ddt'_t   = sum_n B_t[n] <dS[n], x_t> + da_t a_t A
//   dA      += da_t a_t dt'_t
//   dS      *= a_t                               (to S_{t-1})
// Per-(b, h) partials of dB, dC, dA, dD and dt_bias are summed afterwards in a fixed order, so
// results do not depend on the thread count.
#include "ops/ssd_scan_cpu.h"
#include "ops/optional_inputs.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cmath>
#include <optional>
#include <vector>

namespace aim::ops::cpu {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define AIM_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define AIM_CPU_CLONES
#endif

constexpr int kLanes = 16;

// Everything a (b, h) task reads: fp32 contiguous tensors.
struct ScanArgs {
  int64_t batch, len, heads, hdim, groups, dstate;
  const float* x;        // [B, L, H, P]
  const float* dt;       // [B, L, H] (before bias and softplus)
  const float* Bm;       // [B, L, G, N]
  const float* Cm;       // [B, L, G, N]
  const float* A;        // [H]
  const float* D;        // [H] or [H, P] or null
  bool d_per_channel;
  const float* dt_bias;  // [H] or null
  const float* init;     // [B, H, P, N] or null
  bool softplus;
};

inline float dt_raw(const ScanArgs& a, int64_t b, int64_t t, int64_t h) {
  const float v = a.dt[(b * a.len + t) * a.heads + h];
  return a.dt_bias != nullptr ? v + a.dt_bias[h] : v;
}
// torch::softplus (beta 1, threshold 20) and its derivative.
inline float softplus(float v) { return v > 20.f ? v : std::log1p(std::exp(v)); }
inline float softplus_grad(float v) {
  if (v > 20.f) return 1.f;
  const float z = std::exp(v);
  return z / (z + 1.f);
}

inline float dot(const float* __restrict u, const float* __restrict v, int64_t n) {
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) lanes[j] += u[i + j] * v[i + j];
  }
  float s = 0.f;
  for (; i < n; ++i) s += u[i] * v[i];
  for (int j = 0; j < kLanes; ++j) s += lanes[j];
  return s;
}

/// Loads the initial state of (b, h) into S[n][p] (zeros without one).
void load_state(const ScanArgs& a, int64_t b, int64_t h, float* __restrict S) {
  const int64_t P = a.hdim, N = a.dstate;
  if (a.init == nullptr) {
    std::fill(S, S + P * N, 0.f);
    return;
  }
  const float* src = a.init + (b * a.heads + h) * P * N;  // [P][N]
  for (int64_t p = 0; p < P; ++p)
    for (int64_t n = 0; n < N; ++n) S[n * P + p] = src[p * N + n];
}

/// Forward of one (b, h): y [B, L, H, P] rows of this head; the state S[n][p] enters as loaded
/// and leaves as the final state. With `trace`, S after every step goes to trace[t].
AIM_CPU_CLONES
void forward_head(const ScanArgs& a, int64_t b, int64_t h, float* __restrict S, float* __restrict y,
                  float* __restrict trace) {
  const int64_t L = a.len, H = a.heads, P = a.hdim, N = a.dstate;
  const int64_t g = h / (H / a.groups);
  const float A = a.A[h];
  for (int64_t t = 0; t < L; ++t) {
    const float raw = dt_raw(a, b, t, h);
    const float dtv = a.softplus ? softplus(raw) : raw;
    const float decay = std::exp(dtv * A);
    const float* __restrict xt = a.x + ((b * L + t) * H + h) * P;
    const float* __restrict Bt = a.Bm + ((b * L + t) * a.groups + g) * N;
    const float* __restrict Ct = a.Cm + ((b * L + t) * a.groups + g) * N;
    float* __restrict yt = y + ((b * L + t) * H + h) * P;
    if (a.D == nullptr) {
      for (int64_t p = 0; p < P; ++p) yt[p] = 0.f;
    } else if (a.d_per_channel) {
      const float* Dh = a.D + h * P;
      for (int64_t p = 0; p < P; ++p) yt[p] = Dh[p] * xt[p];
    } else {
      const float Dh = a.D[h];
      for (int64_t p = 0; p < P; ++p) yt[p] = Dh * xt[p];
    }
    for (int64_t n = 0; n < N; ++n) {
      float* __restrict Sn = S + n * P;
      const float bx = dtv * Bt[n], c = Ct[n];
      for (int64_t p = 0; p < P; ++p) {
        const float s = decay * Sn[p] + bx * xt[p];
        Sn[p] = s;
        yt[p] += c * s;
      }
    }
    if (trace != nullptr) std::copy(S, S + P * N, trace + t * P * N);
  }
}

// Per-(b, h) outputs of the backward.
struct HeadGrads {
  float* dx;      // [B, L, H, P]
  float* ddt;     // [B, L, H] (w.r.t. the raw dt, before bias)
  float* dB;      // [B, L, H, N] per head; summed over the heads of a group afterwards
  float* dC;      // [B, L, H, N]
  float* dA;      // [B, H]
  float* dD;      // [B, H, P] (per channel; summed over P for a per-head D)
  float* dinit;   // [B, H, P, N] or null
  const float* dy;      // [B, L, H, P]
  const float* dfinal;  // [B, H, P, N] or null
};

/// Backward of one (b, h). `trace` [L][N][P] holds S after every step (forward_head's),
/// `S0` the state before step 0, `dS` [N][P] and `dxv` [P] are scratch.
AIM_CPU_CLONES
void backward_head(const ScanArgs& a, int64_t b, int64_t h, const float* __restrict trace,
                   const float* __restrict S0, float* __restrict dS, float* __restrict dxv,
                   const HeadGrads& gr) {
  const int64_t L = a.len, H = a.heads, P = a.hdim, N = a.dstate;
  const int64_t g = h / (H / a.groups);
  const float A = a.A[h];
  if (gr.dfinal != nullptr) {
    const float* src = gr.dfinal + (b * H + h) * P * N;
    for (int64_t p = 0; p < P; ++p)
      for (int64_t n = 0; n < N; ++n) dS[n * P + p] = src[p * N + n];
  } else {
    std::fill(dS, dS + P * N, 0.f);
  }
  float dA = 0.f;
  float* dD = gr.dD + (b * H + h) * P;
  std::fill(dD, dD + P, 0.f);
  for (int64_t t = L - 1; t >= 0; --t) {
    const float raw = dt_raw(a, b, t, h);
    const float dtv = a.softplus ? softplus(raw) : raw;
    const float decay = std::exp(dtv * A);
    const int64_t row = (b * L + t) * H + h;
    const float* __restrict xt = a.x + row * P;
    const float* __restrict dyt = gr.dy + row * P;
    const float* __restrict Bt = a.Bm + ((b * L + t) * a.groups + g) * N;
    const float* __restrict Ct = a.Cm + ((b * L + t) * a.groups + g) * N;
    const float* __restrict St = trace + t * P * N;
    const float* __restrict Sp = t > 0 ? trace + (t - 1) * P * N : S0;
    float* __restrict dBt = gr.dB + row * N;
    float* __restrict dCt = gr.dC + row * N;
    for (int64_t p = 0; p < P; ++p) dxv[p] = 0.f;
    float ddtv = 0.f, da = 0.f;
    for (int64_t n = 0; n < N; ++n) {
      float* __restrict dSn = dS + n * P;
      dCt[n] = dot(St + n * P, dyt, P);
      const float c = Ct[n], bn = Bt[n];
      for (int64_t p = 0; p < P; ++p) dSn[p] += c * dyt[p];
      const float dsx = dot(dSn, xt, P);
      da += dot(dSn, Sp + n * P, P);
      for (int64_t p = 0; p < P; ++p) {
        dxv[p] += bn * dSn[p];
        dSn[p] *= decay;
      }
      dBt[n] = dtv * dsx;
      ddtv += bn * dsx;
    }
    float* __restrict dxt = gr.dx + row * P;
    if (a.D == nullptr) {
      for (int64_t p = 0; p < P; ++p) dxt[p] = dtv * dxv[p];
    } else {
      for (int64_t p = 0; p < P; ++p) {
        const float Dp = a.d_per_channel ? a.D[h * P + p] : a.D[h];
        dxt[p] = Dp * dyt[p] + dtv * dxv[p];
        dD[p] += dyt[p] * xt[p];
      }
    }
    ddtv += da * decay * A;
    dA += da * decay * dtv;
    gr.ddt[row] = a.softplus ? ddtv * softplus_grad(raw) : ddtv;
  }
  gr.dA[b * H + h] = dA;
  if (gr.dinit != nullptr) {
    float* dst = gr.dinit + (b * H + h) * P * N;
    for (int64_t p = 0; p < P; ++p)
      for (int64_t n = 0; n < N; ++n) dst[p * N + n] = dS[n * P + p];
  }
}

const float* ptr_or_null(const torch::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

/// The inputs as contiguous fp32 tensors (kept alive here) and the pointers the loops read.
struct FloatInputs {
  torch::Tensor x, dt, Bm, Cm, A, D, dt_bias, init;
  ScanArgs args;
  FloatInputs(const torch::Tensor& x_, const torch::Tensor& dt_, const torch::Tensor& A_,
              const torch::Tensor& Bm_, const torch::Tensor& Cm_, const torch::Tensor& D_,
              const torch::Tensor& dt_bias_, const torch::Tensor& init_, bool softplus)
      : x(as_float(x_)), dt(as_float(dt_)), Bm(as_float(Bm_)), Cm(as_float(Cm_)), A(as_float(A_)),
        D(as_float(D_)), dt_bias(as_float(dt_bias_)), init(as_float(init_)) {
    args.batch = x.size(0);
    args.len = x.size(1);
    args.heads = x.size(2);
    args.hdim = x.size(3);
    args.groups = Bm.size(2);
    args.dstate = Bm.size(3);
    args.x = x.data_ptr<float>();
    args.dt = dt.data_ptr<float>();
    args.Bm = Bm.data_ptr<float>();
    args.Cm = Cm.data_ptr<float>();
    args.A = A.data_ptr<float>();
    args.D = ptr_or_null(D);
    args.d_per_channel = D.defined() && D.dim() == 2;
    args.dt_bias = ptr_or_null(dt_bias);
    args.init = ptr_or_null(init);
    args.softplus = softplus;
  }
};

/// Runs f(b, h) over every (sequence, head), a few per thread task.
template <typename F>
void for_each_head(int64_t batch, int64_t heads, const F& f) {
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) f(i / heads, i % heads);
  });
}

class SsdScanCpuFunction : public torch::autograd::Function<SsdScanCpuFunction> {
 public:
  // Returns {y} or {y, final_state}. D, dt_bias and initial_state may be empty.
  static tensor_list forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& dt,
                             const torch::Tensor& A, const torch::Tensor& Bm,
                             const torch::Tensor& Cm, const std::optional<torch::Tensor>& D_opt,
                             const std::optional<torch::Tensor>& dt_bias_opt,
                             const std::optional<torch::Tensor>& init_opt, bool dt_softplus,
                             bool return_final_state) {
    const auto D = value_or_undefined(D_opt), dt_bias = value_or_undefined(dt_bias_opt);
    const auto init = value_or_undefined(init_opt);
    const FloatInputs in(x, dt, A, Bm, Cm, D, dt_bias, init, dt_softplus);
    const auto& args = in.args;
    const int64_t P = args.hdim, N = args.dstate;
    auto y = torch::empty(x.sizes(), in.x.options());
    torch::Tensor final_state;
    if (return_final_state) final_state = torch::empty({args.batch, args.heads, P, N}, in.x.options());
    float* yp = y.data_ptr<float>();
    float* fp = final_state.defined() ? final_state.data_ptr<float>() : nullptr;
    for_each_head(args.batch, args.heads, [&](int64_t b, int64_t h) {
      thread_local std::vector<float> S;
      S.resize(P * N);
      load_state(args, b, h, S.data());
      forward_head(args, b, h, S.data(), yp, nullptr);
      if (fp != nullptr) {
        float* dst = fp + (b * args.heads + h) * P * N;
        for (int64_t p = 0; p < P; ++p)
          for (int64_t n = 0; n < N; ++n) dst[p * N + n] = S[n * P + p];
      }
    });
    ctx->save_for_backward({x, dt, A, Bm, Cm, D, dt_bias, init});
    ctx->saved_data["dt_softplus"] = dt_softplus;
    ctx->set_materialize_grads(false);
    auto y_out = y.to(x.scalar_type());
    if (return_final_state) return {y_out, final_state};
    return {y_out};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &dt = saved[1], &A = saved[2], &Bm = saved[3], &Cm = saved[4];
    const auto &D = saved[5], &dt_bias = saved[6], &init = saved[7];
    const bool dt_softplus = ctx->saved_data["dt_softplus"].toBool();
    const FloatInputs in(x, dt, A, Bm, Cm, D, dt_bias, init, dt_softplus);
    const auto& args = in.args;
    const int64_t batch = args.batch, len = args.len, heads = args.heads, P = args.hdim;
    const int64_t groups = args.groups, N = args.dstate;
    const auto fopts = in.x.options();
    const auto dy = grads[0].defined() ? as_float(grads[0]) : torch::zeros(x.sizes(), fopts);
    const auto dfinal = grads.size() > 1 && grads[1].defined() ? as_float(grads[1]) : torch::Tensor();

    auto dx = torch::empty({batch, len, heads, P}, fopts);
    auto ddt = torch::empty({batch, len, heads}, fopts);
    auto db = torch::empty({batch, len, heads, N}, fopts);
    auto dc = torch::empty({batch, len, heads, N}, fopts);
    auto da = torch::empty({batch, heads}, fopts);
    auto dd = torch::empty({batch, heads, P}, fopts);
    torch::Tensor dinit;
    if (init.defined()) dinit = torch::empty({batch, heads, P, N}, fopts);
    HeadGrads gr{dx.data_ptr<float>(), ddt.data_ptr<float>(), db.data_ptr<float>(),
                 dc.data_ptr<float>(), da.data_ptr<float>(), dd.data_ptr<float>(),
                 dinit.defined() ? dinit.data_ptr<float>() : nullptr, dy.data_ptr<float>(),
                 dfinal.defined() ? dfinal.data_ptr<float>() : nullptr};
    for_each_head(batch, heads, [&](int64_t b, int64_t h) {
      thread_local std::vector<float> trace, S0, dS, dxv;
      trace.resize(len * P * N);
      S0.resize(P * N);
      dS.resize(P * N);
      dxv.resize(P);
      load_state(args, b, h, S0.data());
      // Recompute the states (forward_head advances dS in place from S0). The y rows it writes
      // go to this head's rows of dx, which backward_head overwrites.
      std::copy(S0.begin(), S0.end(), dS.begin());
      forward_head(args, b, h, dS.data(), gr.dx, trace.data());
      backward_head(args, b, h, trace.data(), S0.data(), dS.data(), dxv.data(), gr);
    });

    auto reduce_bc = [&](const torch::Tensor& part, const torch::Tensor& like) {
      return part.view({batch, len, groups, heads / groups, N}).sum(3).to(like.scalar_type());
    };
    torch::Tensor dD, dbias;
    if (D.defined()) dD = (D.dim() == 2 ? dd.sum(0) : dd.sum(std::vector<int64_t>{0, 2})).to(D.scalar_type());
    if (dt_bias.defined()) dbias = ddt.sum(std::vector<int64_t>{0, 1}).to(dt_bias.scalar_type());
    return {dx.to(x.scalar_type()),
            ddt.to(dt.scalar_type()),
            da.sum(0).to(A.scalar_type()),
            reduce_bc(db, Bm),
            reduce_bc(dc, Cm),
            dD,
            dbias,
            dinit.defined() ? dinit.to(init.scalar_type()) : torch::Tensor(),
            torch::Tensor(),
            torch::Tensor()};
  }
};

}  // namespace

bool ssd_scan_supported(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                        const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D,
                        const torch::Tensor& dt_bias, const torch::Tensor& initial_state) {
  for (const auto* t : {&x, &dt, &A, &Bm, &Cm, &D, &dt_bias, &initial_state}) {
    if (!t->defined()) continue;
    if (!t->device().is_cpu() || !t->is_floating_point()) return false;
  }
  for (const auto* t : {&x, &dt, &Bm, &Cm}) {
    const auto type = t->scalar_type();
    if (type != torch::kFloat && type != torch::kBFloat16) return false;
  }
  return x.size(1) >= 1 && x.numel() > 0;
}

SsdScanResult ssd_scan(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                       const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D,
                       const torch::Tensor& dt_bias, bool dt_softplus,
                       const torch::Tensor& initial_state, bool return_final_state) {
  auto outs = SsdScanCpuFunction::apply(x, dt, A, Bm, Cm, optional_input(D), optional_input(dt_bias),
                                        optional_input(initial_state), dt_softplus,
                                        return_final_state);
  SsdScanResult result;
  result.y = outs[0];
  if (return_final_state) result.final_state = outs[1];
  return result;
}

}  // namespace aim::ops::cpu
