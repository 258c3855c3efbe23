// `aim train CONFIG` (stage 2, AiM) and `aim train-vq CONFIG` (stage 1, the tokenizer): one
// process or many (mpirun / srun / torchrun-style). Both take the same flags.
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <iostream>

#include "aim/cli/commands.h"
#include "aim/core/config.h"
#include "aim/core/env.h"
#include "aim/core/error.h"
#include "aim/train/run_dir.h"
#include "aim/train/trainer.h"
#include "aim/train/vq_trainer.h"

namespace aim::cli {

namespace {

struct TrainArgs {
  std::string config;
  std::vector<std::string> sets;
  std::string resume;
  std::string init;
  std::string init_config;
  std::string device = "auto";
  std::string out;
  int64_t stop_after = 0;
};

enum class Stage { kAim, kTokenizer };

Runner add_training_command(CLI::App& app, Stage stage) {
  const bool vq = stage == Stage::kTokenizer;
  const std::string name = vq ? "train-vq" : "train";
  const std::string example = vq ? "configs/vq_demo.yaml" : "configs/tiny.yaml";
  auto* cmd = app.add_subcommand(name, vq ? "Train the image tokenizer (stage 1) on an image folder"
                                          : "Train AiM (stage 2) on a code dataset or an image folder");
  auto a = std::make_shared<TrainArgs>();
  cmd->add_option("config", a->config,
                  str_cat(vq ? "tokenizer training config (" : "training config (",
                          vq ? example : "configs/aim_l.yaml", "); optional with --resume DIR"));
  // One value per --set: otherwise a config path after it would be taken as another override.
  cmd->add_option("--set", a->sets, "override a key: section.key=value (repeatable)")->allow_extra_args(false);
  cmd->add_option("--resume", a->resume, "continue a run: its directory, one checkpoint, or 'auto' "
                                         "(the config's run directory when it has a checkpoint)");
  cmd->add_option("--init", a->init,
                  vq ? "start from tokenizer weights (.safetensors, aim run, official snapshot)"
                     : "fine-tune from weights: an aim run, an official HF snapshot, or a .safetensors");
  cmd->add_option("--init-config", a->init_config,
                  vq ? "tokenizer config JSON for a bare --init file" : "config for a bare --init .safetensors file");
  cmd->add_option("--device", a->device, kDeviceHelp)
      ->capture_default_str();
  cmd->add_option("--stop-after-steps", a->stop_after,
                  "save and exit after this many steps of this session (time-limited jobs); resume later "
                  "with --resume");
  cmd->add_option("--out", a->out, "run directory (default: train.out_dir, runs/<name>)");
  return [cmd, a, vq, name, example]() -> int {
    if (!cmd->parsed()) return -1;
    namespace fs = std::filesystem;
    std::string config_path = a->config;
    if (config_path.empty()) {
      AIM_CHECK(!a->resume.empty() && a->resume != "auto",
                str_cat(name, ": no config given\n---> HINT: aim ", name, " ", example, ", or aim ", name,
                        " --resume RUN_DIR"));
      config_path = (fs::path(a->resume) / "config.yaml").string();
      AIM_CHECK(fs::exists(a->resume), str_cat("--resume ", a->resume, ": no such run directory or checkpoint"));
      AIM_CHECK(fs::exists(config_path), str_cat("--resume ", a->resume, ": no config.yaml; pass the config"));
    }
    AIM_CHECK(a->init_config.empty() || !a->init.empty(), "--init-config ", a->init_config,
              ": the config of an --init weights file, and no --init is given\n---> HINT: leave it out, or add --init");
    AIM_CHECK(a->init.empty() || a->resume.empty() || a->resume == "auto", "--init ", a->init, ": not used when "
              "resuming from --resume ", a->resume, " (the checkpoint's weights are)\n---> HINT: leave out one of "
              "them; --resume auto --init X starts from X only while the run has no checkpoint");
    const auto sets_out_dir = [](const std::string& s) { return s.rfind("train.out_dir=", 0) == 0; };
    AIM_CHECK(cmd->count("--out") == 0 || !a->out.empty(), "--out: expected a run directory, found ''");
    AIM_CHECK(a->out.empty() || std::none_of(a->sets.begin(), a->sets.end(), sets_out_dir), "--out ", a->out,
              " and --set train.out_dir both name the run directory\n---> HINT: give one of them");
    auto sets = a->sets;
    if (!a->out.empty()) {
      sets.push_back("train.out_dir=" + a->out);
    } else if (!a->resume.empty() && a->resume != "auto" &&
               std::none_of(sets.begin(), sets.end(), sets_out_dir)) {
      // A resumed run goes on in the directory it is resumed from (which may have moved since
      // config.yaml recorded train.out_dir), not wherever that path now points.
      const std::string run = train::run_dir_of(a->resume);
      if (!run.empty()) sets.push_back("train.out_dir=" + run);
    }
    const Config config = load_config(config_path, sets, vq ? ConfigUse::kTokenizer : ConfigUse::kAim);
    const auto env = detect_launch_env();
    train::TrainOptions o;
    o.resume = a->resume;
    o.init = a->init;
    o.init_config = a->init_config;
    AIM_CHECK(a->stop_after >= 0, "--stop-after-steps: expected >= 0 (0 = run to the end), found ", a->stop_after);
    o.stop_after = a->stop_after;
    o.device = parse_device(a->device, env.local_rank);
    train::install_stop_handlers();
    train::TrainResult r;
    std::string usage;
    if (vq) {
      const auto v = train::run_vq_training(config, o);
      r = v;
      usage = str_cat(", codebook usage ", 100.0 * v.usage, "%");
    } else {
      r = train::run_training(config, o);
    }
    if (env.is_main()) {
      std::cout << (r.interrupted ? "interrupted" : r.paused ? "paused" : "finished") << " at step " << r.steps << "/"
                << r.total_steps << ", loss " << r.loss << usage << "; checkpoint " << r.checkpoint << "\n";
    }
    return 0;
  };
}

}  // namespace

Runner add_train_command(CLI::App& app) { return add_training_command(app, Stage::kAim); }

Runner add_train_vq_command(CLI::App& app) { return add_training_command(app, Stage::kTokenizer); }

}  // namespace aim::cli
