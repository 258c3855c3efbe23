// Fills kernels/ssd_state_update.h and kernels/ssd_scan.h from LibTorch tensors and launches on
// the current stream; the scan's forward and backward are tied together by a
// torch::autograd::Function.
#include "ops/ssd_scan_cuda.h"
#include "ops/cuda_backend.h"
#include "ops/optional_inputs.h"

#include <torch/torch.h>

#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "aim/ops/dispatch.h"
#include "aim/ops/split.h"
#include "ssd_scan.h"
#include "ssd_state_update.h"
#include "ssd_step.h"

namespace aim::ops::AIM_OPS_CUDA_NS {

namespace {
bool last_dim_contiguous(const torch::Tensor& t) { return t.stride(-1) == 1; }

// The kernels read rows along the last dimension: a copy only when it is strided.
torch::Tensor unit_last(const torch::Tensor& t) {
  return t.size(-1) > 1 && t.stride(-1) != 1 ? t.contiguous() : t;
}
}  // namespace

bool ssd_state_update_supported(const torch::Tensor& state, const torch::Tensor& x,
                                const torch::Tensor& Bm, const torch::Tensor& D) {
  return on_kernel_device(state) && state.is_contiguous() && kernel_dtype(state) &&
         kernel_dtype(x) &&
         last_dim_contiguous(x) && last_dim_contiguous(Bm) && Bm.scalar_type() == x.scalar_type();
}

torch::Tensor ssd_state_update(torch::Tensor& state, const torch::Tensor& x,
                               const torch::Tensor& dt, const torch::Tensor& A,
                               const torch::Tensor& Bm, const torch::Tensor& Cm,
                               const torch::Tensor& D, const torch::Tensor& dt_bias,
                               bool dt_softplus) {
  DeviceGuard guard(x.device());
  // The kernel takes dt's and C's row strides: column slices of the projection need no copy.
  const auto dt_c = unit_last(dt.to(x.scalar_type()));
  const auto c_c = unit_last(Cm.to(x.scalar_type()));
  auto a_f = as_float(A), d_f = as_float(D), bias_f = as_float(dt_bias);
  auto y = torch::empty(x.sizes(), x.options());

  kernels::SsdStateUpdateParams p;
  p.batch = static_cast<int>(x.size(0));
  p.nheads = static_cast<int>(x.size(1));
  p.headdim = static_cast<int>(x.size(2));
  p.ngroups = static_cast<int>(Bm.size(1));
  p.dstate = static_cast<int>(Bm.size(2));
  p.state = state.data_ptr();
  p.state_type = elem_type(state);
  p.x = x.data_ptr();
  p.dt = dt_c.data_ptr();
  p.Bm = Bm.data_ptr();
  p.Cm = c_c.data_ptr();
  p.A = a_f.data_ptr<float>();
  p.D = d_f.defined() ? d_f.data_ptr<float>() : nullptr;
  p.dt_bias = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  p.y = y.data_ptr();
  p.x_batch_stride = x.stride(0);
  p.x_head_stride = x.stride(1);
  p.dt_batch_stride = dt_c.stride(0);
  p.b_batch_stride = Bm.stride(0);
  p.b_group_stride = Bm.stride(1);
  p.c_batch_stride = c_c.stride(0);
  p.c_group_stride = c_c.stride(1);
  p.y_batch_stride = y.stride(0);
  p.y_head_stride = y.stride(1);
  p.dt_softplus = dt_softplus;
  p.d_per_channel = d_f.defined() && d_f.dim() == 2;
  // x's row stride must be 1 within a head: checked by ssd_state_update_supported.
  check_launch(kernels::ssd_state_update_cuda(p, elem_type(x), current_stream()), "ssd_state_update");
  return y;
}

// ---------------------------------------------------------------- chunked scan

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

constexpr int64_t kMaxGridDim = 65535;



// The largest thread block cluster the backward may form over heads: AIM_SSD_BWD_CLUSTER (1, 2,
// 4 or 8; 1 turns clusters off), else the kernels' default. Read at every call, so a benchmark
// can compare the sizes in one process.
int max_cluster_heads() {
  const char* v = std::getenv("AIM_SSD_BWD_CLUSTER");
  if (v == nullptr || *v == '\0') return kernels::kSsdDefaultClusterHeads;
  const std::string s(v);
  TORCH_CHECK(s == "1" || s == "2" || s == "4" || s == "8",
              "environment variable AIM_SSD_BWD_CLUSTER: expected 1, 2, 4 or 8, found '", s, "'");
  return std::stoi(s);
}

// State rows a warp of the fused decode step loads before updating them: AIM_SSD_STEP_ROWS (1, 2
// or 4), else the kernel's choice (0). Read at every call, so a benchmark can compare them in one
// process.
int step_rows_in_flight() {
  const char* v = std::getenv("AIM_SSD_STEP_ROWS");
  if (v == nullptr || *v == '\0') return 0;
  const std::string s(v);
  TORCH_CHECK(s == "1" || s == "2" || s == "4",
              "environment variable AIM_SSD_STEP_ROWS: expected 1, 2 or 4, found '", s, "'");
  return std::stoi(s);
}

// AIM_SSD_ELEMENT_LOADS=1: the scan kernels load their tiles element by element (to compare
// with the 16-byte vectors they use by default).
bool element_loads() { return env_switch("AIM_SSD_ELEMENT_LOADS", false); }

// AIM_SSD_SCAN=tiles: the scan runs the kernels that keep the state in shared memory where the
// register-state ones would (bf16, d_state <= 128); `regs` (the default) or unset: the register
// ones where they apply. A comparison for benchmarks and tests.
bool tiles_kernels() {
  const char* v = std::getenv("AIM_SSD_SCAN");
  if (v == nullptr || *v == '\0') return false;
  const std::string s(v);
  TORCH_CHECK(s == "regs" || s == "tiles", "environment variable AIM_SSD_SCAN: expected regs or tiles, found '", s,
              "'");
  return s == "tiles";
}

// AIM_SSD_BWD_PAIRS=0: the register backward runs a block per slice (h, P tile) instead of
// adding pairs of slices in one block where it can (1, or unset: pairs). A comparison for
// benchmarks and tests, read at every call.
bool bwd_slice_pairs_allowed() { return env_switch("AIM_SSD_BWD_PAIRS", true); }

kernels::SsdScanTiling tiling_for(const torch::Tensor& x, const torch::Tensor& Bm) {
  return kernels::ssd_scan_tiling(static_cast<int>(x.size(1)), static_cast<int>(x.size(3)),
                                  static_cast<int>(Bm.size(3)),
                                  // (0 heads per group, no tiling, when B has no groups)
                                  static_cast<int>(Bm.size(2) > 0 ? x.size(2) / Bm.size(2) : 0),
                                  elem_type(x),
                                  max_cluster_heads());
}

// Sizes, strides and the inputs shared by both passes. x, Bm and Cm have unit last strides;
// A, D, dt_bias and initial_state are contiguous fp32 (or undefined).
kernels::SsdScanParams base_params(const torch::Tensor& x, const torch::Tensor& dt,
                                   const torch::Tensor& Bm, const torch::Tensor& Cm,
                                   const torch::Tensor& a_f, const torch::Tensor& d_f,
                                   const torch::Tensor& bias_f, const torch::Tensor& init_f,
                                   bool dt_softplus, const kernels::SsdScanTiling& tiling) {
  kernels::SsdScanParams p;
  p.batch = static_cast<int>(x.size(0));
  p.len = static_cast<int>(x.size(1));
  p.nheads = static_cast<int>(x.size(2));
  p.headdim = static_cast<int>(x.size(3));
  p.ngroups = static_cast<int>(Bm.size(2));
  p.dstate = static_cast<int>(Bm.size(3));
  p.nchunks = tiling.nchunks;
  p.p_tile = tiling.p_tile;
  p.p_tiles = tiling.p_tiles;
  p.dstate_pad = tiling.dstate_pad;
  p.cluster_heads = tiling.cluster_heads;
  p.dt_softplus = dt_softplus;
  p.d_per_channel = d_f.defined() && d_f.dim() == 2;
  p.element_loads = element_loads();
  p.tiles_kernels = tiles_kernels();
  p.x = x.data_ptr();
  p.x_batch_stride = x.stride(0);
  p.x_len_stride = x.stride(1);
  p.x_head_stride = x.stride(2);
  p.dt = dt.data_ptr();
  p.dt_batch_stride = dt.stride(0);
  p.dt_len_stride = dt.stride(1);
  p.dt_head_stride = dt.stride(2);
  p.Bm = Bm.data_ptr();
  p.b_batch_stride = Bm.stride(0);
  p.b_len_stride = Bm.stride(1);
  p.b_group_stride = Bm.stride(2);
  p.Cm = Cm.data_ptr();
  p.c_batch_stride = Cm.stride(0);
  p.c_len_stride = Cm.stride(1);
  p.c_group_stride = Cm.stride(2);
  p.A = a_f.data_ptr<float>();
  p.D = d_f.defined() ? d_f.data_ptr<float>() : nullptr;
  p.dt_bias = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  p.initial_state = init_f.defined() ? init_f.data_ptr<float>() : nullptr;
  return p;
}

class SsdScanFunction : public torch::autograd::Function<SsdScanFunction> {
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
    DeviceGuard guard(x.device());
    const auto tiling = tiling_for(x, Bm);
    TORCH_CHECK(tiling.ok, "ssd_scan: no kernel tiling for x ", x.sizes(), ", B ", Bm.sizes());
    const auto xk = unit_last(x), bk = unit_last(Bm), ck = unit_last(Cm);
    const auto a_f = as_float(A), d_f = as_float(D), bias_f = as_float(dt_bias);
    const auto init_f = as_float(init);
    const int64_t batch = x.size(0), heads = x.size(2), hdim = x.size(3), dstate = Bm.size(3);
    auto y = torch::empty(x.sizes(), x.options());
    torch::Tensor final_state;
    if (return_final_state) {
      final_state = torch::empty({batch, heads, hdim, dstate}, x.options().dtype(torch::kFloat));
    }
    maybe_poison({y, final_state});

    auto p = base_params(xk, dt, bk, ck, a_f, d_f, bias_f, init_f, dt_softplus, tiling);
    p.y = y.data_ptr();
    p.y_batch_stride = y.stride(0);
    p.y_len_stride = y.stride(1);
    p.y_head_stride = y.stride(2);
    p.final_state = final_state.defined() ? final_state.data_ptr<float>() : nullptr;
    check_launch(kernels::ssd_scan_fwd_cuda(p, elem_type(x), current_stream()),
                 "ssd_scan forward");

    ctx->save_for_backward({x, dt, A, Bm, Cm, D, dt_bias, init});
    ctx->saved_data["dt_softplus"] = dt_softplus;
    // An unused output (y, or the final state) has no gradient: no zeros for it.
    ctx->set_materialize_grads(false);
    if (return_final_state) return {y, final_state};
    return {y};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& dt = saved[1];
    const auto& A = saved[2];
    const auto& Bm = saved[3];
    const auto& Cm = saved[4];
    const auto& D = saved[5];
    const auto& dt_bias = saved[6];
    const auto& init = saved[7];
    const bool dt_softplus = ctx->saved_data["dt_softplus"].toBool();
    DeviceGuard guard(x.device());
    const auto tiling = tiling_for(x, Bm);
    const int64_t batch = x.size(0), len = x.size(1), heads = x.size(2), hdim = x.size(3);
    const int64_t groups = Bm.size(2), dstate = Bm.size(3);
    const int64_t ptot = static_cast<int64_t>(tiling.p_tiles) * tiling.p_tile;
    const int64_t len_pad = static_cast<int64_t>(tiling.nchunks) * kernels::kSsdChunk;
    const auto fopts = x.options().dtype(torch::kFloat);

    const auto xk = unit_last(x), bk = unit_last(Bm), ck = unit_last(Cm);
    const auto a_f = as_float(A), d_f = as_float(D), bias_f = as_float(dt_bias);
    const auto init_f = as_float(init);
    const auto dy = grads[0].defined() ? unit_last(grads[0].to(x.scalar_type()))
                                       : torch::zeros(x.sizes(), x.options());
    const auto dfinal = grads.size() > 1 && grads[1].defined() ? as_float(grads[1]) : torch::Tensor();

    // x's, B's and C's places in the gradient of what they were split from (the Mamba2 mixer's
    // conv output, [B, L, x | B | C]) when they have one: written there, nothing is
    // concatenated. The kernel writes dx with a unit last stride.
    const auto dx_place = split_grad_slot(x);
    auto dx = dx_place.defined() && (hdim == 1 || dx_place.stride(3) == 1)
                  ? dx_place
                  : torch::empty(x.sizes(), x.options());
    auto states = torch::empty({batch, heads, tiling.nchunks, ptot, tiling.dstate_pad}, x.options());
    auto ddt_part = torch::empty({tiling.p_tiles, batch, len, heads}, fopts);
    auto da_part = torch::empty({tiling.p_tiles, batch, heads}, fopts);
    auto dd_part = D.defined() ? torch::empty({batch, heads, ptot}, fopts) : torch::Tensor();

    auto p = base_params(xk, dt, bk, ck, a_f, d_f, bias_f, init_f, dt_softplus, tiling);
    p.chunk_states = states.data_ptr();
    p.dy = dy.data_ptr();
    p.dy_batch_stride = dy.stride(0);
    p.dy_len_stride = dy.stride(1);
    p.dy_head_stride = dy.stride(2);
    p.dfinal_state = dfinal.defined() ? dfinal.data_ptr<float>() : nullptr;
    p.dx = dx.data_ptr();
    p.dx_batch_stride = dx.stride(0);
    p.dx_len_stride = dx.stride(1);
    p.dx_head_stride = dx.stride(2);
    if (bwd_slice_pairs_allowed()) p.slice_pairs = kernels::ssd_scan_bwd_slice_pairs(p, elem_type(x));
    // One dB / dC slice per P tile and cluster of heads (the kernel adds a cluster's heads), or
    // per pair of them.
    const int64_t slices = heads / tiling.cluster_heads * tiling.p_tiles / p.slice_pairs;
    auto db_part = torch::empty({batch, len_pad, slices, tiling.dstate_pad}, fopts);
    auto dc_part = torch::empty({batch, len_pad, slices, tiling.dstate_pad}, fopts);
    maybe_poison({dx, states, ddt_part, da_part, dd_part, db_part, dc_part});
    p.ddt_partial = ddt_part.data_ptr<float>();
    p.dA_partial = da_part.data_ptr<float>();
    p.dD_partial = dd_part.defined() ? dd_part.data_ptr<float>() : nullptr;
    p.dB_partial = db_part.data_ptr<float>();
    p.dC_partial = dc_part.data_ptr<float>();
    check_launch(kernels::ssd_scan_bwd_cuda(p, elem_type(x), current_stream()),
                 "ssd_scan backward");

    // The partial slices added in a fixed order (ATen reductions): deterministic.
    const auto ddt_f = ddt_part.sum(0);                                           // [B, L, H]
    torch::Tensor ddt_bias, dD;
    if (dt_bias.defined()) ddt_bias = ddt_f.sum(std::vector<int64_t>{0, 1}).to(dt_bias.scalar_type());
    if (D.defined()) {
      dD = (D.dim() == 2 ? dd_part.sum(0).narrow(1, 0, hdim) : dd_part.sum(std::vector<int64_t>{0, 2}))
               .to(D.scalar_type());
    }
    auto reduce_bc = [&](const torch::Tensor& part, const torch::Tensor& input) {
      const auto sum = part.view({batch, len_pad, groups, slices / groups, tiling.dstate_pad})
                           .sum(3)
                           .narrow(1, 0, len)
                           .narrow(3, 0, dstate);
      return into_split_grad_slot(input, sum);
    };
    if (dx_place.defined() && !dx.is_same(dx_place)) {
      dx_place.copy_(dx);
      dx = dx_place;
    }
    return {dx,
            into_split_grad_slot(dt, ddt_f),
            da_part.sum(std::vector<int64_t>{0, 1}).to(A.scalar_type()),
            reduce_bc(db_part, Bm),
            reduce_bc(dc_part, Cm),
            dD,
            ddt_bias,
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor()};
  }
};

}  // namespace

bool ssd_scan_supported(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                        const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D,
                        const torch::Tensor& dt_bias, const torch::Tensor& initial_state) {
  const auto type = x.scalar_type();
  if (!on_kernel_device(x) || (type != torch::kFloat && type != torch::kBFloat16)) return false;
  // dt, B and C are read in x's type: mixed types would change the reference's rounding.
  if (dt.scalar_type() != type || Bm.scalar_type() != type || Cm.scalar_type() != type) return false;
  for (const auto* t : {&dt, &A, &Bm, &Cm, &D, &dt_bias, &initial_state}) {
    if (!on_device_of(*t, x)) return false;
    if (t->defined() && !t->is_floating_point()) return false;
  }
  const int64_t batch = x.size(0), len = x.size(1), heads = x.size(2), hdim = x.size(3);
  const int64_t dstate = Bm.size(3);
  // Grid dims (y = heads, z = batch), int sizes, the d_state shared memory holds.
  if (batch < 1 || batch > kMaxGridDim || heads < 1 || heads > kMaxGridDim || len < 1 ||
      hdim < 1 || len > std::numeric_limits<int>::max() / 2 || hdim > 4096 ||
      dstate > kernels::kSsdMaxDstate) {
    return false;
  }
  DeviceGuard guard(x.device());
  const auto tiling = tiling_for(x, Bm);
  // The dB/dC partial rows ([H * p_tiles * N]) are a 32-bit leading dimension.
  return tiling.ok && heads * tiling.p_tiles * tiling.dstate_pad < std::numeric_limits<int>::max();
}

int ssd_scan_bwd_cluster_heads(const torch::Tensor& x, const torch::Tensor& Bm) {
  DeviceGuard guard(x.device());
  return tiling_for(x, Bm).cluster_heads;
}

SsdScanResult ssd_scan(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                       const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D,
                       const torch::Tensor& dt_bias, bool dt_softplus,
                       const torch::Tensor& initial_state, bool return_final_state) {
  TORCH_CHECK(!(initial_state.defined() && initial_state.requires_grad() &&
                torch::GradMode::is_enabled()),
              "ssd_scan: the CUDA kernels give no gradient for initial_state (used for prefill, "
              "without gradient); detach it, or set AIM_CUDA_KERNELS=0 for the reference");
  auto outs = SsdScanFunction::apply(x, dt, A, Bm, Cm, optional_input(D), optional_input(dt_bias),
                                     optional_input(initial_state.defined() ? initial_state.detach()
                                                                            : initial_state),
                                     dt_softplus, return_final_state);
  SsdScanResult result;
  result.y = outs[0];
  if (return_final_state) result.final_state = outs[1];
  return result;
}

// ---------------------------------------------------------------- fused one-token step

bool ssd_decode_step_supported(const torch::Tensor& zxbcdt, const torch::Tensor& conv_state,
                               const torch::Tensor& ssm_state, const SsdDecodeWeights& w) {
  const auto& x = zxbcdt;
  if (!on_kernel_device(x) || !kernel_dtype(x) || x.stride(1) != 1 || !kernel_dtype(conv_state) ||
      !kernel_dtype(ssm_state) || !ssm_state.is_contiguous() || !kernel_dtype(w.conv_weight) ||
      (w.conv_bias.defined() && !kernel_dtype(w.conv_bias)) || !kernel_dtype(w.norm_weight)) {
    return false;
  }
  for (const auto* t : {&conv_state, &ssm_state, &w.conv_weight, &w.conv_bias, &w.A, &w.D,
                        &w.dt_bias, &w.norm_weight}) {
    if (!on_device_of(*t, x)) return false;
  }
  const int64_t batch = conv_state.size(0), width = conv_state.size(2);
  const int64_t headdim = ssm_state.size(2), dstate = ssm_state.size(3);
  return batch <= kMaxGridDim && width >= 1 && width <= kernels::kSsdStepMaxWidth &&
         (width == 1 || conv_state.stride(2) == 1) && distinct_elements(conv_state) &&
         w.conv_weight.numel() == conv_state.size(1) * width &&
         headdim <= kernels::kSsdStepMaxHeaddim && dstate <= kernels::kSsdStepMaxDstate &&
         w.A.size(0) * kernels::kSsdStepMaxHeaddim <= std::numeric_limits<int>::max() &&
         !tracks_grad({&zxbcdt, &w.conv_weight, &w.conv_bias, &w.A, &w.D, &w.dt_bias,
                       &w.norm_weight});
}

torch::Tensor ssd_decode_step(const torch::Tensor& zxbcdt, torch::Tensor& conv_state,
                              torch::Tensor& ssm_state, const SsdDecodeWeights& w,
                              const torch::Tensor& arrivals) {
  DeviceGuard guard(zxbcdt.device());
  const int64_t batch = conv_state.size(0), conv_dim = conv_state.size(1);
  const int64_t width = conv_state.size(2), heads = w.A.size(0), inner = w.norm_weight.size(0);
  // Conv weight [C, 1, W] viewed as [C, W]; a bias of another type brought to the weight's.
  const auto conv_w = w.conv_weight.reshape({conv_dim, width}).contiguous();
  const auto conv_b =
      w.conv_bias.defined() ? w.conv_bias.to(conv_w.scalar_type()).contiguous() : torch::Tensor();
  const auto a_f = as_float(w.A), d_f = as_float(w.D), bias_f = as_float(w.dt_bias);
  const auto norm_w = as_param(w.norm_weight);
  auto counters = arrivals;
  if (!counters.defined() || counters.scalar_type() != torch::kInt || !counters.is_contiguous() ||
      counters.numel() < batch || counters.device() != zxbcdt.device()) {
    counters = torch::zeros({batch}, zxbcdt.options().dtype(torch::kInt));
  }
  auto out = torch::empty({batch, inner}, zxbcdt.options());
  maybe_poison({out});
  // Per block sums of squares of the gated y, read by the sequence's last block.
  auto norm_partials =
      torch::empty({batch * heads * kernels::kSsdStepMaxSplits}, zxbcdt.options().dtype(torch::kFloat));

  kernels::SsdStepParams p;
  p.batch = static_cast<int>(batch);
  p.nheads = static_cast<int>(heads);
  p.headdim = static_cast<int>(ssm_state.size(2));
  p.dstate = static_cast<int>(ssm_state.size(3));
  p.ngroups = static_cast<int>(w.ngroups);
  p.width = static_cast<int>(width);
  p.norm_group_size = static_cast<int>(w.norm_group_size);
  p.z = zxbcdt.data_ptr();
  p.xbc = zxbcdt.narrow(1, inner, conv_dim).data_ptr();
  p.dt = zxbcdt.narrow(1, inner + conv_dim, heads).data_ptr();
  p.z_batch_stride = p.xbc_batch_stride = p.dt_batch_stride = zxbcdt.stride(0);
  p.conv_state = conv_state.data_ptr();
  p.conv_state_batch_stride = conv_state.stride(0);
  p.conv_state_c_stride = conv_state.stride(1);
  p.conv_state_type = elem_type(conv_state);
  p.conv_weight = conv_w.data_ptr();
  p.conv_bias = conv_b.defined() ? conv_b.data_ptr() : nullptr;
  p.conv_weight_type = elem_type(conv_w);
  p.ssm_state = ssm_state.data_ptr();
  p.ssm_state_type = elem_type(ssm_state);
  p.A = a_f.data_ptr<float>();
  p.D = d_f.defined() ? d_f.data_ptr<float>() : nullptr;
  p.dt_bias = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  p.d_per_channel = d_f.defined() && d_f.dim() == 2;
  p.dt_softplus = true;
  p.norm_weight = norm_w.data_ptr();
  p.norm_weight_type = elem_type(norm_w);
  p.eps = static_cast<float>(w.eps);
  p.norm_before_gate = w.norm_before_gate;
  p.out = out.data_ptr();
  p.arrivals = reinterpret_cast<unsigned*>(counters.data_ptr<int32_t>());
  p.norm_partials = norm_partials.data_ptr<float>();
  p.rows_in_flight = step_rows_in_flight();
  p.dependent_launch = dependent_launch_enabled();
  check_launch(kernels::ssd_step_cuda(p, elem_type(zxbcdt), current_stream()), "ssd_decode_step");
  return out;
}

}  // namespace aim::ops::AIM_OPS_CUDA_NS
