#include "aim/model/loader.h"

#include <filesystem>

#include "aim/core/error.h"
#include "aim/core/fileio.h"
#include "aim/core/safetensors.h"

namespace aim {

AimModel load_aim_model(const CheckpointRef& ref, bool use_ema) {
  AIM_CHECK(!use_ema || !ref.ema_path.empty(), "--ema: ", ref.path, " has no EMA weights (",
            ref.kind == CheckpointKind::kRunDir ? "no ema.safetensors beside model.safetensors: the run trained with "
                                                  "train.ema false"
                                                : "only aim run directories hold them",
            ")\n---> HINT: leave out --ema to use the model's weights");
  AimModel model(checkpoint_model_config(ref));
  const std::string weights = use_ema ? ref.ema_path : ref.weights_path;
  SafetensorsFile file(weights);
  load_official_state_dict(model, file.load_all(), weights);
  model->eval();
  return model;
}

void set_decode_position_offset(AimModel& model, int64_t offset, const std::string& what) {
  AIM_CHECK(offset == 0 || offset == 1, what, ": expected 0 (training's positions) or 1 (the official decoder's), ",
            "found ", offset);
  model->config.decode_position_offset = offset;
}

bool holds_language_model(const SafetensorsFile& file) {
  for (const auto& e : file.entries())
    if (e.name.rfind("mamba.", 0) == 0 || e.name.rfind("backbone.", 0) == 0) return true;
  return false;
}

std::string tokenizer_json_beside(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  // (An AiM checkpoint's own MambaConfig there describes the language model, not a tokenizer.)
  const fs::path p(path);
  // vq.json / NAME.vq.json: what tools/convert_checkpoint.py writes for an AiM checkpoint's vqvae.*.
  const std::vector<fs::path> candidates =
      fs::is_directory(p, ec)
          ? std::vector<fs::path>{p / "config.json", p / "vq.json"}
          : std::vector<fs::path>{fs::path(p).replace_extension(".json"), fs::path(p).replace_extension(".vq.json"),
                                  p.parent_path() / "config.json", p.parent_path() / "vq.json"};
  for (const auto& c : candidates)
    if (fs::exists(c, ec) && !looks_like_hf_config(c.string())) return c.string();
  return "";
}

LoadedVq load_vq_model(const std::string& path, const std::string& config_path, const std::string& flag) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error(str_cat(flag, " ", path, ": no such file or directory"));
  std::string weights = path;
  VqConfig cfg;
  bool have_cfg = false;
  if (!config_path.empty()) {
    cfg = vq_config_from_json(config_path);
    have_cfg = true;
  }
  if (fs::is_directory(path)) {
    fs::path dir(path);
    // A training run directory (aim train-vq): its newest complete checkpoint.
    if (!fs::exists(dir / "model.safetensors", ec) && fs::exists(dir / "latest", ec)) {
      std::string rel = read_text((dir / "latest").string());
      while (!rel.empty() && (rel.back() == '\n' || rel.back() == ' ')) rel.pop_back();
      if (!fs::is_directory(dir / rel, ec))
        throw Error(str_cat(flag, " ", path, ": 'latest' names ", rel, ", which does not exist"));
      dir /= rel;
    }
    weights = (dir / "model.safetensors").string();
    if (!have_cfg && fs::exists(dir / "config.yaml")) {
      cfg = load_config((dir / "config.yaml").string(), {}, ConfigUse::kTokenizer).vq;
      have_cfg = true;
    } else if (const std::string json = have_cfg ? "" : tokenizer_json_beside(dir.string()); !json.empty()) {
      cfg = vq_config_from_json(json);  // a tokenizer's folder
      have_cfg = true;
    }
    // An official AiM snapshot (its config.json a MambaConfig) carries the full VQ-16 under
    // `vqvae.`: the defaults.
  } else if (!have_cfg) {
    // (Beside an AiM checkpoint with only its MambaConfig, the vqvae.* tokenizer is the full
    // VQ-16: the defaults.)
    const std::string json = tokenizer_json_beside(path);
    if (!json.empty()) {
      cfg = vq_config_from_json(json);
      have_cfg = true;
    }
  }
  SafetensorsFile file(weights);
  std::string prefix;
  bool tokenizer = false, language_model = false;
  for (const auto& e : file.entries()) {
    if (e.name.rfind("vqvae.", 0) == 0) {
      prefix = "vqvae.";
      tokenizer = true;
      break;
    }
    tokenizer |= e.name.rfind("encoder.", 0) == 0 || e.name.rfind("decoder.", 0) == 0 ||
                 e.name.rfind("quantize.", 0) == 0;
    language_model |= e.name.rfind("mamba.", 0) == 0 || e.name.rfind("backbone.", 0) == 0;
  }
  // A language model saved without its tokenizer (save_pretrained, a trainer's state dict of the
  // Mamba part) would otherwise list every one of its tensors as unexpected.
  AIM_CHECK(tokenizer || !language_model, weights, ": holds a language model's tensors (mamba.* / backbone.*) ",
            "but no tokenizer (neither vqvae.* nor encoder.* / decoder.* / quantize.*)\n---> HINT: pass the ",
            "tokenizer with --vq (LlamaGen's vq_ds16_c2i, converted with tools/convert_checkpoint.py)");
  LoadedVq out;
  out.model = VqModel(cfg);
  const auto tensors = file.load_all();
  try {
    load_vq_state_dict(out.model, tensors, weights, prefix);
  } catch (const Error& e) {
    if (have_cfg) throw;
    // Weights of another architecture than the assumed one: say what was assumed, and why.
    std::string what = e.what();
    what = what.substr(0, what.find("\n---> HINT"));
    throw Error(str_cat(flag, " ", path, ": no tokenizer config was found for ", weights,
                        ", so it was read as the built-in VQ-16 (LlamaGen's vq_ds16_c2i), which it is not:\n", what,
                        "\n---> HINT: pass its config: ",
                        flag == "vq.weights" ? std::string()
                        : flag == "--init"   ? std::string("--init-config CONFIG, or ")
                                             : std::string("--vq-config CONFIG.json, or "),
                        "NAME.json (or, for an AiM checkpoint's vqvae.*, vq.json) beside the weights as "
                        "tools/convert_checkpoint.py writes it"));
  }
  out.model->eval();
  // The digest tells a retrained tokenizer from the old one (same name and size): a code dataset
  // made with one is not resumed or reused with the other.
  out.identity = file_identity(weights);
  return out;
}

void save_aim_model(const AimModel& model, const std::string& path) {
  save_safetensors(path, official_state_dict(model), {{"format", "pt"}});
}

}  // namespace aim
