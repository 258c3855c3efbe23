#include "aim/core/checkpoint.h"

#include <filesystem>

#include "aim/core/error.h"
#include "aim/core/fileio.h"

namespace aim {

namespace fs = std::filesystem;

namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

ModelConfig model_config_from_file(const std::string& path) {
  if (ends_with(path, ".json")) return model_config_from_hf_json(path);
  // Only the model is read: a model-only file (or a run's config.yaml) needs no other section
  // to agree with it (the tokenizer comes from --vq / --vq-config).
  if (ends_with(path, ".yaml") || ends_with(path, ".yml")) return load_config(path, {}, ConfigUse::kModel).model;
  throw Error(str_cat(path, ": unknown config format: expected a .yaml/.yml aim config or an "
                            "official config.json"));
}

CheckpointRef find_checkpoint(const std::string& path, const std::string& config_override, const std::string& flag,
                              const std::string& config_flag) {
  CheckpointRef ref;
  ref.path = path;
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error(str_cat(flag, " ", path, ": no such file or directory"));
  if (fs::is_directory(path, ec)) {
    fs::path dir(path);
    // A training run directory: its newest complete checkpoint (see aim/train/run_dir.h).
    if (!fs::exists(dir / "model.safetensors", ec) && fs::exists(dir / "latest", ec)) {
      std::string rel = read_text((dir / "latest").string());
      while (!rel.empty() && (rel.back() == '\n' || rel.back() == ' ')) rel.pop_back();
      const fs::path target = dir / rel;
      if (!fs::is_directory(target, ec))
        throw Error(str_cat(path, ": 'latest' names ", rel, ", which does not exist"));
      dir = target;
    }
    ref.weights_path = (dir / "model.safetensors").string();
    if (fs::exists(dir / "config.yaml")) {
      ref.kind = CheckpointKind::kRunDir;
      ref.config_path = (dir / "config.yaml").string();
      if (fs::exists(dir / "ema.safetensors")) ref.ema_path = (dir / "ema.safetensors").string();
    } else if (fs::exists(dir / "config.json")) {
      ref.kind = CheckpointKind::kHfSnapshot;
      ref.config_path = (dir / "config.json").string();
    } else if (config_override.empty()) {
      throw Error(str_cat(path, ": neither config.yaml (an aim run) nor config.json (an official "
                                "Hugging Face snapshot) found\n---> HINT: pass ", config_flag));
    }
    if (!fs::exists(ref.weights_path)) {
      if (fs::exists(dir / "pytorch_model.bin")) {
        throw Error(str_cat(path, ": has pytorch_model.bin (a pickle) but no model.safetensors\n"
                                  "---> HINT: python3 tools/convert_checkpoint.py ",
                            (dir / "pytorch_model.bin").string(), " --out ", ref.weights_path));
      }
      if (fs::exists(dir / "model.safetensors.index.json"))
        throw Error(str_cat(path, ": model.safetensors not found, only the shards of model.safetensors.index.json, "
                                  "which are not read\n---> HINT: merge the shards into one model.safetensors"));
      throw Error(str_cat(path, ": model.safetensors not found"));
    }
  } else {
    if (!ends_with(path, ".safetensors")) {
      refuse_torch_pickle(path);
      throw Error(str_cat(flag, " ", path, ": expected a directory or a .safetensors file"
                          "\n---> HINT: convert .pt/.bin checkpoints with tools/convert_checkpoint.py"));
    }
    ref.kind = CheckpointKind::kFile;
    ref.weights_path = path;
    if (config_override.empty()) {
      // The converter writes NAME.json beside NAME.safetensors; a snapshot's folder holds
      // config.json. Either is taken when it is a MambaConfig.
      const auto stem_json = fs::path(path).replace_extension(".json");
      const auto dir_json = fs::path(path).parent_path() / "config.json";
      if (looks_like_hf_config(stem_json.string())) ref.config_path = stem_json.string();
      else if (looks_like_hf_config(dir_json.string())) ref.config_path = dir_json.string();
      else
        throw Error(str_cat(flag, " ", path, ": a bare weights file needs ", config_flag, " (aim YAML or "
                            "official config.json); neither ", stem_json.filename().string(),
                            " nor config.json beside it is a MambaConfig"));
    }
  }
  if (!config_override.empty()) ref.config_path = config_override;
  return ref;
}

ModelConfig checkpoint_model_config(const CheckpointRef& ref) {
  return model_config_from_file(ref.config_path);
}

}  // namespace aim
