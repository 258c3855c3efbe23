// Training speed of a config on this machine, through the real trainer (aim::train::run_training)
// on synthetic codes with the config's shapes: images/s, tokens/s, model FLOP/s, MFU against the
// device's published peak (when known) and against a dense matmul measured in the same run, and
// peak memory on CUDA. Randomly initialised weights (speed does not depend on them).
//
//   bench_train CONFIG.yaml [--micro B] [--steps N] [--warmup W] [--device cpu|cuda]
//                           [--precision bf16|fp32|both] [--kernels on|off|both] [--profile FILE.json]
//                           [--tokenizer] [--recompute N[,N...]]
//
// --tokenizer benchmarks stage 1 instead (aim::train::run_vq_training on a generated shapes
// dataset at the config's data.image_size): tokens are the tokenizer's codes, FLOPs those of
// aim::train::vq_training_flops_per_image (LPIPS included when it is a loss); no matmul column.
//
// --kernels off runs the plain LibTorch references (ops::ref) instead of the hand-written kernels
// (the CUDA kernels on cuda, src/ops/*_cpu.cpp on cpu); both (the default on CUDA) prints the two
// and the kernels' speed-up. The default on the CPU is on, what `aim train` runs.
// --profile FILE records every run with the PyTorch profiler: a Chrome trace per run
// (FILE with the run's name before the extension, and _r<N> with several --recompute values;
// open in chrome://tracing or Perfetto) and a
// table of the operators with the most self time.
// --recompute 0,1 runs each configuration with train.recompute_every 0 and 1 (activation
// checkpointing) and prints the step time and peak memory of each against 0's.
#include <torch/csrc/autograd/profiler_kineto.h>

#include <cstdlib>
#include <torch/torch.h>
#ifdef AIM_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <unistd.h>

#include "aim/core/config.h"
#include "aim/core/env.h"
#include "aim/data/shapes.h"
#include "aim/data/synthetic.h"
#include "aim/ops/dispatch.h"
#include "aim/train/flops.h"
#include "aim/train/trainer.h"
#include "aim/train/vq_trainer.h"
#include "bench_flags.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

/// The first line of a message (c10 errors append a C++ stack trace).
std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

/// Dense-matmul FLOP/s of this device in `dtype` at a size like the model's projections.
double matmul_flops(const torch::Device& dev, torch::ScalarType dtype, int64_t m, int64_t k, int64_t n) {
  torch::NoGradGuard ng;
  auto a = torch::randn({m, k}, torch::dtype(dtype).device(dev));
  auto b = torch::randn({k, n}, torch::dtype(dtype).device(dev));
  auto sync = [&] {
    if (dev.is_cuda()) torch::cuda::synchronize();
  };
  for (int i = 0; i < 3; ++i) a.matmul(b);
  sync();
  int iters = 0;
  const auto t0 = Clock::now();
  double dt = 0;
  while (dt < 0.5 || iters < 5) {
    a.matmul(b);
    ++iters;
    if (iters % 5 == 0) {
      sync();
      dt = std::chrono::duration<double>(Clock::now() - t0).count();
    }
  }
  return 2.0 * m * k * n * iters / dt;
}

/// Prints the `top` operators with the most self time (own time minus that of the operators they
/// called, per thread), summed over the profile.
void print_self_time(const torch::autograd::profiler::ProfilerResult& result, size_t top) {
  struct Span {
    uint64_t start, end;
    std::string name;
  };
  std::map<uint64_t, std::vector<Span>> by_thread;
  for (const auto& e : result.events()) {
    if (e.deviceType() != c10::DeviceType::CPU || e.isAsync() || e.endNs() <= e.startNs()) continue;
    by_thread[e.startThreadId()].push_back({e.startNs(), e.endNs(), e.name()});
  }
  std::map<std::string, std::pair<double, int64_t>> self;  // name -> (ns, calls)
  double total = 0;
  for (auto& [tid, spans] : by_thread) {
    std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
      return a.start != b.start ? a.start < b.start : a.end > b.end;
    });
    std::vector<std::pair<const Span*, double>> stack;  // span, time spent in its children
    auto close = [&] {
      const auto [span, children] = stack.back();
      stack.pop_back();
      const double own = static_cast<double>(span->end - span->start) - children;
      auto& entry = self[span->name];
      entry.first += own;
      entry.second += 1;
      total += own;
      if (!stack.empty()) stack.back().second += static_cast<double>(span->end - span->start);
    };
    for (const auto& s : spans) {
      while (!stack.empty() && stack.back().first->end <= s.start) close();
      stack.push_back({&s, 0.0});
    }
    while (!stack.empty()) close();
  }
  std::vector<std::pair<std::string, std::pair<double, int64_t>>> rows(self.begin(), self.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
  std::printf("  %-44s %10s %7s %9s\n", "operator (self time)", "ms", "share", "calls");
  for (size_t i = 0; i < std::min(top, rows.size()); ++i) {
    std::printf("  %-44.44s %10.1f %6.1f%% %9lld\n", rows[i].first.c_str(), rows[i].second.first / 1e6,
                100.0 * rows[i].second.first / std::max(total, 1.0), static_cast<long long>(rows[i].second.second));
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Each row as it is measured: a run stopped at a time limit keeps what it printed.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  aim::tune_host_allocator();  // as the aim executable does
  constexpr const char* kUsage =
      "bench_train CONFIG.yaml [--micro B] [--steps N] [--warmup W] [--device cpu|cuda] "
      "[--precision bf16|fp32|both] [--kernels on|off|both] [--profile FILE.json] [--tokenizer] "
      "[--recompute N[,N...]]";
  std::string config_path;
  int64_t micro = 0, steps = 5, warmup = 2;
  std::string device = torch::cuda::is_available() ? "cuda" : "cpu", precision, kernels, profile;
  bool tokenizer = false;
  std::vector<int64_t> recompute = {0};  // train.recompute_every values to run
  try {
    aim::bench::FlagReader flags("bench_train", kUsage, argc, argv);
    while (flags.next()) {
      if (flags.is("--micro")) micro = flags.integer(1);
      else if (flags.is("--steps")) steps = flags.integer(1);
      else if (flags.is("--warmup")) warmup = flags.integer(0);
      else if (flags.is("--device")) device = flags.value();
      else if (flags.is("--precision")) precision = flags.choice("bf16|fp32|both");
      else if (flags.is("--kernels")) kernels = flags.choice("on|off|both");
      else if (flags.is("--profile")) profile = flags.value();
      else if (flags.is("--tokenizer")) tokenizer = true;
      else if (flags.is("--recompute")) recompute = flags.integer_list(0);
      else if (flags.positional() && config_path.empty()) config_path = flags.arg();
      else flags.unknown();
    }
    if (config_path.empty()) throw aim::bench::FlagError("bench_train: expected a CONFIG.yaml, found none");
    if (tokenizer && recompute != std::vector<int64_t>{0})
      throw aim::bench::FlagError("bench_train: --recompute: the tokenizer has no recomputation (expected 0)");
  } catch (const aim::bench::FlagError& e) {
    return aim::bench::flags_failed(e, kUsage);
  }
  try {
    const torch::Device dev(device);
    if (precision.empty()) precision = dev.is_cuda() ? "both" : "fp32";
    std::vector<std::string> precisions =
        precision == "both" ? std::vector<std::string>{"fp32", "bf16"} : std::vector<std::string>{precision};
    if (kernels.empty()) kernels = dev.is_cuda() ? "both" : "on";
    // Kernels first: at AiM-L's micro-batch 64 the references' chunked scan (segment sums of
    // [B, H, chunks, 256, 256] per layer) does not fit in a GPU's memory.
    std::vector<bool> kernel_runs = kernels == "both" ? std::vector<bool>{true, false}
                                                      : std::vector<bool>{kernels == "on"};
    const auto use = tokenizer ? aim::ConfigUse::kTokenizer : aim::ConfigUse::kAim;
    auto base = aim::load_config(config_path, {}, use);
    if (micro <= 0) micro = dev.is_cuda() ? base.train.micro_batch : 2;
    const fs::path work = fs::temp_directory_path() / ("aim_bench_train_" + std::to_string(::getpid()));
    fs::create_directories(work);
    const std::string data = (work / (tokenizer ? "images" : "codes.bin")).string();
    if (tokenizer) {
      aim::ShapesOptions so;
      so.size = base.data.image_size;
      so.per_class = std::max<int64_t>(1, (micro * (warmup + steps) + so.classes - 1) / so.classes);
      aim::write_shapes_dataset(data, so);
    } else {
      aim::SyntheticCodesOptions so;
      so.classes = base.model.num_classes;
      so.per_class = std::max<int64_t>(1, (micro * (warmup + steps) + so.classes - 1) / so.classes);
      so.tokens = base.model.num_tokens;
      so.vocab_size = base.model.vocab_size;
      aim::write_synthetic_codes(data, so);
    }

    std::string dev_name;
    const double peak = aim::train::device_peak_tflops(dev, 0.0, &dev_name);
    const double per_image = tokenizer ? aim::train::vq_training_flops_per_image(base.vq, base.vq_train, base.data.image_size)
                                       : aim::train::training_flops_per_image(base.model);
    // The tokenizer's tokens are its codes: (image_size / downsample)^2 per image.
    const int64_t tokens_per_image =
        tokenizer ? (base.data.image_size / base.vq.downsample()) * (base.data.image_size / base.vq.downsample())
                  : base.model.num_tokens;
    std::printf("bench_train %s%s on %s (%s): micro-batch %lld, %lld timed steps after %lld warm-up, "
                "%.3f GFLOP per image (fwd+bwd)\n",
                config_path.c_str(), tokenizer ? " (tokenizer)" : "", dev_name.c_str(), dev.str().c_str(),
                static_cast<long long>(micro), static_cast<long long>(steps), static_cast<long long>(warmup),
                per_image / 1e9);
    std::printf("%-6s %-8s %6s %10s %12s %12s %10s %12s %10s %12s\n", "prec", "kernels", "recomp", "ms/step",
                "images/s", "tokens/s", "TFLOP/s", "MFU(peak)", "vs matmul", "peak mem GB");
    double fp32_ms = 0;
    std::map<std::string, std::pair<double, double>> plain;  // (precision, kernels) -> ms, GB without recomputing
    for (const auto& p : precisions) {
      for (const int64_t every : recompute) {
        double ref_ms = 0, kernel_ms = 0;
        for (const bool use_kernels : kernel_runs) {
          if (dev.is_cuda()) aim::ops::set_cuda_kernels(use_kernels);
          else aim::ops::set_cpu_kernels(use_kernels);
          const std::string out =
              (work / ("run_" + p + (use_kernels ? "_k" : "_ref") + "_r" + std::to_string(every))).string();
          auto cfg = aim::load_config(config_path,
                                      {std::string(tokenizer ? "data.images=" : "data.codes=") + data,
                                       "data.num_workers=2", "train.out_dir=" + out,
                                       "train.global_batch=" + std::to_string(micro),
                                       "train.micro_batch=" + std::to_string(micro), "train.precision=" + p,
                                       "train.max_steps=" + std::to_string(warmup + steps),
                                       "train.log_every=1", "train.ckpt_every=0",
                                       "train.keep_last=1", "train.sample_every=0", "train.ema=false",
                                       "train.recompute_every=" + std::to_string(every)},
                                      use);
          aim::train::TrainOptions o;
          o.device = dev;
          o.quiet = true;
          if (!profile.empty()) {
            namespace prof = torch::profiler::impl;
            // On a machine without a GPU Kineto's CUDA side logs a failed device count as an
            // error; nothing of it is used (the user's own setting wins).
            if (!dev.is_cuda()) ::setenv("KINETO_LOG_LEVEL", "5", /*overwrite=*/0);
            std::set<prof::ActivityType> activities{prof::ActivityType::CPU};
            if (dev.is_cuda()) activities.insert(prof::ActivityType::CUDA);
            const prof::ProfilerConfig kineto(prof::ProfilerState::KINETO, true);
            torch::autograd::profiler::prepareProfiler(kineto, activities);
            torch::autograd::profiler::enableProfiler(kineto, activities);
          }
          try {
            if (tokenizer) aim::train::run_vq_training(cfg, o);
            else aim::train::run_training(cfg, o);
          } catch (const c10::OutOfMemoryError& e) {
            // A run that does not fit says so; the others still run.
            if (!profile.empty()) torch::autograd::profiler::disableProfiler();
            std::printf("%-6s %-8s %6lld out of memory at micro-batch %lld (%s)\n", p.c_str(),
                        use_kernels ? "kernels" : "ref", static_cast<long long>(every), static_cast<long long>(micro),
                        first_line(e.what()).c_str());
  #ifdef AIM_WITH_CUDA
            c10::cuda::CUDACachingAllocator::emptyCache();
  #endif
            continue;
          }
          if (!profile.empty()) {
            auto result = torch::autograd::profiler::disableProfiler();
            const fs::path pp(profile);
            const fs::path trace = pp.parent_path() /
                (pp.stem().string() + "_" + p + (use_kernels ? "_kernels" : "_ref") +
                 (recompute.size() > 1 ? "_r" + std::to_string(every) : std::string()) + pp.extension().string());
            result->save(trace.string());
            std::printf("profile of %s %s (all %lld steps): %s\n", p.c_str(), use_kernels ? "kernels" : "ref",
                        static_cast<long long>(warmup + steps), trace.c_str());
            print_self_time(*result, 25);
          }
          // One line per step: the timed steps' images over their total time.
          std::ifstream in(fs::path(out) / "metrics.jsonl");
          nlohmann::json last;
          double seconds = 0;
          int64_t timed = 0;
          for (std::string line; std::getline(in, line);) {
            last = nlohmann::json::parse(line);
            if (last.value("step", 0) > warmup && last.value("images_per_s", 0.0) > 0) {
              seconds += static_cast<double>(micro) / last.value("images_per_s", 0.0);
              ++timed;
            }
          }
          const double img_s = seconds > 0 ? static_cast<double>(timed * micro) / seconds : 0.0;
          const double flops = img_s * per_image;
          const auto mm_dtype = p == "bf16" ? torch::kBFloat16 : torch::kFloat;
          const double mm = tokenizer ? 0.0
                                      : matmul_flops(dev, mm_dtype, micro * base.model.num_tokens,
                                                     base.model.d_model, 4 * base.model.d_model);
          const double ms = img_s > 0 ? 1e3 * micro / img_s : 0;
          if (p == "fp32" && use_kernels == kernel_runs.front() && every == recompute.front()) fp32_ms = ms;
          char vs_mm[32] = "-";
          if (mm > 0) std::snprintf(vs_mm, sizeof vs_mm, "%.1f%%", 100.0 * flops / mm);
          // The device's published peak is known for listed GPUs only; elsewhere "-" (not 0%).
          char mfu[32] = "-";
          if (peak > 0) std::snprintf(mfu, sizeof mfu, "%.1f%%", 100.0 * flops / (peak * 1e12));
          const double mem_gb = last.value("peak_memory_gb", 0.0);
          std::printf("%-6s %-8s %6lld %10.1f %12.1f %12.0f %10.2f %12s %10s %12.2f\n", p.c_str(),
                      use_kernels ? "kernels" : "ref", static_cast<long long>(every), ms, img_s,
                      img_s * static_cast<double>(tokens_per_image), flops / 1e12, mfu, vs_mm, mem_gb);
          const std::string key = p + (use_kernels ? "_k" : "_ref");
          if (every == 0) {
            plain[key] = {ms, mem_gb};
          } else if (plain.count(key) && plain[key].first > 0 && ms > 0) {
            std::printf("%s %s: recomputing every %lld block(s): %.2fx the step time", p.c_str(),
                        use_kernels ? "kernels" : "ref", static_cast<long long>(every), ms / plain[key].first);
            if (mem_gb > 0) std::printf(", peak memory %.2f -> %.2f GB", plain[key].second, mem_gb);
            std::printf("\n");
          }
          (use_kernels ? kernel_ms : ref_ms) = ms;
          if (kernel_ms > 0 && ref_ms > 0) {
            std::printf("%s: kernels' speed-up over the references: %.2fx\n", p.c_str(), ref_ms / kernel_ms);
          }
          if (p == "bf16" && use_kernels == kernel_runs.front() && every == recompute.front() && fp32_ms > 0) {
            std::printf("bf16 speed-up over fp32: %.2fx\n", fp32_ms / ms);
          }
        }
      }
    }
    aim::ops::set_cuda_kernels(true);
    aim::ops::set_cpu_kernels(true);
    if (!tokenizer) {
      std::printf("vs matmul: model FLOP/s over a dense [%lld x %lld] x [%lld x %lld] matmul in the same "
                  "precision measured in this run\n",
                  static_cast<long long>(micro * base.model.num_tokens), static_cast<long long>(base.model.d_model),
                  static_cast<long long>(base.model.d_model), static_cast<long long>(4 * base.model.d_model));
    }
    fs::remove_all(work);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_train: %s\n", e.what());
    return 1;
  }
  return 0;
}
