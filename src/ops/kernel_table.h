#pragma once
// The CUDA adapters' entry points as a table of functions: what dispatch calls for CPU tensors
// when a table is installed (aim/ops/dispatch.h, set_emulated_kernels). tests/emu installs the
// CUDA kernels run by its CPU emulator (the adapters built in aim::ops::cuda_emu), so models,
// mixers and the sampler run through the kernel code in CI, where there is no GPU. The
// signatures are those of ops/*_cuda.h.
#include <torch/types.h>

#include <cstdint>
#include <utility>

#include "aim/ops/selective_scan.h"
#include "aim/ops/ssd_scan.h"

namespace aim::ops {

struct KernelTable {
  // conv1d
  bool (*causal_conv1d_supported)(const torch::Tensor& x, const torch::Tensor& weight,
                                  const torch::Tensor& bias);
  torch::Tensor (*causal_conv1d)(const torch::Tensor& x, const torch::Tensor& weight,
                                 const torch::Tensor& bias, bool silu);
  bool (*causal_conv1d_update_supported)(const torch::Tensor& x, const torch::Tensor& conv_state,
                                         const torch::Tensor& weight, const torch::Tensor& bias);
  torch::Tensor (*causal_conv1d_update)(const torch::Tensor& x, torch::Tensor& conv_state,
                                        const torch::Tensor& weight, const torch::Tensor& bias,
                                        bool silu);
  // linear
  bool (*linear_supported)(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);
  torch::Tensor (*linear)(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);
  // loss
  bool (*linear_cross_entropy_supported)(const torch::Tensor& hidden, const torch::Tensor& weight,
                                         const torch::Tensor& targets);
  torch::Tensor (*linear_cross_entropy)(const torch::Tensor& hidden, const torch::Tensor& weight,
                                        const torch::Tensor& targets, int64_t ignore_index,
                                        int64_t chunk_rows);
  // norms
  bool (*add_rms_norm_supported)(const torch::Tensor& hidden, const torch::Tensor& residual,
                                 const torch::Tensor& weight, const torch::Tensor& shift,
                                 const torch::Tensor& scale, const torch::Tensor& hidden_gate);
  std::pair<torch::Tensor, torch::Tensor> (*add_rms_norm_modulate)(
      const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight,
      double eps, bool residual_in_fp32, const torch::Tensor& shift, const torch::Tensor& scale,
      const torch::Tensor& hidden_gate);
  bool (*add_rms_norm_linear_supported)(
      const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight,
      const torch::Tensor& shift, const torch::Tensor& scale, const torch::Tensor& hidden_gate,
      const torch::Tensor& linear_weight, const torch::Tensor& linear_bias);
  std::pair<torch::Tensor, torch::Tensor> (*add_rms_norm_modulate_linear)(
      const torch::Tensor& hidden, const torch::Tensor& residual, const torch::Tensor& weight,
      double eps, bool residual_in_fp32, const torch::Tensor& shift, const torch::Tensor& scale,
      const torch::Tensor& hidden_gate, const torch::Tensor& linear_weight,
      const torch::Tensor& linear_bias);
  bool (*gated_rms_norm_supported)(const torch::Tensor& x, const torch::Tensor& z,
                                   const torch::Tensor& weight, int64_t group_size);
  torch::Tensor (*gated_rms_norm)(const torch::Tensor& x, const torch::Tensor& z,
                                  const torch::Tensor& weight, int64_t group_size, double eps,
                                  bool norm_before_gate);
  // sampling
  bool (*sample_tokens_keyed_supported)(const torch::Tensor& cond, const torch::Tensor& uncond,
                                        double temperature, int64_t top_k, double top_p);
  torch::Tensor (*sample_tokens_keyed)(const torch::Tensor& cond, const torch::Tensor& uncond,
                                       double cfg, double temperature, int64_t top_k,
                                       double top_p, uint64_t seed,
                                       const torch::Tensor& sample_ids, int64_t step_value,
                                       const torch::Tensor& step, const torch::Tensor& uniforms);
  // Mamba1
  bool (*selective_scan_supported)(const torch::Tensor& u, const torch::Tensor& delta,
                                   const torch::Tensor& A, const torch::Tensor& Bm,
                                   const torch::Tensor& Cm, const torch::Tensor& D,
                                   const torch::Tensor& z, const torch::Tensor& delta_bias,
                                   const torch::Tensor& initial_state);
  SelectiveScanResult (*selective_scan)(const torch::Tensor& u, const torch::Tensor& delta,
                                        const torch::Tensor& A, const torch::Tensor& Bm,
                                        const torch::Tensor& Cm, const torch::Tensor& D,
                                        const torch::Tensor& z, const torch::Tensor& delta_bias,
                                        bool delta_softplus, const torch::Tensor& initial_state,
                                        bool return_last_state);
  bool (*selective_state_update_supported)(const torch::Tensor& state, const torch::Tensor& u,
                                           const torch::Tensor& delta, const torch::Tensor& A,
                                           const torch::Tensor& Bm, const torch::Tensor& Cm,
                                           const torch::Tensor& D, const torch::Tensor& z,
                                           const torch::Tensor& delta_bias);
  torch::Tensor (*selective_state_update)(torch::Tensor& state, const torch::Tensor& u,
                                          const torch::Tensor& delta, const torch::Tensor& A,
                                          const torch::Tensor& Bm, const torch::Tensor& Cm,
                                          const torch::Tensor& D, const torch::Tensor& z,
                                          const torch::Tensor& delta_bias, bool delta_softplus);
  // Mamba2
  bool (*ssd_scan_supported)(const torch::Tensor& x, const torch::Tensor& dt,
                             const torch::Tensor& A, const torch::Tensor& Bm,
                             const torch::Tensor& Cm, const torch::Tensor& D,
                             const torch::Tensor& dt_bias, const torch::Tensor& initial_state);
  SsdScanResult (*ssd_scan)(const torch::Tensor& x, const torch::Tensor& dt,
                            const torch::Tensor& A, const torch::Tensor& Bm,
                            const torch::Tensor& Cm, const torch::Tensor& D,
                            const torch::Tensor& dt_bias, bool dt_softplus,
                            const torch::Tensor& initial_state, bool return_final_state);
  bool (*ssd_state_update_supported)(const torch::Tensor& state, const torch::Tensor& x,
                                     const torch::Tensor& Bm, const torch::Tensor& D);
  torch::Tensor (*ssd_state_update)(torch::Tensor& state, const torch::Tensor& x,
                                    const torch::Tensor& dt, const torch::Tensor& A,
                                    const torch::Tensor& Bm, const torch::Tensor& Cm,
                                    const torch::Tensor& D, const torch::Tensor& dt_bias,
                                    bool dt_softplus);
  bool (*ssd_decode_step_supported)(const torch::Tensor& zxbcdt, const torch::Tensor& conv_state,
                                    const torch::Tensor& ssm_state, const SsdDecodeWeights& w);
  torch::Tensor (*ssd_decode_step)(const torch::Tensor& zxbcdt, torch::Tensor& conv_state,
                                   torch::Tensor& ssm_state, const SsdDecodeWeights& w,
                                   const torch::Tensor& arrivals);
};

/// The installed table when `t` is a CPU tensor and the CUDA kernels are enabled; else null.
const KernelTable* emulated_kernels_for(const torch::Tensor& t);

}  // namespace aim::ops
