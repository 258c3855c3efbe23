// Checks and dispatch for the SSD scan ops: the CUDA kernels for CUDA tensors they support
// (unless turned off, aim/ops/dispatch.h), the reference otherwise.
#include "aim/ops/ssd_scan.h"

#include <torch/torch.h>

#include <initializer_list>
#include <utility>

#include "aim/ops/conv1d.h"
#include "aim/ops/dispatch.h"
#include "aim/ops/norms.h"
#include "ops/kernel_table.h"
#include "ops/ssd_decode_parts.h"
#include "ops/ssd_scan_cpu.h"
#ifdef AIM_WITH_CUDA
#include "ops/ssd_scan_cuda.h"
#endif

namespace aim::ops {

namespace {
void check_head_params(const torch::Tensor& A, const torch::Tensor& D,
                       const torch::Tensor& dt_bias, int64_t heads, int64_t hdim,
                       const char* op) {
  TORCH_CHECK(A.dim() == 1 && A.size(0) == heads, op, ": A must be [H] = [", heads, "], got ",
              A.sizes());
  if (D.defined()) {
    const bool per_head = D.dim() == 1 && D.size(0) == heads;
    const bool per_channel = D.dim() == 2 && D.size(0) == heads && D.size(1) == hdim;
    TORCH_CHECK(per_head || per_channel, op, ": D must be [H] or [H, P] = [", heads, ", ", hdim,
                "], got ", D.sizes());
  }
  if (dt_bias.defined()) {
    TORCH_CHECK(dt_bias.dim() == 1 && dt_bias.size(0) == heads, op, ": dt_bias must be [",
                heads, "], got ", dt_bias.sizes());
  }
}
}  // namespace

SsdScanResult ssd_scan(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                       const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D,
                       const torch::Tensor& dt_bias, bool dt_softplus, int64_t chunk_size,
                       const torch::Tensor& initial_state, bool return_final_state) {
  TORCH_CHECK(x.dim() == 4, "ssd_scan: x must be [B, L, H, P], got ", x.sizes());
  const int64_t batch = x.size(0), len = x.size(1), heads = x.size(2), hdim = x.size(3);
  TORCH_CHECK(dt.dim() == 3 && dt.size(0) == batch && dt.size(1) == len && dt.size(2) == heads,
              "ssd_scan: dt must be [", batch, ", ", len, ", ", heads, "], got ", dt.sizes());
  TORCH_CHECK(Bm.dim() == 4 && Bm.size(0) == batch && Bm.size(1) == len,
              "ssd_scan: B must be [B, L, G, N] with B = ", batch, ", L = ", len, ", got ",
              Bm.sizes());
  TORCH_CHECK(Cm.sizes() == Bm.sizes(), "ssd_scan: C ", Cm.sizes(), " != B ", Bm.sizes());
  const int64_t groups = Bm.size(2);
  TORCH_CHECK(groups >= 1 && heads % groups == 0, "ssd_scan: ngroups ", groups,
              " must divide nheads ", heads);
  check_head_params(A, D, dt_bias, heads, hdim, "ssd_scan");
  TORCH_CHECK(chunk_size >= 1, "ssd_scan: chunk_size must be >= 1, got ", chunk_size);
  if (initial_state.defined()) {
    TORCH_CHECK(initial_state.dim() == 4 && initial_state.size(0) == batch &&
                    initial_state.size(1) == heads && initial_state.size(2) == hdim &&
                    initial_state.size(3) == Bm.size(3),
                "ssd_scan: initial_state must be [", batch, ", ", heads, ", ", hdim, ", ",
                Bm.size(3), "], got ", initial_state.sizes());
  }
#ifdef AIM_WITH_CUDA
  // The kernels pick their own chunk (chunk_size only changes rounding). Unsupported cases
  // (mixed input dtypes, fp16, d_state > 256, more than 65535 sequences or heads) and
  // AIM_CUDA_KERNELS=0 run the reference.
  if (x.is_cuda() && cuda_kernels_enabled() &&
      cuda::ssd_scan_supported(x, dt, A, Bm, Cm, D, dt_bias, initial_state)) {
    return cuda::ssd_scan(x, dt, A, Bm, Cm, D, dt_bias, dt_softplus, initial_state,
                          return_final_state);
  }
#endif
  if (const auto* k = emulated_kernels_for(x);
      k && k->ssd_scan_supported(x, dt, A, Bm, Cm, D, dt_bias, initial_state)) {
    return k->ssd_scan(x, dt, A, Bm, Cm, D, dt_bias, dt_softplus, initial_state,
                       return_final_state);
  }
  // On the CPU the token-by-token kernel (ops/ssd_scan_cpu.h) unless AIM_CPU_KERNELS=0.
  if (x.device().is_cpu() && cpu_kernels_enabled() &&
      cpu::ssd_scan_supported(x, dt, A, Bm, Cm, D, dt_bias, initial_state)) {
    return cpu::ssd_scan(x, dt, A, Bm, Cm, D, dt_bias, dt_softplus, initial_state,
                         return_final_state);
  }
  return ref::ssd_scan(x, dt, A, Bm, Cm, D, dt_bias, dt_softplus, chunk_size, initial_state,
                       return_final_state);
}

torch::Tensor ssd_state_update(torch::Tensor& state, const torch::Tensor& x,
                               const torch::Tensor& dt, const torch::Tensor& A,
                               const torch::Tensor& Bm, const torch::Tensor& Cm,
                               const torch::Tensor& D, const torch::Tensor& dt_bias,
                               bool dt_softplus) {
  TORCH_CHECK(x.dim() == 3, "ssd_state_update: x must be [B, H, P], got ", x.sizes());
  const int64_t batch = x.size(0), heads = x.size(1), hdim = x.size(2);
  TORCH_CHECK(dt.dim() == 2 && dt.size(0) == batch && dt.size(1) == heads,
              "ssd_state_update: dt must be [", batch, ", ", heads, "], got ", dt.sizes());
  TORCH_CHECK(Bm.dim() == 3 && Bm.size(0) == batch && Bm.size(1) >= 1 && heads % Bm.size(1) == 0,
              "ssd_state_update: B must be [B, G, N] with G dividing ", heads, ", got ",
              Bm.sizes());
  TORCH_CHECK(Cm.sizes() == Bm.sizes(), "ssd_state_update: C ", Cm.sizes(), " != B ",
              Bm.sizes());
  TORCH_CHECK(state.dim() == 4 && state.size(0) == batch && state.size(1) == heads &&
                  state.size(2) == hdim && state.size(3) == Bm.size(2),
              "ssd_state_update: state must be [", batch, ", ", heads, ", ", hdim, ", ",
              Bm.size(2), "], got ", state.sizes());
  TORCH_CHECK(state.scalar_type() == torch::kFloat || state.scalar_type() == torch::kBFloat16,
              "ssd_state_update: state must be fp32 or bf16, got ", state.scalar_type());
  check_head_params(A, D, dt_bias, heads, hdim, "ssd_state_update");
  // The kernel reads every input through raw pointers: all on x's device (a parameter left on the
  // CPU would be read as a device address), as the reference requires too.
  for (const auto& [name, t] : {std::pair<const char*, const torch::Tensor*>{"state", &state}, {"dt", &dt},
                                {"A", &A}, {"B", &Bm}, {"C", &Cm}, {"D", &D}, {"dt_bias", &dt_bias}}) {
    TORCH_CHECK(!t->defined() || t->device() == x.device(), "ssd_state_update: ", name, " is on ", t->device(),
                ", x on ", x.device());
  }
  // The kernel has no backward: a call autograd would record goes to the reference.
  bool grad = false;
  if (c10::GradMode::is_enabled())
    for (const torch::Tensor* t : std::initializer_list<const torch::Tensor*>{&state, &x, &dt, &A, &Bm, &Cm, &D, &dt_bias})
      grad |= t->defined() && t->requires_grad();
#ifdef AIM_WITH_CUDA
  if (!grad && x.is_cuda() && cuda_kernels_enabled() && cuda::ssd_state_update_supported(state, x, Bm, D)) {
    return cuda::ssd_state_update(state, x, dt, A, Bm, Cm, D, dt_bias, dt_softplus);
  }
#endif
  if (const auto* k = emulated_kernels_for(x); !grad && k && k->ssd_state_update_supported(state, x, Bm, D)) {
    return k->ssd_state_update(state, x, dt, A, Bm, Cm, D, dt_bias, dt_softplus);
  }
  return ref::ssd_state_update(state, x, dt, A, Bm, Cm, D, dt_bias, dt_softplus);
}

namespace detail {

SsdDecodeShape check_ssd_decode_step(const torch::Tensor& zxbcdt, const torch::Tensor& conv_state,
                                     const torch::Tensor& ssm_state, const SsdDecodeWeights& w) {
  TORCH_CHECK(w.A.defined() && w.A.dim() == 1, "ssd_decode_step: A must be [H], got ",
              w.A.defined() ? w.A.sizes() : torch::IntArrayRef{});
  TORCH_CHECK(w.norm_weight.defined() && w.norm_weight.dim() == 1,
              "ssd_decode_step: norm_weight must be [E]");
  SsdDecodeShape s{};
  s.heads = w.A.size(0);
  s.inner = w.norm_weight.size(0);
  TORCH_CHECK(s.heads >= 1 && s.inner % s.heads == 0, "ssd_decode_step: E = ", s.inner,
              " (norm_weight) must be a multiple of H = ", s.heads, " (A)");
  s.headdim = s.inner / s.heads;
  TORCH_CHECK(conv_state.dim() == 3, "ssd_decode_step: conv_state must be [B, C, W], got ",
              conv_state.sizes());
  s.batch = conv_state.size(0);
  s.conv_dim = conv_state.size(1);
  TORCH_CHECK(w.ngroups >= 1 && s.heads % w.ngroups == 0 && s.conv_dim > s.inner &&
                  (s.conv_dim - s.inner) % (2 * w.ngroups) == 0,
              "ssd_decode_step: conv_state's C = ", s.conv_dim, " must be E + 2 G N with E = ",
              s.inner, ", G = ", w.ngroups, " dividing H = ", s.heads);
  s.dstate = (s.conv_dim - s.inner) / (2 * w.ngroups);
  TORCH_CHECK(zxbcdt.dim() == 2 && zxbcdt.size(0) == s.batch &&
                  zxbcdt.size(1) == s.inner + s.conv_dim + s.heads,
              "ssd_decode_step: zxbcdt must be [", s.batch, ", ", s.inner + s.conv_dim + s.heads,
              "] (z | x B C | dt), got ", zxbcdt.sizes());
  TORCH_CHECK(ssm_state.dim() == 4 && ssm_state.size(0) == s.batch &&
                  ssm_state.size(1) == s.heads && ssm_state.size(2) == s.headdim &&
                  ssm_state.size(3) == s.dstate,
              "ssd_decode_step: ssm_state must be [", s.batch, ", ", s.heads, ", ", s.headdim,
              ", ", s.dstate, "], got ", ssm_state.sizes());
  TORCH_CHECK(w.norm_group_size >= 1 && s.inner % w.norm_group_size == 0,
              "ssd_decode_step: norm_group_size ", w.norm_group_size, " must divide E = ",
              s.inner);
  // The weights the fused kernel indexes by head, channel and tap (the three-op path checks them
  // op by op): [H] or [H, P] for D, [H] for dt_bias, [C] for the conv bias, [C, W] or [C, 1, W]
  // for the conv weight.
  const int64_t width = conv_state.size(2);
  check_head_params(w.A, w.D, w.dt_bias, s.heads, s.headdim, "ssd_decode_step");
  TORCH_CHECK(!w.conv_bias.defined() || (w.conv_bias.dim() == 1 && w.conv_bias.size(0) == s.conv_dim),
              "ssd_decode_step: conv_bias must be [", s.conv_dim, "], got ", w.conv_bias.sizes());
  TORCH_CHECK(w.conv_weight.defined() &&
                  ((w.conv_weight.dim() == 2 && w.conv_weight.size(0) == s.conv_dim && w.conv_weight.size(1) == width) ||
                   (w.conv_weight.dim() == 3 && w.conv_weight.size(0) == s.conv_dim && w.conv_weight.size(1) == 1 &&
                    w.conv_weight.size(2) == width)),
              "ssd_decode_step: conv_weight must be [", s.conv_dim, ", ", width, "] or [", s.conv_dim, ", 1, ", width,
              "], got ", w.conv_weight.defined() ? w.conv_weight.sizes() : torch::IntArrayRef{});
  return s;
}

}  // namespace detail

torch::Tensor ssd_decode_step(const torch::Tensor& zxbcdt, torch::Tensor& conv_state,
                              torch::Tensor& ssm_state, const SsdDecodeWeights& w,
                              const torch::Tensor& arrivals) {
  const auto shape = detail::check_ssd_decode_step(zxbcdt, conv_state, ssm_state, w);
#ifdef AIM_WITH_CUDA
  if (zxbcdt.is_cuda() && cuda_kernels_enabled() &&
      cuda::ssd_decode_step_supported(zxbcdt, conv_state, ssm_state, w)) {
    return cuda::ssd_decode_step(zxbcdt, conv_state, ssm_state, w, arrivals);
  }
#endif
  if (const auto* k = emulated_kernels_for(zxbcdt);
      k && k->ssd_decode_step_supported(zxbcdt, conv_state, ssm_state, w)) {
    return k->ssd_decode_step(zxbcdt, conv_state, ssm_state, w, arrivals);
  }
  // The three ops, each through its own dispatch.
  return detail::ssd_decode_step_parts(shape, zxbcdt, conv_state, ssm_state, w,
                                       ops::causal_conv1d_update, ops::ssd_state_update,
                                       ops::gated_rms_norm);
}

}  // namespace aim::ops
