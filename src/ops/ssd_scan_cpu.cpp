// CPU kernel of the SSD scan (see ssd_scan_cpu.h).
//
// One task per (sequence b, head h). The forward keeps the state transposed, S[n][p], so that
// every update is an axpy over the head dimension p and y_t = S_t C_t accumulates over n in
// vector registers. Every loop of the kernel is such an axpy along a contiguous row (vectorised
// without reassociation); no loop needs a horizontal sum per element. The kernels are compiled
// for AVX-512, AVX2 + FMA and the baseline and the best the CPU has runs (cpu_simd.h).
//
// Backward recomputes the states of its (b, h) into a per-thread buffer [L][P][N] and walks
// back once, with the state gradient dS held in both layouts (see backward_head):
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
#include "ops/cpu_simd.h"
#include "ops/optional_inputs.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "aim/ops/split.h"

namespace aim::ops::cpu {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

using namespace simd;

// Everything a (b, h) task reads: fp32 contiguous tensors.
struct ScanArgs {
  int64_t batch, len, heads, hdim, groups, dstate;
  const float* x;        // [B, L, H, P]
  const float* dtv;      // [B, L, H] the step: softplus(dt + dt_bias), or dt + dt_bias
  const float* decay;    // [B, L, H] exp(step * A[h])
  const float* dsp;      // [B, L, H] d step / d raw dt (sigmoid, or 1); backward only
  const float* Bm;       // [B, L, G, N]
  const float* Cm;       // [B, L, G, N]
  const float* A;        // [H]
  const float* D;        // [H] or [H, P] or null
  bool d_per_channel;
  const float* init;     // [B, H, P, N] or null
};

/// Where token t of (sequence b, head h) lives: `row` indexes the [B, L, H] tensors (the step,
/// the decay; times P the rows of x, y, dy, dx; times N the per-head dB, dC), `bc` is the offset
/// of its group's B and C rows.
struct TokenRows {
  int64_t row, bc;
};
inline TokenRows token_rows(const ScanArgs& a, int64_t b, int64_t t, int64_t h) {
  const int64_t g = h / (a.heads / a.groups);
  return {(b * a.len + t) * a.heads + h, ((b * a.len + t) * a.groups + g) * a.dstate};
}

// A task walks one head through the tokens, so its rows of x, B, C, dy and the outputs lie
// H * P * 4 bytes apart (2-3 KB in AiM's configs): every token is a new page for the hardware
// prefetchers, and without help each row is a demand miss to memory (measured: two loads took
// 87% of the forward's time). The loops prefetch the rows kPrefetch tokens ahead.
constexpr int64_t kPrefetch = 4;

AIM_INLINE void prefetch_rows(const float* p, int64_t floats, bool write) {
  for (int64_t i = 0; i < floats; i += 16) {
    if (write) __builtin_prefetch(p + i, 1, 3);
    else __builtin_prefetch(p + i, 0, 3);
  }
}

/// The rows token t of (b, h) reads (x, B, C, the step and decay) and, with y, writes.
AIM_INLINE void prefetch_token(const ScanArgs& a, int64_t b, int64_t t, int64_t h, const float* y,
                           const float* dy) {
  const int64_t P = a.hdim, N = a.dstate;
  const auto [row, bc] = token_rows(a, b, t, h);
  prefetch_rows(a.x + row * P, P, false);
  prefetch_rows(a.Bm + bc, N, false);
  prefetch_rows(a.Cm + bc, N, false);
  __builtin_prefetch(a.dtv + row, 0, 3);
  __builtin_prefetch(a.decay + row, 0, 3);
  if (y != nullptr) prefetch_rows(y + row * P, P, true);
  if (dy != nullptr) prefetch_rows(dy + row * P, P, false);
}

// The inner loops. Each works on a block of kW lanes of the contiguous dimension and sweeps the
// other dimension with its accumulators in registers, so that no sum goes through memory from one
// step of the sweep to the next; lanes past the last full block run the same order on scalars.
// V is the 16-lane vector type of the instruction set the kernel is compiled for (cpu_simd.h).

/// Forward step, state S [N][P]: S[n] = a S[n] + (dt B[n]) x; y += sum_n C[n] S[n] (y holds the
/// D x term on entry). Four accumulators over n (even FMA chains would otherwise wait on each
/// other's latency), summed in a fixed order.
template <class V>
AIM_INLINE void fwd_step(float* __restrict S, const float* __restrict x, const float* __restrict Bm,
                         const float* __restrict Cm, float* __restrict y, float decay, float dtv,
                         int64_t N, int64_t P) {
  const int64_t Pv = P - P % kW, N4 = N - N % 4;
  for (int64_t pb = 0; pb < Pv; pb += kW) {
    const V xv = loadu<V>(x + pb);
    V acc[4] = {};
    auto step = [&](int64_t n, V& a) AIM_LAMBDA_INLINE {
      float* Sn = S + n * P + pb;
      const V v = loadu<V>(Sn) * decay + xv * (dtv * Bm[n]);
      storeu(Sn, v);
      a += v * Cm[n];
    };
    for (int64_t n = 0; n < N4; n += 4) {
      step(n, acc[0]);
      step(n + 1, acc[1]);
      step(n + 2, acc[2]);
      step(n + 3, acc[3]);
    }
    for (int64_t n = N4; n < N; ++n) step(n, acc[0]);
    storeu(y + pb, loadu<V>(y + pb) + ((acc[0] + acc[1]) + (acc[2] + acc[3])));
  }
  for (int64_t p = Pv; p < P; ++p) {
    float acc = 0.f;
    for (int64_t n = 0; n < N; ++n) {
      const float v = decay * S[n * P + p] + dtv * Bm[n] * x[p];
      S[n * P + p] = v;
      acc += v * Cm[n];
    }
    y[p] += acc;
  }
}

/// Recompute step, states [P][N]: cur[p] = a prev[p] + (dt x[p]) B.
AIM_INLINE void state_step(float* __restrict cur, const float* __restrict prev,
                           const float* __restrict x, const float* __restrict Bm, float decay,
                           float dtv, int64_t N, int64_t P) {
  for (int64_t p = 0; p < P; ++p) {
    const float xv = dtv * x[p];
    float* c = cur + p * N;
    const float* q = prev + p * N;
    for (int64_t n = 0; n < N; ++n) c[n] = decay * q[n] + xv * Bm[n];
  }
}

/// Backward step on the [P][N] state gradient r: r += dy C^T; dC = S_t^T dy; dsx = r^T x and
/// dB = dt dsx; then r *= a. Returns <B, dsx> in `bdsx` and <r, S_{t-1}> (before the decay) in
/// `da`. Two sets of accumulators over p.
template <class V>
AIM_INLINE void grad_step_pn(float* __restrict r, const float* __restrict St,
                             const float* __restrict Sp, const float* __restrict Bm,
                             const float* __restrict Cm, const float* __restrict dy,
                             const float* __restrict x, float* __restrict dC,
                             float* __restrict dB, float dtv, float decay, int64_t N, int64_t P,
                             float& bdsx, float& da) {
  const int64_t Nv = N - N % kW, P2 = P - P % 2;
  V totB = {}, totA = {};
  for (int64_t nb = 0; nb < Nv; nb += kW) {
    const V c = loadu<V>(Cm + nb);
    V aC[2] = {}, aX[2] = {}, aA[2] = {};
    auto step = [&](int64_t p, int j) AIM_LAMBDA_INLINE {
      float* rp = r + p * N + nb;
      const V v = loadu<V>(rp) + c * dy[p];
      aC[j] += loadu<V>(St + p * N + nb) * dy[p];
      aX[j] += v * x[p];
      aA[j] += v * loadu<V>(Sp + p * N + nb);
      storeu(rp, v * decay);
    };
    for (int64_t p = 0; p < P2; p += 2) {
      step(p, 0);
      step(p + 1, 1);
    }
    if (P2 < P) step(P2, 0);
    const V dsx = aX[0] + aX[1];
    storeu(dC + nb, aC[0] + aC[1]);
    storeu(dB + nb, dsx * dtv);
    totB += loadu<V>(Bm + nb) * dsx;
    totA += aA[0] + aA[1];
  }
  float tailB = 0.f, tailA = 0.f;
  for (int64_t n = Nv; n < N; ++n) {
    float aC = 0.f, aX = 0.f, aA = 0.f;
    for (int64_t p = 0; p < P; ++p) {
      const float v = r[p * N + n] + Cm[n] * dy[p];
      aC += St[p * N + n] * dy[p];
      aX += v * x[p];
      aA += v * Sp[p * N + n];
      r[p * N + n] = v * decay;
    }
    dC[n] = aC;
    dB[n] = dtv * aX;
    tailB += Bm[n] * aX;
    tailA += aA;
  }
  bdsx = hsum(totB) + tailB;
  da = hsum(totA) + tailA;
}

/// dx_t = D dy_t + dt dxv (D per channel `Dv`, else the scalar `Dh`; none when `has_d` is
/// false), and dD += dy_t x_t.
AIM_INLINE void dx_step(float* __restrict dx, const float* __restrict dy, const float* __restrict x,
                        const float* __restrict dxv, const float* __restrict Dv, float Dh,
                        bool has_d, float dtv, float* __restrict dD, int64_t P) {
  if (!has_d) {
    for (int64_t p = 0; p < P; ++p) dx[p] = dtv * dxv[p];
    return;
  }
  if (Dv != nullptr) {
    for (int64_t p = 0; p < P; ++p) dx[p] = Dv[p] * dy[p] + dtv * dxv[p];
  } else {
    for (int64_t p = 0; p < P; ++p) dx[p] = Dh * dy[p] + dtv * dxv[p];
  }
  for (int64_t p = 0; p < P; ++p) dD[p] += dy[p] * x[p];
}

/// Backward step on the [N][P] state gradient r: r += C dy^T; dxv = r^T B; then r *= a. Four
/// accumulators over n.
template <class V>
AIM_INLINE void grad_step_np(float* __restrict r, const float* __restrict dy,
                             const float* __restrict Bm, const float* __restrict Cm,
                             float* __restrict dxv, float decay, int64_t N, int64_t P) {
  const int64_t Pv = P - P % kW, N4 = N - N % 4;
  for (int64_t pb = 0; pb < Pv; pb += kW) {
    const V d = loadu<V>(dy + pb);
    V acc[4] = {};
    auto step = [&](int64_t n, V& a) AIM_LAMBDA_INLINE {
      float* rn = r + n * P + pb;
      const V v = loadu<V>(rn) + d * Cm[n];
      a += v * Bm[n];
      storeu(rn, v * decay);
    };
    for (int64_t n = 0; n < N4; n += 4) {
      step(n, acc[0]);
      step(n + 1, acc[1]);
      step(n + 2, acc[2]);
      step(n + 3, acc[3]);
    }
    for (int64_t n = N4; n < N; ++n) step(n, acc[0]);
    storeu(dxv + pb, (acc[0] + acc[1]) + (acc[2] + acc[3]));
  }
  for (int64_t p = Pv; p < P; ++p) {
    float acc = 0.f;
    for (int64_t n = 0; n < N; ++n) {
      const float v = r[n * P + p] + Cm[n] * dy[p];
      acc += v * Bm[n];
      r[n * P + p] = v * decay;
    }
    dxv[p] = acc;
  }
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
/// and leaves as the final state.
template <class V>
AIM_INLINE void forward_head(const ScanArgs& a, int64_t b, int64_t h, float* __restrict S,
                             float* __restrict y) {
  const int64_t L = a.len, P = a.hdim, N = a.dstate;
  for (int64_t t = 0; t < std::min(L, kPrefetch); ++t) prefetch_token(a, b, t, h, y, nullptr);
  for (int64_t t = 0; t < L; ++t) {
    if (t + kPrefetch < L) prefetch_token(a, b, t + kPrefetch, h, y, nullptr);
    const auto [row, bc] = token_rows(a, b, t, h);
    const float dtv = a.dtv[row], decay = a.decay[row];
    const float* __restrict xt = a.x + row * P;
    const float* __restrict Bt = a.Bm + bc;
    const float* __restrict Ct = a.Cm + bc;
    float* __restrict yt = y + row * P;
    if (a.D == nullptr) {
      for (int64_t p = 0; p < P; ++p) yt[p] = 0.f;
    } else if (a.d_per_channel) {
      const float* Dh = a.D + h * P;
      for (int64_t p = 0; p < P; ++p) yt[p] = Dh[p] * xt[p];
    } else {
      const float Dh = a.D[h];
      for (int64_t p = 0; p < P; ++p) yt[p] = Dh * xt[p];
    }
    fwd_step<V>(S, xt, Bt, Ct, yt, decay, dtv, N, P);
  }
}
AIM_CPU_KERNEL(ForwardHead, forward_head);

/// The states of one (b, h) after every step, in the [P][N] layout: trace[t][p][n]. `S0` [P][N]
/// is the state before step 0 (initial_state's own layout). y is not needed by the backward, so
/// the recurrence alone runs: an axpy over n per (t, p).
template <class V>
AIM_INLINE void recompute_trace(const ScanArgs& a, int64_t b, int64_t h,
                                const float* __restrict S0, float* __restrict trace) {
  const int64_t L = a.len, P = a.hdim, N = a.dstate;
  for (int64_t t = 0; t < std::min(L, kPrefetch); ++t) prefetch_token(a, b, t, h, nullptr, nullptr);
  for (int64_t t = 0; t < L; ++t) {
    if (t + kPrefetch < L) prefetch_token(a, b, t + kPrefetch, h, nullptr, nullptr);
    const auto [row, bc] = token_rows(a, b, t, h);
    const float dtv = a.dtv[row], decay = a.decay[row];
    const float* __restrict xt = a.x + row * P;
    const float* __restrict Bt = a.Bm + bc;
    const float* __restrict prev = t > 0 ? trace + (t - 1) * P * N : S0;
    float* __restrict cur = trace + t * P * N;
    state_step(cur, prev, xt, Bt, decay, dtv, N, P);
  }
}
AIM_CPU_KERNEL(RecomputeTrace, recompute_trace);

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

// Scratch of one backward task.
struct HeadScratch {
  float* dS_pn;  // [P][N] state gradient, for the reductions over p (dB, dC, the decay's)
  float* dS_np;  // [N][P] the same gradient, for the reduction over n (dx)
  float* dxv;    // [P] sum_n B_t[n] dS[n]
};

/// Backward of one (b, h). `trace` [L][P][N] holds S after every step (recompute_trace's), `S0`
/// [P][N] the state before step 0.
///
/// The state gradient is kept in both layouts so that every reduction runs along a contiguous
/// row with vector accumulators and none needs a horizontal sum per element: the [P][N] copy
/// gives dC, dB and the decay's gradient as axpys over n, the [N][P] copy gives dx as axpys over
/// p. Both copies see the same updates (dS += C_t dy_t^T, then dS *= a_t), so they stay equal.
template <class V>
AIM_INLINE void backward_head(const ScanArgs& a, int64_t b, int64_t h,
                              const float* __restrict trace, const float* __restrict S0,
                              const HeadScratch& sc, const HeadGrads& gr) {
  const int64_t L = a.len, H = a.heads, P = a.hdim, N = a.dstate;
  const float A = a.A[h];
  float* __restrict dS_pn = sc.dS_pn;
  float* __restrict dS_np = sc.dS_np;
  float* __restrict dxv = sc.dxv;
  const float* Dv = a.D != nullptr && a.d_per_channel ? a.D + h * P : nullptr;
  const float Dh = a.D != nullptr && !a.d_per_channel ? a.D[h] : 0.f;
  if (gr.dfinal != nullptr) {
    const float* src = gr.dfinal + (b * H + h) * P * N;  // [P][N]
    std::copy(src, src + P * N, dS_pn);
    for (int64_t p = 0; p < P; ++p)
      for (int64_t n = 0; n < N; ++n) dS_np[n * P + p] = src[p * N + n];
  } else {
    std::fill(dS_pn, dS_pn + P * N, 0.f);
    std::fill(dS_np, dS_np + P * N, 0.f);
  }
  float dA = 0.f;
  float* __restrict dD = gr.dD + (b * H + h) * P;
  std::fill(dD, dD + P, 0.f);
  // Besides the inputs, the output rows: dx [.., P] and the per-head dB, dC [.., N].
  auto prefetch_back = [&](int64_t t) AIM_LAMBDA_INLINE {
    prefetch_token(a, b, t, h, gr.dx, gr.dy);
    const int64_t row = token_rows(a, b, t, h).row;
    prefetch_rows(gr.dB + row * N, N, true);
    prefetch_rows(gr.dC + row * N, N, true);
  };
  for (int64_t t = L - 1; t >= std::max<int64_t>(0, L - kPrefetch); --t) prefetch_back(t);
  for (int64_t t = L - 1; t >= 0; --t) {
    if (t - kPrefetch >= 0) prefetch_back(t - kPrefetch);
    const auto [row, bc] = token_rows(a, b, t, h);
    const float dtv = a.dtv[row], decay = a.decay[row];
    const float* __restrict xt = a.x + row * P;
    const float* __restrict dyt = gr.dy + row * P;
    const float* __restrict Bt = a.Bm + bc;
    const float* __restrict Ct = a.Cm + bc;
    const float* __restrict St = trace + t * P * N;
    const float* __restrict Sp = t > 0 ? trace + (t - 1) * P * N : S0;
    float* __restrict dBt = gr.dB + row * N;
    float* __restrict dCt = gr.dC + row * N;
    // [P][N]: dS += dy_t C_t^T; dC_t = S_t^T dy_t; dB_t = dt dS^T x_t; then dS *= a_t (the
    // gradient w.r.t. S_{t-1}).
    float ddtv = 0.f, da = 0.f;
    grad_step_pn<V>(dS_pn, St, Sp, Bt, Ct, dyt, xt, dCt, dBt, dtv, decay, N, P, ddtv, da);
    // [N][P]: dS += C_t dy_t^T; dxv = dS^T B_t; dS *= a_t.
    grad_step_np<V>(dS_np, dyt, Bt, Ct, dxv, decay, N, P);
    dx_step(gr.dx + row * P, dyt, xt, dxv, Dv, Dh, a.D != nullptr, dtv, dD, P);
    ddtv += da * decay * A;
    dA += da * decay * dtv;
    gr.ddt[row] = ddtv * a.dsp[row];
  }
  gr.dA[b * H + h] = dA;
  if (gr.dinit != nullptr) std::copy(dS_pn, dS_pn + P * N, gr.dinit + (b * H + h) * P * N);
}
AIM_CPU_KERNEL(BackwardHead, backward_head);

/// The inputs as contiguous fp32 tensors (kept alive here) and the pointers the loops read. The
/// per-token step, its decay and (for the backward) the step's derivative are computed here with
/// ATen's vectorised softplus / exp / sigmoid, as the reference computes the step.
struct FloatInputs {
  torch::Tensor x, Bm, Cm, A, D, init, dtv, decay, dsp;
  ScanArgs args;
  FloatInputs(const torch::Tensor& x_, const torch::Tensor& dt_, const torch::Tensor& A_,
              const torch::Tensor& Bm_, const torch::Tensor& Cm_, const torch::Tensor& D_,
              const torch::Tensor& dt_bias_, const torch::Tensor& init_, bool softplus,
              bool backward)
      : x(as_float(x_)), Bm(as_float(Bm_)), Cm(as_float(Cm_)), A(as_float(A_)), D(as_float(D_)),
        init(as_float(init_)) {
    auto raw = as_float(dt_);
    if (dt_bias_.defined()) raw = raw + dt_bias_.to(torch::kFloat);
    // torch::softplus (beta 1, threshold 20) and its derivative, sigmoid below the threshold.
    dtv = (softplus ? torch::softplus(raw) : raw).contiguous();
    decay = (dtv * A.view({1, 1, -1})).exp_().contiguous();
    if (backward) {
      dsp = softplus ? torch::where(raw > 20.f, torch::ones_like(raw), torch::sigmoid(raw)).contiguous()
                     : torch::ones_like(raw);
    }
    args.batch = x.size(0);
    args.len = x.size(1);
    args.heads = x.size(2);
    args.hdim = x.size(3);
    args.groups = Bm.size(2);
    args.dstate = Bm.size(3);
    args.x = x.data_ptr<float>();
    args.dtv = dtv.data_ptr<float>();
    args.decay = decay.data_ptr<float>();
    args.dsp = float_ptr(dsp);
    args.Bm = Bm.data_ptr<float>();
    args.Cm = Cm.data_ptr<float>();
    args.A = A.data_ptr<float>();
    args.D = float_ptr(D);
    args.d_per_channel = D.defined() && D.dim() == 2;
    args.init = float_ptr(init);
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
    const FloatInputs in(x, dt, A, Bm, Cm, D, dt_bias, init, dt_softplus, /*backward=*/false);
    const auto& args = in.args;
    const int64_t P = args.hdim, N = args.dstate;
    auto y = torch::empty(x.sizes(), in.x.options());
    torch::Tensor final_state;
    if (return_final_state) final_state = torch::empty({args.batch, args.heads, P, N}, in.x.options());
    float* yp = y.data_ptr<float>();
    float* fp = float_ptr(final_state);
    for_each_head(args.batch, args.heads, [&](int64_t b, int64_t h) {
      thread_local std::vector<float> S;
      S.resize(P * N);
      load_state(args, b, h, S.data());
      run_kernel<ForwardHead>(args, b, h, S.data(), yp);
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
    const FloatInputs in(x, dt, A, Bm, Cm, D, dt_bias, init, dt_softplus, /*backward=*/true);
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
                 float_ptr(dinit), dy.data_ptr<float>(), float_ptr(dfinal)};
    for_each_head(batch, heads, [&](int64_t b, int64_t h) {
      thread_local std::vector<float> trace, buf;
      trace.resize(len * P * N);
      buf.resize(3 * P * N + P);
      float* S0 = buf.data();
      HeadScratch sc{S0 + P * N, S0 + 2 * P * N, S0 + 3 * P * N};
      if (args.init != nullptr) {
        const float* src = args.init + (b * heads + h) * P * N;
        std::copy(src, src + P * N, S0);
      } else {
        std::fill(S0, S0 + P * N, 0.f);
      }
      run_kernel<RecomputeTrace>(args, b, h, S0, trace.data());
      run_kernel<BackwardHead>(args, b, h, trace.data(), S0, sc, gr);
    });

    auto reduce_bc = [&](const torch::Tensor& part) {
      return part.view({batch, len, groups, heads / groups, N}).sum(3);
    };
    torch::Tensor dD, dbias;
    if (D.defined()) dD = (D.dim() == 2 ? dd.sum(0) : dd.sum(std::vector<int64_t>{0, 2})).to(D.scalar_type());
    if (dt_bias.defined()) dbias = ddt.sum(std::vector<int64_t>{0, 1}).to(dt_bias.scalar_type());
    // Into the inputs' places in the gradient of what they were split from, where they have one
    // (a Mamba2 mixer's x | B | C and dt): no concatenation.
    return {into_split_grad_slot(x, dx),
            into_split_grad_slot(dt, ddt),
            da.sum(0).to(A.scalar_type()),
            into_split_grad_slot(Bm, reduce_bc(db)),
            into_split_grad_slot(Cm, reduce_bc(dc)),
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
