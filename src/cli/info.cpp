#include <filesystem>
#include <iostream>

#include "aim/cli/commands.h"
#include "aim/core/checkpoint.h"
#include "aim/core/config.h"
#include "aim/core/error.h"
#include "aim/core/safetensors.h"
#include "aim/model/registry.h"

namespace aim::cli {

Runner add_info_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "Architecture, parameter counts and memory estimates");
  auto path = std::make_shared<std::string>();
  auto overrides = std::make_shared<std::vector<std::string>>();
  auto config = std::make_shared<std::string>();
  cmd->add_option("target", *path, "configs/*.yaml, an official config.json, a checkpoint directory or .safetensors file")
      ->required();
  // One value per --set: otherwise a config path after it would be taken as another override.
  cmd->add_option("--set", *overrides, "override a config key: section.key=value (YAML configs; repeatable)")
      ->allow_extra_args(false);
  cmd->add_option("--config", *config, "the config of a bare .safetensors weights file (aim YAML or official config.json)");
  return [cmd, path, overrides, config]() -> int {
    if (!cmd->parsed()) return -1;
    namespace fs = std::filesystem;
    ModelConfig model;
    VqConfig vq;  // the tokenizer of official snapshots: LlamaGen's VQ-16
    bool ema = false;
    std::string source = *path, weights;
    auto ends_with = [&](const std::string& tail) {
      return path->size() > tail.size() && path->compare(path->size() - tail.size(), tail.size(), tail) == 0;
    };
    const bool checkpoint = fs::is_directory(*path) || ends_with(".safetensors");
    const bool yaml = !checkpoint && !ends_with(".json");
    AIM_CHECK(yaml || overrides->empty(), "--set ", overrides->empty() ? "" : overrides->front(), ": ", *path,
              " is a checkpoint or an official config.json, whose architecture is fixed; --set applies to YAML "
              "configs\n---> HINT: aim info configs/<name>.yaml --set ...");
    const bool own_config = fs::is_directory(*path) && (fs::exists(fs::path(*path) / "config.yaml") ||
                                                        fs::exists(fs::path(*path) / "config.json") ||
                                                        fs::exists(fs::path(*path) / "latest"));
    AIM_CHECK(config->empty() || (checkpoint && !own_config), "--config ", *config, ": ", *path,
              own_config ? " is a checkpoint directory, which holds its own config" : " is a config itself",
              "; --config goes with weights that have none\n---> HINT: aim info WEIGHTS.safetensors --config CONFIG");
    if (checkpoint) {
      auto ref = find_checkpoint(*path, *config, "aim info");
      model = checkpoint_model_config(ref);
      source = ref.config_path;
      weights = ref.weights_path;
      if (ref.kind == CheckpointKind::kRunDir) vq = load_config(ref.config_path).vq;
    } else if (ends_with(".json")) {
      model = model_config_from_hf_json(*path);
    } else {
      auto cfg = load_config(*path, *overrides);
      model = cfg.model;
      vq = cfg.vq;
      ema = cfg.train.ema;
    }
    model.resolve();
    model.validate();
    std::cout << "config: " << source << "\n" << describe_model(model, ema, vq);
    if (!weights.empty()) {
      SafetensorsFile file(weights);
      // The language model's tensors, with or without the `mamba.` prefix; a tied lm_head stored
      // beside the embedding is the same parameter, counted once.
      auto strip = [](const std::string& k) { return k.rfind("mamba.", 0) == 0 ? k.substr(6) : k; };
      bool has_embedding = false;
      for (const auto& e : file.entries()) has_embedding |= strip(e.name) == "backbone.embeddings.word_embeddings.weight";
      int64_t n = 0;
      for (const auto& e : file.entries()) {
        const std::string k = strip(e.name);
        if (k.rfind("backbone.", 0) != 0 && k != "lm_head.weight") continue;
        if (k == "lm_head.weight" && model.tie_embeddings && has_embedding) continue;
        n += e.numel();
      }
      std::cout << "weights: " << weights << " (" << file.entries().size() << " tensors, "
                << n << " language-model parameters)\n";
    }
    return 0;
  };
}

}  // namespace aim::cli
