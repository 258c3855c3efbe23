#pragma once
// Where a checkpoint's pieces are: our run directories (config.yaml + model.safetensors), official
// Hugging Face snapshots (config.json + model.safetensors), or a bare .safetensors file with a
// config given separately.
#include <string>

#include "aim/core/config.h"

namespace aim {

enum class CheckpointKind { kRunDir, kHfSnapshot, kFile };

struct CheckpointRef {
  CheckpointKind kind = CheckpointKind::kFile;
  std::string path;          ///< what the user passed
  std::string config_path;   ///< config.yaml, config.json or the override
  std::string weights_path;  ///< model.safetensors or the file itself
  std::string ema_path;      ///< ema.safetensors of a run directory, when present
};

/// Resolves `path` (a directory or a .safetensors file). `config_override` (a YAML config or an
/// HF config.json) replaces the directory's config and is required for a bare file. Throws
/// aim::Error naming what is missing, with a hint; `flag` and `config_flag` are the options that
/// gave the two paths (--init / --init-config for `aim train --init`).
CheckpointRef find_checkpoint(const std::string& path, const std::string& config_override = "",
                              const std::string& flag = "--ckpt", const std::string& config_flag = "--config");

/// The model configuration of a checkpoint (YAML: the `model` section; JSON: MambaConfig).
ModelConfig checkpoint_model_config(const CheckpointRef& ref);

/// Model configuration from a config file of either kind (.yaml/.yml or HF config.json).
ModelConfig model_config_from_file(const std::string& path);

}  // namespace aim
