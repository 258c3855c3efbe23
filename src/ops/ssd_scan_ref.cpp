// Plain LibTorch SSD (Mamba2) scan: the oracle for the CUDA kernels, and the CPU path.
//
// Chunked algorithm (Dao & Gu 2024, "Transformers are SSMs", section 6): with chunk length T,
//   1. inside each chunk, y = (C B^T o L) (x dt) with L[i, j] = exp(sum_{k=j+1..i} dt_k A);
//   2. each chunk's final state from its own inputs;
//   3. states passed between chunks by a scan over the chunk totals;
//   4. each position reads the incoming state decayed to it.
// Everything runs in fp32. Segment sums are built by a masked cumsum and the non-causal
// triangle is set to -inf *before* exp: with dt*A near -6 per step, exp of the unmasked
// triangle overflows fp32 and its backward would give NaN.
#include <torch/torch.h>

#include "aim/ops/conv1d.h"
#include "aim/ops/norms.h"
#include "aim/ops/ssd_scan.h"
#include "ops/ssd_decode_parts.h"

namespace aim::ops::ref {

namespace {

using torch::indexing::Slice;

/// x [..., T] -> [..., T, T] with out[i, j] = sum_{k=j+1..i} x[k] for i >= j, -inf above.
torch::Tensor segsum(const torch::Tensor& x) {
  const int64_t t = x.size(-1);
  auto opts = torch::TensorOptions().dtype(torch::kBool).device(x.device());
  auto strict_lower = torch::tril(torch::ones({t, t}, opts), -1);
  auto lower = torch::tril(torch::ones({t, t}, opts), 0);
  std::vector<int64_t> shape = x.sizes().vec();
  shape.push_back(t);
  auto xr = x.unsqueeze(-1).expand(shape).masked_fill(strict_lower.logical_not(), 0.0);
  return xr.cumsum(-2).masked_fill(lower.logical_not(), -std::numeric_limits<float>::infinity());
}

torch::Tensor prepare_dt(const torch::Tensor& dt, const torch::Tensor& dt_bias, bool softplus) {
  auto d = dt.to(torch::kFloat);
  if (dt_bias.defined()) d = d + dt_bias.to(torch::kFloat);
  return softplus ? torch::softplus(d) : d;
}

/// D [H] or [H, P] broadcast against x [..., H, P].
torch::Tensor skip(const torch::Tensor& x, const torch::Tensor& D) {
  auto d = D.to(torch::kFloat);
  return d.dim() == 1 ? x * d.unsqueeze(-1) : x * d;
}

}  // namespace

SsdScanResult ssd_scan(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                       const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D,
                       const torch::Tensor& dt_bias, bool dt_softplus, int64_t chunk_size,
                       const torch::Tensor& initial_state, bool return_final_state) {
  const int64_t batch = x.size(0), len = x.size(1), heads = x.size(2), hdim = x.size(3);
  const int64_t groups = Bm.size(2), dstate = Bm.size(3);
  const int64_t t = chunk_size;
  const int64_t nchunks = (len + t - 1) / t;
  const int64_t pad = nchunks * t - len;

  auto xf = x.to(torch::kFloat);                              // [B, L, H, P]
  auto dtf = prepare_dt(dt, dt_bias, dt_softplus);            // [B, L, H]
  auto bh = Bm.to(torch::kFloat).repeat_interleave(heads / groups, 2);  // [B, L, H, N]
  auto ch = Cm.to(torch::kFloat).repeat_interleave(heads / groups, 2);  // [B, L, H, N]
  if (pad > 0) {
    // Padded steps have dt = 0 and x = 0: they leave the state unchanged.
    xf = torch::constant_pad_nd(xf, {0, 0, 0, 0, 0, pad});
    dtf = torch::constant_pad_nd(dtf, {0, 0, 0, pad});
    bh = torch::constant_pad_nd(bh, {0, 0, 0, 0, 0, pad});
    ch = torch::constant_pad_nd(ch, {0, 0, 0, 0, 0, pad});
  }
  auto xdt = (xf * dtf.unsqueeze(-1)).view({batch, nchunks, t, heads, hdim});   // [B, c, T, H, P]
  auto bc = bh.view({batch, nchunks, t, heads, dstate});                        // [B, c, T, H, N]
  auto cc = ch.view({batch, nchunks, t, heads, dstate});
  auto da = (dtf * A.to(torch::kFloat)).view({batch, nchunks, t, heads}).permute({0, 3, 1, 2});
  auto da_cs = da.cumsum(-1);                                                   // [B, H, c, T]

  // 1. Within chunks.
  auto decay = torch::exp(segsum(da)).permute({0, 2, 1, 3, 4});                 // [B, c, H, T, T]
  auto scores = torch::einsum("bclhn,bcshn->bchls", {cc, bc}) * decay;          // [B, c, H, T, T]
  auto y_diag = torch::einsum("bchls,bcshp->bclhp", {scores, xdt});             // [B, c, T, H, P]

  // 2. State of each chunk from its own inputs.
  auto decay_states = torch::exp(da_cs.narrow(-1, t - 1, 1) - da_cs);          // [B, H, c, T]
  auto b_decayed = bc * decay_states.permute({0, 2, 3, 1}).unsqueeze(-1);       // [B, c, T, H, N]
  auto states = torch::einsum("bclhn,bclhp->bchpn", {b_decayed, xdt});          // [B, c, H, P, N]

  // 3. Pass states across chunks.
  auto init = initial_state.defined()
                  ? initial_state.to(torch::kFloat).unsqueeze(1)
                  : torch::zeros({batch, 1, heads, hdim, dstate}, xf.options());
  states = torch::cat({init, states}, 1);                                       // [B, c+1, H, P, N]
  auto totals = torch::constant_pad_nd(da_cs.select(-1, t - 1), {1, 0});        // [B, H, c+1]
  auto decay_chunk = torch::exp(segsum(totals));                                // [B, H, c+1, c+1]
  auto passed = torch::einsum("bhzc,bchpn->bzhpn", {decay_chunk, states});      // [B, c+1, H, P, N]
  auto incoming = passed.narrow(1, 0, nchunks);

  // 4. Incoming state read out at each position.
  auto out_decay = torch::exp(da_cs).permute({0, 2, 3, 1}).unsqueeze(-1);       // [B, c, T, H, 1]
  auto y_off = torch::einsum("bclhn,bchpn->bclhp", {cc, incoming}) * out_decay;

  auto y = (y_diag + y_off).reshape({batch, nchunks * t, heads, hdim}).narrow(1, 0, len);
  if (D.defined()) y = y + skip(x.to(torch::kFloat), D);
  SsdScanResult result;
  result.y = y.to(x.scalar_type());
  if (return_final_state) result.final_state = passed.select(1, nchunks);
  return result;
}

namespace {
/// One step of the recurrence without touching `state`: returns {y [B, H, P], next state}.
std::pair<torch::Tensor, torch::Tensor> ssd_step(const torch::Tensor& state, const torch::Tensor& x,
                                                 const torch::Tensor& dt, const torch::Tensor& A,
                                                 const torch::Tensor& Bm, const torch::Tensor& Cm,
                                                 const torch::Tensor& D,
                                                 const torch::Tensor& dt_bias, bool dt_softplus) {
  const int64_t heads = x.size(1), groups = Bm.size(1);
  auto xf = x.to(torch::kFloat);                                         // [B, H, P]
  auto dtf = prepare_dt(dt, dt_bias, dt_softplus);                       // [B, H]
  auto bh = Bm.to(torch::kFloat).repeat_interleave(heads / groups, 1);   // [B, H, N]
  auto ch = Cm.to(torch::kFloat).repeat_interleave(heads / groups, 1);
  auto da = torch::exp(dtf * A.to(torch::kFloat));                       // [B, H]
  auto next = state.to(torch::kFloat) * da.unsqueeze(-1).unsqueeze(-1) +
              (xf * dtf.unsqueeze(-1)).unsqueeze(-1) * bh.unsqueeze(2);  // [B, H, P, N]
  auto y = (next * ch.unsqueeze(2)).sum(-1);                             // [B, H, P]
  if (D.defined()) y = y + skip(xf, D);
  return {y.to(x.scalar_type()), next};
}
}  // namespace

SsdScanResult ssd_scan_sequential(const torch::Tensor& x, const torch::Tensor& dt,
                                  const torch::Tensor& A, const torch::Tensor& Bm,
                                  const torch::Tensor& Cm, const torch::Tensor& D,
                                  const torch::Tensor& dt_bias, bool dt_softplus,
                                  const torch::Tensor& initial_state) {
  const int64_t batch = x.size(0), len = x.size(1), heads = x.size(2), hdim = x.size(3);
  const int64_t dstate = Bm.size(3);
  auto state = initial_state.defined()
                   ? initial_state.to(torch::kFloat)
                   : torch::zeros({batch, heads, hdim, dstate}, x.options().dtype(torch::kFloat));
  std::vector<torch::Tensor> ys;
  ys.reserve(len);
  for (int64_t i = 0; i < len; ++i) {
    torch::Tensor y;
    std::tie(y, state) = ssd_step(state, x.select(1, i), dt.select(1, i), A, Bm.select(1, i),
                                  Cm.select(1, i), D, dt_bias, dt_softplus);
    ys.push_back(y);
  }
  SsdScanResult result;
  result.y = torch::stack(ys, 1);
  result.final_state = state;
  return result;
}

torch::Tensor ssd_state_update(torch::Tensor& state, const torch::Tensor& x,
                               const torch::Tensor& dt, const torch::Tensor& A,
                               const torch::Tensor& Bm, const torch::Tensor& Cm,
                               const torch::Tensor& D, const torch::Tensor& dt_bias,
                               bool dt_softplus) {
  auto [y, next] = ssd_step(state, x, dt, A, Bm, Cm, D, dt_bias, dt_softplus);
  state.copy_(next);
  return y;
}

torch::Tensor ssd_decode_step(const torch::Tensor& zxbcdt, torch::Tensor& conv_state,
                              torch::Tensor& ssm_state, const SsdDecodeWeights& w) {
  const auto shape = detail::check_ssd_decode_step(zxbcdt, conv_state, ssm_state, w);
  return detail::ssd_decode_step_parts(shape, zxbcdt, conv_state, ssm_state, w,
                                       ref::causal_conv1d_update, ref::ssd_state_update,
                                       ref::gated_rms_norm);
}

}  // namespace aim::ops::ref
