#pragma once
#include <string>

#include "aim/core/checkpoint.h"
#include "aim/core/safetensors.h"
#include "aim/model/aim.h"
#include "aim/model/vq.h"

namespace aim {

/// Builds the model a checkpoint describes and loads its weights (with `use_ema`, the EMA weights
/// of a run directory: an error when it has none). Throws aim::Error naming the file on any
/// mismatch.
AimModel load_aim_model(const CheckpointRef& ref, bool use_ema = false);

/// Decodes image token j at position j + `offset` from now on (0: training's positions; 1: the
/// official decoder's), whatever the checkpoint recorded. Throws aim::Error naming `what` (the
/// flag or key that asked) for any other value.
void set_decode_position_offset(AimModel& model, int64_t offset, const std::string& what);

/// Whether `file` holds a language model's tensors (mamba.* or backbone.*): an AiM or Mamba run's
/// weights, not a tokenizer's alone.
bool holds_language_model(const SafetensorsFile& file);

/// A tokenizer and where it came from.
struct LoadedVq {
  VqModel model{nullptr};
  std::string identity;  ///< "<file name> (<bytes> bytes, fnv64 <digest>)": recorded in datasets and samples
};

/// The tokenizer config JSON that describes `path`: for a folder its config.json or vq.json, for a
/// weights file NAME.json or NAME.vq.json beside it, or the folder's config.json or vq.json (the
/// vq.json names: tools/convert_checkpoint.py's for an AiM checkpoint's vqvae.* tokenizer); one
/// that is an AiM MambaConfig does not count. "" when there is none.
std::string tokenizer_json_beside(const std::string& path);

/// Loads a tokenizer from a .safetensors file (LlamaGen keys, or AiM's `vqvae.` keys), an
/// official AiM snapshot directory, or one of our run directories. The configuration comes from
/// `config_path` when given, else `<file stem>.json` / `config.json` beside the weights (see
/// vq_config_from_json), else our run's config.yaml, else the full VQ-16 defaults. Errors name
/// `path` after `flag`, the option or config key that gave it.
LoadedVq load_vq_model(const std::string& path, const std::string& config_path = "", const std::string& flag = "--vq");

/// Writes the model's weights in the official layout to `path` (atomically).
void save_aim_model(const AimModel& model, const std::string& path);

}  // namespace aim
