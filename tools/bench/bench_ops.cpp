// Per-op speed of the hand-written kernels against the plain LibTorch references (ops::ref,
// selected with ops::set_cuda_kernels(false) / set_cpu_kernels(false)) at a config's training
// shapes, forward and forward + backward: median time, achieved bandwidth over the fewest bytes
// the op must move, that bandwidth as a share of a copy measured in the same run on the same
// device, and the speed-up over the reference. Ops without a kernel on the device are timed on
// the reference alone.
//
//   bench_ops [CONFIG.yaml] [--micro B] [--repeats N] [--dtype bf16|fp32] [--device cuda|cpu]
//             [--only TEXT] [--no-ref]
//
// --only TEXT times only the ops whose name contains TEXT (or one of several: "A|B"); --no-ref
// skips the references (for profiling a kernel alone).
//
// The device defaults to cuda when a GPU is visible, else cpu (intra-op threads: OMP_NUM_THREADS).
//
// The one-token ops of sampling (rows marked "graph") take a few microseconds on a GPU, less
// than the host needs to launch them one by one; there they are timed as sampling runs them:
// one call captured in a CUDA graph, replayed, timed with CUDA events, with the L2 cache flushed
// before each replay (in sampling the other layers' weights pass through L2 between two calls of
// one layer's op: operands found in L2 would flatter the bandwidth).
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "aim/core/config.h"
#include "aim/core/env.h"
#include "aim/ops/conv1d.h"
#include "aim/ops/dispatch.h"
#include "aim/ops/linear.h"
#include "aim/ops/loss.h"
#include "aim/ops/norms.h"
#include "aim/ops/selective_scan.h"
#include "aim/ops/ssd_scan.h"
#include "aim/sample/generate.h"
#include "bench_flags.h"

#ifdef AIM_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace {

using Clock = std::chrono::steady_clock;
using aim::ScopedEnv;

torch::Device g_device = torch::kCPU;

void sync() {
  if (g_device.is_cuda()) torch::cuda::synchronize();
}

/// Kernels on or off for the benchmarked device.
void set_kernels(bool on) {
  if (g_device.is_cuda()) aim::ops::set_cuda_kernels(on);
  else aim::ops::set_cpu_kernels(on);
}

/// Median over `repeats` of the mean time of 10 back-to-back calls, in milliseconds.
double median_ms(const std::function<void()>& f, int repeats) {
  for (int i = 0; i < 3; ++i) f();
  sync();
  std::vector<double> t;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = Clock::now();
    for (int i = 0; i < 10; ++i) f();
    sync();
    t.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / 10.0);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

/// Copy bandwidth on the device (bytes read + written per second): 1 GiB buffers on a GPU,
/// 256 MiB (far beyond the caches) on the CPU.
double copy_bandwidth(int repeats) {
  const int64_t n = g_device.is_cuda() ? (int64_t{1} << 28) : (int64_t{1} << 26);
  auto a = torch::rand({n}, torch::dtype(torch::kFloat).device(g_device));
  auto b = torch::empty_like(a);
  const double ms = median_ms([&] { b.copy_(a); }, repeats);
  return 2.0 * a.numel() * 4 / (ms * 1e-3);
}

/// On a GPU: one call of `f` captured in a CUDA graph (on a side stream, after warm-up calls
/// there), the median over `repeats` of a replay's time by CUDA events, each replay after a write
/// of twice the L2 cache's size (which also keeps the device busy while the replay is submitted,
/// so the events time the device, not the launch). Elsewhere, or when capture fails (said on
/// stderr), median_ms.
double median_graph_ms(const std::function<void()>& f, int repeats) {
#ifdef AIM_WITH_CUDA
  if (g_device.is_cuda()) {
    try {
      const auto index = c10::cuda::current_device();
      auto side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index);
      std::vector<double> t;
      {
        c10::cuda::CUDAStreamGuard on_side(side);
        const int64_t l2 = at::cuda::getCurrentDeviceProperties()->l2CacheSize;
        auto flush = torch::empty({std::max<int64_t>(2 * l2, int64_t{64} << 20) / 4},
                                  torch::dtype(torch::kFloat).device(g_device));
        for (int i = 0; i < 3; ++i) f();
        side.synchronize();
        at::cuda::CUDAGraph graph;
        aim::capture_graph(graph, [&] { f(); });
        graph.replay();
        at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
        for (int r = 0; r < repeats; ++r) {
          flush.zero_();
          start.record(side);
          graph.replay();
          stop.record(side);
          stop.synchronize();
          t.push_back(start.elapsed_time(stop));
        }
        side.synchronize();
      }
      std::sort(t.begin(), t.end());
      return t[t.size() / 2];
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench_ops: graph capture failed (%s); timed call by call\n", e.what());
    }
  }
#endif
  return median_ms(f, repeats);
}

struct Row {
  std::string op;
  double bytes;
  std::function<void()> run;
  bool has_kernel = true;  // false: no kernel on the device, the reference alone is timed
  double flops = 0;        // > 0 for matmul-bound ops: TFLOP/s is printed too
  bool graph = false;      // a one-token op of sampling: timed in a CUDA graph on a GPU
  bool ref_timed = true;   // false: a variant of the row above it, its reference not timed again
};

/// Whether --only's TEXT (empty: every op; "A|B": any of A and B) selects the op.
bool selected(const std::string& op, const std::string& only) {
  if (only.empty()) return true;
  size_t from = 0;
  while (true) {
    const size_t bar = only.find('|', from);
    const std::string part = only.substr(from, bar == std::string::npos ? std::string::npos : bar - from);
    if (!part.empty() && op.find(part) != std::string::npos) return true;
    if (bar == std::string::npos) return false;
    from = bar + 1;
  }
}

/// Ops with a CPU kernel (the rest run their reference on the CPU either way).
bool has_cpu_kernel(const std::string& op) {
  return op == "ssd_scan fwd" || op == "ssd_scan fwd+bwd" || op == "causal_conv1d fwd" ||
         op == "causal_conv1d fwd+bwd" || op.rfind("gated_rms_norm", 0) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Each row as it is measured: a run stopped at a time limit keeps what it printed.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::string config_path = "configs/aim_l.yaml", dtype_name = "bf16", device_name, only;
  bool no_ref = false;
  int64_t micro = 64;
  int repeats = 20;
  constexpr const char* kUsage =
      "bench_ops [CONFIG.yaml] [--micro B] [--repeats N] [--dtype bf16|fp32] [--device cuda|cpu] "
      "[--only TEXT] [--no-ref]";
  try {
    aim::bench::FlagReader flags("bench_ops", kUsage, argc, argv);
    while (flags.next()) {
      if (flags.is("--micro")) micro = flags.integer(1);
      else if (flags.is("--repeats")) repeats = static_cast<int>(flags.integer(1));
      else if (flags.is("--dtype")) dtype_name = flags.choice("bf16|fp32");
      else if (flags.is("--device")) device_name = flags.choice("cuda|cpu");
      else if (flags.is("--only")) only = flags.value();
      else if (flags.is("--no-ref")) no_ref = true;
      else if (flags.positional()) config_path = flags.arg();
      else flags.unknown();
    }
  } catch (const aim::bench::FlagError& e) {
    return aim::bench::flags_failed(e, kUsage);
  }
  if (device_name.empty()) device_name = torch::cuda::is_available() ? "cuda" : "cpu";
  if (device_name == "cuda" && !torch::cuda::is_available()) {
    std::fprintf(stderr, "bench_ops: --device cuda: no GPU visible\n");
    return 1;
  }
  g_device = device_name == "cuda" ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  try {
    const auto cfg = aim::load_config(config_path);
    const auto& m = cfg.model;
    const auto dtype = dtype_name == "bf16" ? torch::kBFloat16 : torch::kFloat;
    const double elem = dtype == torch::kBFloat16 ? 2.0 : 4.0;
    const auto opts = torch::dtype(dtype).device(g_device);
    const auto fopts = torch::dtype(torch::kFloat).device(g_device);
    // L: the positions a training step runs (the class slot and num_tokens - 1 inputs; the loss
    // needs no logits after the last token).
    const int64_t B = micro, L = m.num_tokens, D = m.d_model;
    const int64_t d_inner = m.d_inner();
    const int64_t conv_dim = d_inner + 2 * m.ssm.ngroups * m.ssm.d_state;
    const int64_t width = m.ssm.d_conv;
    const double bw = copy_bandwidth(g_device.is_cuda() ? repeats : 3);

    // Causal conv1d as the Mamba2 mixer calls it: channel-last slice of the in_proj output.
    auto proj = torch::randn({B, L, conv_dim + 2 * d_inner}, opts);
    auto x = proj.narrow(2, d_inner, conv_dim).transpose(1, 2).detach().requires_grad_(true);
    auto w = (torch::randn({conv_dim, 1, width}, fopts) * 0.3).requires_grad_(true);
    auto bias = (torch::randn({conv_dim}, fopts) * 0.1).requires_grad_(true);
    auto g = torch::randn({B, conv_dim, L}, opts);
    const double n = static_cast<double>(B * conv_dim * L);

    std::vector<Row> rows;
    rows.push_back({"causal_conv1d fwd", 2 * n * elem, [&] {
                      torch::NoGradGuard ng;
                      aim::ops::causal_conv1d(x, w, bias, true);
                    }});
    rows.push_back({"causal_conv1d fwd+bwd", 5 * n * elem, [&] {
                      auto out = aim::ops::causal_conv1d(x, w, bias, true).first;
                      auto grads = torch::autograd::grad({out}, {x, w, bias}, {g});
                    }});
    // The one-token update of sampling: 32 sequences, x a slice of the in_proj output, the
    // weights in the model's dtype, the fp32 conv state the sampler keeps (read and written).
    const int64_t Bu = 32;
    auto ux = torch::randn({Bu, conv_dim + 2 * d_inner}, opts).narrow(1, d_inner, conv_dim);
    auto ustate = torch::randn({Bu, conv_dim, width}, fopts);
    auto uw = w.detach().to(dtype), ubias = bias.detach().to(dtype);
    rows.push_back({"causal_conv1d_update (B=32)",
                    2.0 * Bu * conv_dim * width * 4 + 2.0 * Bu * conv_dim * elem, [&] {
                      torch::NoGradGuard ng_guard;
                      aim::ops::causal_conv1d_update(ux, ustate, uw, ubias, true);
                    }, true, 0, true});

    // The block's residual add + RMSNorm + adaLN modulate (bf16 hidden, fp32 residual) and
    // Mamba2's gated RMSNorm, as in training. Bytes: forward reads hidden and residual and
    // writes both outputs; backward reads dy, dresidual' and residual', writes two gradients
    // (gated: x, z, y forward; dy, x, z, dx, dz backward).
    auto nh = torch::randn({B, L, D}, opts).requires_grad_(true);
    auto nres = torch::randn({B, L, D}, fopts).requires_grad_(true);
    auto nw = torch::rand({D}, fopts).add_(0.5).requires_grad_(true);
    auto nshift = (torch::randn({B, D}, opts) * 0.1).requires_grad_(true);
    auto nscale = (torch::randn({B, D}, opts) * 0.1).requires_grad_(true);
    auto ng = torch::randn({B, L, D}, opts), nrg = torch::randn({B, L, D}, fopts);
    const double nd = static_cast<double>(B * L * D);
    rows.push_back({"add_rms_norm_modulate fwd", nd * (elem + 4 + 4 + elem), [&] {
                      torch::NoGradGuard ng_guard;
                      aim::ops::add_rms_norm_modulate(nh, nres, nw, 1e-5, true, nshift, nscale);
                    }});
    rows.push_back({"add_rms_norm_modulate fwd+bwd", nd * (4 * elem + 20),
                    [&] {
                      auto [out, res] = aim::ops::add_rms_norm_modulate(nh, nres, nw, 1e-5, true, nshift, nscale);
                      auto grads = torch::autograd::grad({out, res}, {nh, nres, nw, nshift, nscale}, {ng, nrg});
                    }});
    auto gx = torch::randn({B, L, d_inner}, opts).requires_grad_(true);
    auto gz = torch::randn({B, L, d_inner}, opts).requires_grad_(true);
    auto gw = torch::rand({d_inner}, fopts).add_(0.5).requires_grad_(true);
    auto gg = torch::randn({B, L, d_inner}, opts);
    const double gd = static_cast<double>(B * L * d_inner);
    const int64_t group = d_inner / m.ssm.ngroups;
    rows.push_back({"gated_rms_norm fwd+bwd", gd * elem * 8, [&] {
                      auto y = aim::ops::gated_rms_norm(gx, gz, gw, group, 1e-5, false);
                      auto grads = torch::autograd::grad({y}, {gx, gz, gw}, {gg});
                    }});

    // lm_head + cross-entropy over the training tokens (matmul-bound: 3 products of
    // [tokens, D] x [D, V]); bytes = the logits written once and read once in bf16.
    const int64_t V = m.vocab_size, T = B * m.num_tokens;
    auto lh = torch::randn({T, D}, opts).requires_grad_(true);
    auto lw = (torch::randn({V, D}, fopts) * 0.02).requires_grad_(true);
    auto lt = torch::randint(0, V, {T}, torch::dtype(torch::kLong).device(g_device));
    Row xent{"lm_head+xent fwd+bwd", 2.0 * T * V * 2, [&] {
               auto loss = aim::ops::linear_cross_entropy(lh, lw, lt);
               auto grads = torch::autograd::grad({loss}, {lh, lw});
             }};
    xent.flops = 6.0 * T * V * D;
    rows.push_back(xent);

    // The Mamba2 SSD scan: the kernels (chunks of kernels::kSsdChunk = 32, tensor cores in
    // bf16) against the reference at the config's chunk, forward and forward + backward; then
    // the reference alone for the config's chunk and a shorter one (257 tokens in chunks of 256
    // pad to 512).
    const int64_t H = d_inner / m.ssm.headdim, P = m.ssm.headdim, G = m.ssm.ngroups, N = m.ssm.d_state;
    auto sx = torch::randn({B, L, H, P}, opts).requires_grad_(true);
    auto sdt = torch::randn({B, L, H}, opts).requires_grad_(true);
    auto sA = (-torch::rand({H}, fopts) * 8 - 1).requires_grad_(true);
    auto sB = torch::randn({B, L, G, N}, opts).requires_grad_(true);
    auto sC = torch::randn({B, L, G, N}, opts).requires_grad_(true);
    auto sD = torch::ones({H}, fopts).requires_grad_(true);
    auto sbias = torch::zeros({H}, fopts).requires_grad_(true);
    auto sg = torch::randn({B, L, H, P}, opts);
    const double ssd_bytes = (2.0 * B * L * H * P + 2.0 * B * L * G * N + B * L * H) * elem;
    // Matrix-product FLOPs of the kernels per (sequence, head, chunk of T = Tc = 32): forward
    // 2T(TN + TP) intra-chunk + 2TNP read-out + 2PTN state update; backward 2PTN (state
    // recompute) + 2T(3TN + 2TP) (C B^T, dY X^T, dX, the masked parts of dB and dC) +
    // 2TNP x 5 (C S^T, B dS^T, the two state terms of dB and dC, dS).
    const double Tc = 32, chunks = std::ceil(static_cast<double>(L) / Tc);
    const double per_chunk_fwd = 2 * Tc * (Tc * N + Tc * P) + 4 * Tc * N * P;
    const double per_chunk_bwd = 2 * P * Tc * N + 2 * Tc * (3 * Tc * N + 2 * Tc * P) + 10 * Tc * N * P;
    const double ssd_units = static_cast<double>(B) * H * chunks;
    Row ssd_fwd{"ssd_scan fwd", ssd_bytes, [&] {
                  torch::NoGradGuard ng_guard;
                  aim::ops::ssd_scan(sx, sdt, sA, sB, sC, sD, sbias, true, m.ssm.chunk_size);
                }};
    ssd_fwd.flops = ssd_units * per_chunk_fwd;
    rows.push_back(ssd_fwd);
    Row ssd_fwd_bwd{"ssd_scan fwd+bwd", 2.5 * ssd_bytes, [&] {
                      auto y = aim::ops::ssd_scan(sx, sdt, sA, sB, sC, sD, sbias, true, m.ssm.chunk_size).y;
                      auto grads = torch::autograd::grad({y}, {sx, sdt, sA, sB, sC, sD, sbias}, {sg});
                    }};
    ssd_fwd_bwd.flops = ssd_units * (per_chunk_fwd + per_chunk_bwd);
    rows.push_back(ssd_fwd_bwd);
    // The kernels that keep the state in shared memory instead of the register-state ones
    // (kernels/ssd_scan_{fwd,bwd}_regs_kernel.cuh).
    Row tiles_fwd{"ssd_scan fwd, tiles kernels", ssd_bytes, [&] {
                    const ScopedEnv tiles("AIM_SSD_SCAN", "tiles");
                    torch::NoGradGuard ng_guard;
                    aim::ops::ssd_scan(sx, sdt, sA, sB, sC, sD, sbias, true, m.ssm.chunk_size);
                  }};
    tiles_fwd.flops = ssd_fwd.flops;
    tiles_fwd.ref_timed = false;
    if (g_device.is_cuda()) rows.push_back(tiles_fwd);
    // fwd+bwd with the kernels chosen by an environment variable (GPU only; no reference row).
    auto env_fwd_bwd = [&](const std::string& name, const char* var, const std::string& value) {
      Row r{"ssd_scan fwd+bwd, " + name, 2.5 * ssd_bytes, [&, var, value] {
              const ScopedEnv env(var, value);
              auto y = aim::ops::ssd_scan(sx, sdt, sA, sB, sC, sD, sbias, true, m.ssm.chunk_size).y;
              auto grads = torch::autograd::grad({y}, {sx, sdt, sA, sB, sC, sD, sbias}, {sg});
            }};
      r.flops = ssd_fwd_bwd.flops;
      r.ref_timed = false;
      if (g_device.is_cuda()) rows.push_back(r);
    };
    env_fwd_bwd("tiles kernels", "AIM_SSD_SCAN", "tiles");
    // The register backward with a block per slice (h, P tile), where by default a block adds
    // two slices' dB / dC before writing them (half the partial slices).
    env_fwd_bwd("unpaired", "AIM_SSD_BWD_PAIRS", "0");
    // The backward's thread block clusters over heads (kernels/ssd_scan.h; the default is none,
    // and a cluster runs the shared-memory kernels): K heads' dB / dC added per partial slice.
    for (int kc : {2, 4, 8}) env_fwd_bwd("bwd cluster " + std::to_string(kc), "AIM_SSD_BWD_CLUSTER", std::to_string(kc));
    // The kernels' tiles loaded element by element (what they do when the inputs are not on
    // 16-byte boundaries) instead of in 16-byte vectors.
    env_fwd_bwd("element loads", "AIM_SSD_ELEMENT_LOADS", "1");
    for (int64_t chunk : {m.ssm.chunk_size, int64_t{64}}) {
      rows.push_back({"ssd_scan fwd+bwd ref, chunk " + std::to_string(chunk), 2.5 * ssd_bytes,
                      [&, chunk] {
                        auto y = aim::ops::ssd_scan(sx, sdt, sA, sB, sC, sD, sbias, true, chunk).y;
                        auto grads = torch::autograd::grad({y}, {sx, sdt, sA, sB, sC, sD, sbias}, {sg});
                      },
                      false});
    }

    // Mamba2's one-token step of sampling at 32 sequences (16 images with guidance): the state
    // update alone, then conv update + state update + gated norm fused in one launch and as the
    // three kernels one after the other. Bytes: the fp32 ssm and conv states read and written,
    // the in_proj row read, y (or the normed output) written.
    const int64_t Bd = 32, Ed = H * P;
    auto dzx = torch::randn({Bd, Ed + conv_dim + H}, opts);
    dzx.narrow(1, Ed + conv_dim, H).mul_(0.5);
    auto dconv = torch::randn({Bd, conv_dim, width}, fopts);
    auto dssm = torch::randn({Bd, H, P, N}, fopts);
    aim::ops::SsdDecodeWeights dw{w.detach().to(dtype), bias.detach().to(dtype), sA.detach(),
                                  sD.detach(), (torch::rand({H}, fopts) * 3 - 6), torch::ones({Ed}, opts),
                                  G, Ed / G, 1e-5, false};
    auto arrivals = torch::zeros({Bd}, torch::dtype(torch::kInt).device(g_device));
    const double state_rw = 2.0 * Bd * H * P * N * 4;
    const double step_bytes = state_rw + 2.0 * Bd * conv_dim * width * 4 +
                              Bd * (Ed + conv_dim + H) * elem + Bd * Ed * elem;
    auto dx = dzx.narrow(1, Ed, Ed).reshape({Bd, H, P}), ddt = dzx.narrow(1, Ed + conv_dim, H);
    auto dB = dzx.narrow(1, 2 * Ed, G * N).reshape({Bd, G, N});
    auto dC = dzx.narrow(1, 2 * Ed + G * N, G * N).reshape({Bd, G, N});
    rows.push_back({"ssd_state_update (B=32)", state_rw + 2.0 * Bd * Ed * elem, [&] {
                      torch::NoGradGuard ng_guard;
                      aim::ops::ssd_state_update(dssm, dx, ddt, dw.A, dB, dC, dw.D, dw.dt_bias, true);
                    }, true, 0, true});
    rows.push_back({"ssd_decode_step (B=32)", step_bytes, [&] {
                      torch::NoGradGuard ng_guard;
                      aim::ops::ssd_decode_step(dzx, dconv, dssm, dw, arrivals);
                    }, true, 0, true});
    // One image with guidance (2 sequences): the kernel splits each head over blocks so that the
    // device is covered; its time here is its chain of dependent reads, not its bytes.
    {
      const double s2 = 2.0 / static_cast<double>(Bd);
      auto zx2 = dzx.narrow(0, 0, 2), conv2 = dconv.narrow(0, 0, 2), ssm2 = dssm.narrow(0, 0, 2);
      rows.push_back({"ssd_decode_step (B=2)", step_bytes * s2, [&, zx2, conv2, ssm2]() mutable {
                        torch::NoGradGuard ng_guard;
                        aim::ops::ssd_decode_step(zx2, conv2, ssm2, dw, arrivals);
                      }, true, 0, true});
    }
    // The state rows a warp updates at once (kernels/ssd_step.h; the row above runs the default,
    // 2 for an fp32 state), and a bf16 state (default 4 rows: the same bytes per warp in flight).
    for (int n : {1, 4}) {
      Row r{"ssd_decode_step (B=32) rows " + std::to_string(n), step_bytes, [&, n] {
              const ScopedEnv in_flight("AIM_SSD_STEP_ROWS", std::to_string(n));
              torch::NoGradGuard ng_guard;
              aim::ops::ssd_decode_step(dzx, dconv, dssm, dw, arrivals);
            }, true, 0, true};
      r.ref_timed = false;
      if (g_device.is_cuda()) rows.push_back(r);
    }
    auto dssm16 = dssm.to(torch::kBFloat16);
    Row bf16_state{"ssd_decode_step (B=32) bf16 state", step_bytes - state_rw / 2, [&] {
                     torch::NoGradGuard ng_guard;
                     aim::ops::ssd_decode_step(dzx, dconv, dssm16, dw, arrivals);
                   }, true, 0, true};
    bf16_state.ref_timed = false;
    if (g_device.is_cuda()) rows.push_back(bf16_state);
    rows.push_back({"ssd_decode_step, 3 kernels (B=32)", step_bytes, [&] {
                      torch::NoGradGuard ng_guard;
                      auto xbc = aim::ops::causal_conv1d_update(dzx.narrow(1, Ed, conv_dim), dconv,
                                                                dw.conv_weight, dw.conv_bias, true);
                      auto y = aim::ops::ssd_state_update(
                          dssm, xbc.narrow(1, 0, Ed).reshape({Bd, H, P}), ddt, dw.A,
                          xbc.narrow(1, Ed, G * N).reshape({Bd, G, N}),
                          xbc.narrow(1, Ed + G * N, G * N).reshape({Bd, G, N}), dw.D, dw.dt_bias, true);
                      aim::ops::gated_rms_norm(y.reshape({Bd, Ed}), dzx.narrow(1, 0, Ed), dw.norm_weight,
                                               dw.norm_group_size, 1e-5, false);
                    }, true, 0, true});

    // A decoding step's block input and in_proj (Mamba2: N = 2E + 2GN + H) at 2 rows (one image
    // with guidance) and 8: the fused kernel, and the norm kernel then cuBLAS. The weights in
    // the model's dtype, adaLN-group shift and scale per sequence, the residual in fp32. Bytes:
    // the projection's weight, hidden, gate, residual, shift and scale read, residual' and the
    // projection written.
    const int64_t Np = 2 * Ed + 2 * G * N + H;
    auto pw = torch::randn({Np, D}, opts) * (1.0 / std::sqrt(static_cast<double>(D)));
    auto pnw = torch::rand({D}, opts).add_(0.5);
    for (int64_t R : {int64_t{2}, int64_t{8}}) {
      auto ph = torch::randn({R, D}, opts), pres = torch::randn({R, D}, fopts);
      auto pgate = torch::randn({R, D}, opts), pshift = torch::randn({R, D}, opts) * 0.1;
      auto pscale = torch::randn({R, D}, opts) * 0.1;
      const double pbytes = Np * D * elem + R * D * (3 * elem + 2 * 4 + 2 * elem) + R * Np * elem;
      const std::string tag = " (R=" + std::to_string(R) + ")";
      rows.push_back({"norm + in_proj, fused" + tag, pbytes, [=] {
                        torch::NoGradGuard ng_guard;
                        aim::ops::add_rms_norm_modulate_linear(ph, pres, pnw, 1e-5, true, pshift,
                                                               pscale, pgate, pw, {});
                      }, true, 0, true});
      rows.push_back({"norm + in_proj, 2 launches" + tag, pbytes, [=] {
                        torch::NoGradGuard ng_guard;
                        auto x = aim::ops::add_rms_norm_modulate(ph, pres, pnw, 1e-5, true, pshift,
                                                                 pscale, pgate).first;
                        torch::nn::functional::linear(x, pw);
                      }, true, 0, true});
    }

    // A decoding step's projections at 2 rows (one image with guidance) and 32 (16 images):
    // in_proj, out_proj and the lm_head through ops::linear, whose small-batch kernel spreads
    // the weight read over every SM; the reference row is cuBLAS (torch's linear). Bytes: the
    // weight, x and the output.
    const auto ow = torch::randn({D, Ed}, opts) * (1.0 / std::sqrt(static_cast<double>(Ed)));
    const auto hw = torch::randn({V, D}, opts) * (1.0 / std::sqrt(static_cast<double>(D)));
    for (int64_t R : {int64_t{2}, int64_t{32}}) {
      const std::string tag = " (R=" + std::to_string(R) + ")";
      for (const auto& [name, weight] : {std::pair<const char*, torch::Tensor>{"in_proj", pw}, {"out_proj", ow},
                                         {"lm_head", hw}}) {
        const torch::Tensor w = weight;  // (a lambda cannot capture a structured binding in C++17)
        const auto x = torch::randn({R, w.size(1)}, opts);
        const double bytes = static_cast<double>(w.numel() + R * (w.size(0) + w.size(1))) * elem;
        rows.push_back({std::string("linear ") + name + tag, bytes, [=] {
                          torch::NoGradGuard ng_guard;
                          aim::ops::linear(x, w);
                        }, true, 0, true});
      }
    }

    // Mamba1's selective scan at the shapes of a Mamba1 AiM of this width (E = 2 D, N = 16, as
    // the mixer calls it: u, delta, z [B, E, L]; B, C [B, N, L]), forward and forward + backward;
    // bytes: u, delta, z, B, C read and y written (forward), plus dy read and five gradients
    // written (backward). Then the one-token update of sampling at batch 32: the fp32 state read
    // and written dominates.
    const int64_t E1 = 2 * D, N1 = 16;
    auto mu = torch::randn({B, E1, L}, opts).requires_grad_(true);
    auto mdelta = (torch::randn({B, E1, L}, opts) * 0.5).requires_grad_(true);
    auto mz = torch::randn({B, E1, L}, opts).requires_grad_(true);
    auto mA = (-torch::rand({E1, N1}, fopts) * 4 - 0.5).requires_grad_(true);
    auto mB = torch::randn({B, N1, L}, opts).requires_grad_(true);
    auto mC = torch::randn({B, N1, L}, opts).requires_grad_(true);
    auto mD = torch::ones({E1}, fopts).requires_grad_(true);
    auto mbias = (torch::randn({E1}, fopts) * 0.1 - 3).requires_grad_(true);
    auto mg = torch::randn({B, E1, L}, opts);
    const double m1_seq = static_cast<double>(B * E1 * L) * elem, m1_bc = 2.0 * B * N1 * L * elem;
    rows.push_back({"selective_scan fwd", 4 * m1_seq + m1_bc, [&] {
                      torch::NoGradGuard ng_guard;
                      aim::ops::selective_scan(mu, mdelta, mA, mB, mC, mD, mz, mbias, true);
                    }});
    // Backward: dy read, u, delta, z, B, C read again, du, ddelta, dz, dB, dC written.
    rows.push_back({"selective_scan fwd+bwd", 11 * m1_seq + 3 * m1_bc, [&] {
                      auto y = aim::ops::selective_scan(mu, mdelta, mA, mB, mC, mD, mz, mbias, true).y;
                      auto grads = torch::autograd::grad({y}, {mu, mdelta, mA, mB, mC, mD, mz, mbias}, {mg});
                    }});
    const int64_t Bs = 32;
    auto st = torch::randn({Bs, E1, N1}, fopts);
    auto su = torch::randn({Bs, E1}, opts), sdelta = torch::randn({Bs, E1}, opts) * 0.5;
    auto sz = torch::randn({Bs, E1}, opts);
    auto sBm = torch::randn({Bs, N1}, opts), sCm = torch::randn({Bs, N1}, opts);
    auto mA0 = mA.detach(), mD0 = mD.detach(), mbias0 = mbias.detach();
    rows.push_back({"selective_state_update (B=32)", 2.0 * Bs * E1 * N1 * 4 + 4.0 * Bs * E1 * elem, [&] {
                      torch::NoGradGuard ng_guard;
                      aim::ops::selective_state_update(st, su, sdelta, mA0, sBm, sCm, mD0, sz, mbias0, true);
                    }, true, 0, true});

    if (g_device.is_cpu()) {
      for (auto& r : rows) r.has_kernel = has_cpu_kernel(r.op);
    }
    std::printf("bench_ops %s on %s (%d threads), micro-batch %lld, %s; copy bandwidth %.0f GB/s (read + write)\n",
                config_path.c_str(), device_name.c_str(),
                g_device.is_cpu() ? at::get_num_threads() : 0, static_cast<long long>(B),
                dtype_name.c_str(), bw / 1e9);
    std::printf("%-36s %10s %10s %9s %10s %9s %9s\n", "op", "kernel ms", "GB/s", "of copy", "ref ms",
                "speed-up", "TFLOP/s");
    for (auto& r : rows) {
      if (!selected(r.op, only)) continue;
      const auto timed = [&](const std::function<void()>& f) {
        return r.graph ? median_graph_ms(f, repeats) : median_ms(f, repeats);
      };
      if (!r.has_kernel) {
        if (no_ref) continue;
        set_kernels(false);
        const double r_ms = timed(r.run);
        set_kernels(true);
        std::printf("%-36s %10s %10s %9s %10.3f %9s %9s\n", r.op.c_str(), "-", "-", "-", r_ms, "-", "-");
        continue;
      }
      set_kernels(true);
      const double k_ms = timed(r.run);
      double r_ms = std::nan("");
      if (!no_ref && r.ref_timed) {
        set_kernels(false);
        r_ms = timed(r.run);
        set_kernels(true);
      }
      const double gbs = r.bytes / (k_ms * 1e-3) / 1e9;
      char tflops[32] = "-";
      if (r.flops > 0) std::snprintf(tflops, sizeof tflops, "%.3g", r.flops / (k_ms * 1e-3) / 1e12);
      if (std::isnan(r_ms)) {
        std::printf("%-36s %10.3f %10.0f %8.1f%% %10s %9s %9s\n", r.op.c_str(), k_ms, gbs,
                    100.0 * gbs * 1e9 / bw, "-", "-", tflops);
      } else {
        std::printf("%-36s %10.3f %10.0f %8.1f%% %10.3f %8.2fx %9s\n", r.op.c_str(), k_ms, gbs,
                    100.0 * gbs * 1e9 / bw, r_ms, r_ms / k_ms, tflops);
      }
    }
    std::printf("bytes: the fewest each op must move (inputs read once, outputs written once)\n");
    if (g_device.is_cuda()) {
      std::printf("one-token ops (B=, R=): device time of a call replayed in a CUDA graph, L2 flushed before it\n");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_ops: %s\n", e.what());
    return 1;
  }
  return 0;
}
