// Sampling speed for a config on this machine: tokens/s and images/s of the recurrent model
// steps (with guidance: doubled batch) and of the VQ decode, measured separately, randomly
// initialised weights (speed does not depend on them).
//
//   bench_sample CONFIG.yaml [--batch B] [--cfg S] [--tokens T] [--device cpu|cuda] [--dtype fp32|bf16]
//                [--ssm-state fp32|bf16] [--no-vq]
// --tokens limits the steps timed (default: all num_tokens) for big models on the CPU. On CUDA it
// also times generate_tokens eager and with CUDA graphs, and prints the memory roofline of one
// step: every weight read once, every recurrent state read and written once, at the device-to-
// device copy bandwidth measured in the same run. --ssm-state bf16 keeps the ssm states in bf16
// (aim sample --ssm-state). The timed model steps but the first are bracketed by
// cudaProfilerStart/Stop, so a profiler started with profiling off (ncu --profile-from-start off,
// as scripts/gpu_check.sh's profile phase runs it) sees exactly those steps' kernels.
#include <torch/torch.h>
#ifdef AIM_WITH_CUDA
#include <cuda_profiler_api.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "aim/core/config.h"
#include "aim/model/aim.h"
#include "aim/model/registry.h"
#include "aim/model/vq.h"
#include "aim/ops/sampling.h"
#include "aim/sample/generate.h"
#include "bench_flags.h"

using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  // Each row as it is measured: a run stopped at a time limit keeps what it printed.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  constexpr const char* kUsage =
      "bench_sample CONFIG.yaml [--batch B] [--cfg S] [--tokens T] [--device D] [--dtype fp32|bf16] "
      "[--ssm-state fp32|bf16] [--no-vq]";
  std::string config_path;
  int64_t batch = 16, steps = 0;
  double cfg = 2.0;
  bool with_vq = true;
  std::string device = "cpu", dtype_name = "fp32", ssm_state = "fp32";
  try {
    aim::bench::FlagReader flags("bench_sample", kUsage, argc, argv);
    while (flags.next()) {
      if (flags.is("--batch")) batch = flags.integer(1);
      else if (flags.is("--cfg")) cfg = flags.number();
      else if (flags.is("--tokens")) steps = flags.integer(0);
      else if (flags.is("--device")) device = flags.value();
      else if (flags.is("--dtype")) dtype_name = flags.choice("fp32|bf16");
      else if (flags.is("--ssm-state")) ssm_state = flags.choice("fp32|bf16");
      else if (flags.is("--no-vq")) with_vq = false;
      else if (flags.positional() && config_path.empty()) config_path = flags.arg();
      else flags.unknown();
    }
    if (config_path.empty()) throw aim::bench::FlagError("bench_sample: expected a CONFIG.yaml, found none");
  } catch (const aim::bench::FlagError& e) {
    return aim::bench::flags_failed(e, kUsage);
  }
  try {
    const auto cfg_all = aim::load_config(config_path);
    const torch::Device dev(device);
    torch::NoGradGuard no_grad;
    aim::AimModel model(cfg_all.model);
    const auto ssm_dtype = ssm_state == "bf16" ? torch::kBFloat16 : torch::kFloat;
    model->to(dev, dtype_name == "bf16" ? torch::kBFloat16 : torch::kFloat);
    model->eval();
    const int64_t len = steps > 0 ? std::min(steps, cfg_all.model.num_tokens) : cfg_all.model.num_tokens;
    auto labels = torch::randint(cfg_all.model.num_classes, {batch}, torch::dtype(torch::kLong).device(dev));
    const bool guided = cfg != 1.0;
    // profile: the profiler sees steps 1..n-1 (cudaProfilerStart after the first step, which
    // also computes each layer's adaLN conditioning, once per sequence).
    auto run_steps = [&](int64_t n, bool profile) {
      auto state = model->start(guided ? torch::cat({labels, torch::full_like(labels, model->null_class())}) : labels,
                                torch::kFloat, ssm_dtype);
      torch::Tensor prev;
      const auto ids = torch::arange(batch, torch::dtype(torch::kLong).device(dev));
      for (int64_t t = 0; t < n; ++t) {
#ifdef AIM_WITH_CUDA
        if (profile && t == 1 && dev.is_cuda()) cudaProfilerStart();
#endif
        auto logits = model->step(state, t == 0 ? torch::Tensor() : (guided ? torch::cat({prev, prev}) : prev));
        // What generate_tokens runs: guidance, filters and draw fused on CUDA.
        prev = aim::ops::sample_tokens_keyed(logits.narrow(0, 0, batch),
                                             guided ? logits.narrow(0, batch, batch) : torch::Tensor(), cfg,
                                             1.0, 0, 1.0, 0, ids, t);
      }
      if (dev.is_cuda()) torch::cuda::synchronize();
      return prev;
    };
    run_steps(std::min<int64_t>(len, 4), false);  // warm-up
    auto t0 = Clock::now();
    run_steps(len, true);
    const double step_s = std::chrono::duration<double>(Clock::now() - t0).count();
#ifdef AIM_WITH_CUDA
    if (dev.is_cuda()) cudaProfilerStop();
#endif
    std::printf("config %s: %lld parameters, batch %lld, cfg %.2f (%s), %lld steps, ssm state %s, device %s, "
                "%d threads\n",
                config_path.c_str(), (long long)aim::count_parameters(cfg_all.model).total(), (long long)batch, cfg,
                guided ? "doubled batch" : "conditional only", (long long)len, ssm_state.c_str(), device.c_str(),
                torch::get_num_threads());
    std::printf("| stage            | ms/token | tokens/s   | images/s |\n|------------------|----------|------------|----------|\n");
    std::printf("| model steps      | %8.2f | %10.1f | %8.3f |\n", 1e3 * step_s / len, batch * len / step_s,
                batch / (step_s * cfg_all.model.num_tokens / len));
    double roof_ms = 0;  // the step's memory roofline (below), for the generate rows
    if (dev.is_cuda()) {
      // Roofline of one step: what a step must read and write. The weights of the mixers, norms and
      // lm_head (the tied token table once, whole); of the position table (and an untied token
      // table) one row per sequence; not the class table and the adaLN projections, which start()
      // runs once per sequence. Their results, each block's shift/scale/gate and the final
      // shift/scale, are read; the states are read and written.
      const auto bytes_of = [](const torch::Tensor& t) {
        return t.defined() ? static_cast<double>(t.numel() * t.element_size()) : 0.0;
      };
      const int64_t rows = guided ? 2 * batch : batch;
      double weight_bytes = 0;
      for (const auto& item : model->named_parameters()) {
        const auto& n = item.key();
        const auto& p = item.value();
        auto has = [&](const char* s) { return n.find(s) != std::string::npos; };
        if (has("cls_embed") || has("adaln_group") || has("adaLN_modulation") || has("scale_shift_table")) continue;
        if (has("position_embeddings") || (has("word_embeddings") && !cfg_all.model.tie_embeddings))
          weight_bytes += static_cast<double>(rows * p.size(-1) * p.element_size());
        else
          weight_bytes += bytes_of(p);
      }
      auto st = model->start(guided ? torch::cat({labels, labels}) : labels, torch::kFloat, ssm_dtype);
      for (const auto& m : st.cond.layers) weight_bytes += bytes_of(m.shift) + bytes_of(m.scale) + bytes_of(m.gate);
      weight_bytes += bytes_of(st.cond.final_shift) + bytes_of(st.cond.final_scale);
      double state_bytes = 0;
      for (const auto& l : st.layers) state_bytes += bytes_of(l.conv_state) + bytes_of(l.ssm_state);
      auto big = torch::rand({1 << 28}, torch::dtype(torch::kFloat).device(dev));
      auto copy = torch::empty_like(big);
      copy.copy_(big);
      torch::cuda::synchronize();
      const auto c0 = Clock::now();
      for (int r = 0; r < 10; ++r) copy.copy_(big);
      torch::cuda::synchronize();
      const double bw = 10 * 2.0 * big.numel() * 4 / std::chrono::duration<double>(Clock::now() - c0).count();
      roof_ms = 1e3 * (weight_bytes + 2 * state_bytes) / bw;
      std::printf("| roofline         | %8.3f |            |          |  weights and conditioning %.1f MB + states 2 x %.1f MB per step at %.0f GB/s\n",
                  roof_ms, weight_bytes / 1e6, state_bytes / 1e6, bw / 1e9);
    }
    if (dev.is_cuda()) {
      // The whole generate_tokens (all num_tokens steps) eager and with the step in a CUDA graph.
      std::vector<int64_t> ids(static_cast<size_t>(batch));
      for (int64_t i = 0; i < batch; ++i) ids[static_cast<size_t>(i)] = i;
      aim::SamplingOptions so;
      so.cfg = cfg;
      so.ssm_state_dtype = ssm_dtype;
      for (const bool graph : {false, true}) {
        so.cuda_graph = graph;
        bool used = false;
        aim::generate_tokens(model, labels, ids, so, &used);  // warm-up (and capture)
        torch::cuda::synchronize();
        // The median of three runs, as the official baseline reports its decoder.
        std::vector<double> runs;
        for (int r = 0; r < 3; ++r) {
          const auto g0 = Clock::now();
          aim::generate_tokens(model, labels, ids, so, &used);
          torch::cuda::synchronize();
          runs.push_back(std::chrono::duration<double>(Clock::now() - g0).count());
        }
        std::sort(runs.begin(), runs.end());
        const double s = runs[1];
        const int64_t n = cfg_all.model.num_tokens;
        std::printf("| generate, %-6s | %8.2f | %10.1f | %8.3f |  %.2fx the roofline\n",
                    graph ? (used ? "graph" : "eager!") : "eager", 1e3 * s / n, batch * n / s, batch / s,
                    1e3 * s / n / roof_ms);
      }
    }
    if (with_vq) {
      aim::VqModel vq(cfg_all.vq);
      vq->to(dev);
      vq->eval();
      const int64_t side = aim::VqModel::Impl::side_of(cfg_all.model.num_tokens);
      auto tokens = torch::randint(cfg_all.vq.codebook_size, {batch, side * side}, torch::dtype(torch::kLong).device(dev));
      vq->decode(tokens.narrow(0, 0, 1), side, side);
      if (dev.is_cuda()) torch::cuda::synchronize();  // the warm-up's tail is not the timed decode's
      t0 = Clock::now();
      vq->decode(tokens, side, side);
      if (dev.is_cuda()) torch::cuda::synchronize();
      const double vq_s = std::chrono::duration<double>(Clock::now() - t0).count();
      std::printf("| VQ decode        |          |            | %8.3f |\n", batch / vq_s);
      const double total = step_s * cfg_all.model.num_tokens / len + vq_s;
      std::printf("| end to end       |          |            | %8.3f |\n", batch / total);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
