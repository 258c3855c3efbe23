// Plain LibTorch Mamba1 selective scan, one step at a time over the sequence: the oracle for
// the CUDA kernels and the CPU path. fp32 throughout.
#include <torch/torch.h>

#include "aim/ops/selective_scan.h"

namespace aim::ops::ref {

namespace {
torch::Tensor prepare_delta(const torch::Tensor& delta, const torch::Tensor& bias, bool softplus) {
  auto d = delta.to(torch::kFloat);
  if (bias.defined()) {
    // bias [E] against delta [B, E, L] or [B, E].
    auto b = bias.to(torch::kFloat);
    d = d + (delta.dim() == 3 ? b.view({1, -1, 1}) : b.view({1, -1}));
  }
  return softplus ? torch::softplus(d) : d;
}
}  // namespace

SelectiveScanResult selective_scan(const torch::Tensor& u, const torch::Tensor& delta,
                                   const torch::Tensor& A, const torch::Tensor& Bm,
                                   const torch::Tensor& Cm, const torch::Tensor& D,
                                   const torch::Tensor& z, const torch::Tensor& delta_bias,
                                   bool delta_softplus, const torch::Tensor& initial_state,
                                   bool return_last_state) {
  const int64_t batch = u.size(0), channels = u.size(1), len = u.size(2), dstate = A.size(1);
  auto uf = u.to(torch::kFloat);
  auto d = prepare_delta(delta, delta_bias, delta_softplus);                 // [B, E, L]
  auto af = A.to(torch::kFloat);                                            // [E, N]
  auto delta_a = torch::exp(d.unsqueeze(-1) * af.unsqueeze(1));            // [B, E, L, N]
  auto bf = Bm.to(torch::kFloat).transpose(1, 2).unsqueeze(1);              // [B, 1, L, N]
  auto cf = Cm.to(torch::kFloat).transpose(1, 2).unsqueeze(1);              // [B, 1, L, N]
  auto delta_bu = (d * uf).unsqueeze(-1) * bf;                              // [B, E, L, N]
  auto state = initial_state.defined()
                   ? initial_state.to(torch::kFloat)
                   : torch::zeros({batch, channels, dstate}, uf.options());
  std::vector<torch::Tensor> ys;
  ys.reserve(len);
  for (int64_t i = 0; i < len; ++i) {
    state = delta_a.select(2, i) * state + delta_bu.select(2, i);
    ys.push_back((state * cf.select(2, i)).sum(-1));                        // [B, E]
  }
  auto y = torch::stack(ys, 2);                                             // [B, E, L]
  if (D.defined()) y = y + uf * D.to(torch::kFloat).view({1, -1, 1});
  if (z.defined()) y = y * torch::silu(z.to(torch::kFloat));
  SelectiveScanResult result;
  result.y = y.to(u.scalar_type());
  if (return_last_state) result.last_state = state;
  return result;
}

torch::Tensor selective_state_update(torch::Tensor& state, const torch::Tensor& u,
                                     const torch::Tensor& delta, const torch::Tensor& A,
                                     const torch::Tensor& Bm, const torch::Tensor& Cm,
                                     const torch::Tensor& D, const torch::Tensor& z,
                                     const torch::Tensor& delta_bias, bool delta_softplus) {
  auto uf = u.to(torch::kFloat);                                            // [B, E]
  auto d = prepare_delta(delta, delta_bias, delta_softplus);                // [B, E]
  auto delta_a = torch::exp(d.unsqueeze(-1) * A.to(torch::kFloat));        // [B, E, N]
  auto next = state.to(torch::kFloat) * delta_a +
              (d * uf).unsqueeze(-1) * Bm.to(torch::kFloat).unsqueeze(1);   // [B, E, N]
  state.copy_(next);
  auto y = (next * Cm.to(torch::kFloat).unsqueeze(1)).sum(-1);              // [B, E]
  if (D.defined()) y = y + uf * D.to(torch::kFloat);
  if (z.defined()) y = y * torch::silu(z.to(torch::kFloat));
  return y.to(u.scalar_type());
}

}  // namespace aim::ops::ref
