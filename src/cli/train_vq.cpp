// `aim train-vq CONFIG`: stage-1 training of the image tokenizer, one process or many.
#include <torch/torch.h>

#include <filesystem>
#include <iostream>

#include "aim/cli/commands.h"
#include "aim/core/config.h"
#include "aim/core/env.h"
#include "aim/core/error.h"
#include "aim/train/vq_trainer.h"

namespace aim::cli {

namespace {

struct TrainVqArgs {
  std::string config;
  std::vector<std::string> sets;
  std::string resume, init, init_config, out;
  std::string device = "auto";
  int64_t stop_after = 0;
};

}  // namespace

Runner add_train_vq_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("train-vq", "Train the image tokenizer (stage 1) on an image folder");
  auto a = std::make_shared<TrainVqArgs>();
  cmd->add_option("config", a->config, "tokenizer training config (configs/vq_demo.yaml); optional with --resume DIR");
  cmd->add_option("--set", a->sets, "override a key: section.key=value (repeatable)");
  cmd->add_option("--resume", a->resume, "continue a run: its directory, one checkpoint, or 'auto'");
  cmd->add_option("--init", a->init, "start from tokenizer weights (.safetensors, aim run, official snapshot)");
  cmd->add_option("--init-config", a->init_config, "tokenizer config JSON for a bare --init file");
  cmd->add_option("--device", a->device, "auto | cpu | cuda | cuda:<index>")->capture_default_str();
  cmd->add_option("--stop-after-steps", a->stop_after, "save and exit after this many steps; resume later");
  cmd->add_option("--out", a->out, "run directory (default: train.out_dir, runs/<name>)");
  return [cmd, a]() -> int {
    if (!cmd->parsed()) return -1;
    namespace fs = std::filesystem;
    std::string config_path = a->config;
    if (config_path.empty()) {
      AIM_CHECK(!a->resume.empty() && a->resume != "auto",
                "train-vq: no config given\n---> HINT: aim train-vq configs/vq_demo.yaml, or aim train-vq --resume RUN_DIR");
      config_path = (fs::path(a->resume) / "config.yaml").string();
      AIM_CHECK(fs::exists(config_path), str_cat("--resume ", a->resume, ": no config.yaml; pass the config"));
    }
    auto sets = a->sets;
    if (!a->out.empty()) sets.push_back("train.out_dir=" + a->out);
    const Config config = load_config(config_path, sets, ConfigUse::kTokenizer);
    const auto env = detect_launch_env();
    train::TrainOptions o;
    o.resume = a->resume;
    o.init = a->init;
    o.init_config = a->init_config;
    o.stop_after = a->stop_after;
    o.device = a->device == "auto"
                   ? (torch::cuda::is_available() ? parse_device("cuda", env.local_rank) : torch::Device(torch::kCPU))
                   : parse_device(a->device, env.local_rank);
    train::install_stop_handlers();
    const auto r = train::run_vq_training(config, o);
    if (env.is_main()) {
      std::cout << (r.interrupted ? "interrupted" : r.paused ? "paused" : "finished") << " at step " << r.steps
                << "/" << r.total_steps << ", loss " << r.loss << ", codebook usage " << 100.0 * r.usage
                << "%; checkpoint " << r.checkpoint << "\n";
    }
    return 0;
  };
}

}  // namespace aim::cli
