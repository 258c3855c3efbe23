#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "aim/cli/commands.h"
#include "aim/core/checkpoint.h"
#include "aim/core/config.h"
#include "aim/core/error.h"
#include "aim/core/fileio.h"
#include "aim/core/safetensors.h"
#include "aim/eval/lpips.h"
#include "aim/model/loader.h"
#include "aim/model/registry.h"
#include "aim/model/state_dict.h"
#include "aim/model/vq.h"
#include "aim/train/flops.h"
#include "aim/train/vq_losses.h"

namespace aim::cli {

namespace {

/// Whether a JSON file is a tokenizer's config: an object naming a codebook or the encoder's
/// levels (LlamaGen's or AiM's VQ field names).
bool is_tokenizer_json(const std::string& path) {
  try {
    const auto j = nlohmann::json::parse(read_text(path), nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return false;
    for (const char* key : {"codebook_size", "codebook_embed_dim", "encoder_ch_mult", "n_embed", "embed_dim"})
      if (j.contains(key)) return true;
    return false;
  } catch (const std::exception&) {
    return false;
  }
}

/// A YAML config for `aim train-vq`: a vq section and no model section (configs/vq_*.yaml).
bool is_tokenizer_yaml(const std::string& path) {
  try {
    const auto root = YAML::LoadFile(path);
    return root.IsMap() && !root["model"] && (root["vq"] || root["vq_train"]);
  } catch (const YAML::Exception&) {
    return false;  // load_config() reports it with the line
  }
}

int64_t numel_of(const std::vector<torch::Tensor>& params) {
  int64_t n = 0;
  for (const auto& p : params) n += p.numel();
  return n;
}

/// `aim info` of a tokenizer config: the architecture, parameters by part, and what a training
/// step holds and computes with this config's losses (`training` false: a tokenizer's weights,
/// whose training settings are not known).
std::string describe_tokenizer(const Config& c, bool training = true) {
  const auto& vq = c.vq;
  const auto& vt = c.vq_train;
  const int64_t f = vq.downsample(), side = c.data.image_size / f;
  VqModel model(vq);
  const int64_t enc = numel_of(model->encoder->parameters()), dec = numel_of(model->decoder->parameters());
  const int64_t total = numel_of(model->parameters());
  int64_t disc = 0;
  if (vt.disc_weight > 0) disc = numel_of(train::PatchDiscriminator(vt.disc_channels, vt.disc_layers)->parameters());
  int64_t lpips = 0;
  for (const auto& [name, shape] : eval::lpips_keys()) {
    int64_t n = 1;
    for (const auto d : shape) n *= d;
    lpips += n;
  }
  std::ostringstream os;
  auto row = [&](const std::string& k, const std::string& v) { os << "  " << std::left << std::setw(37) << k << v << "\n"; };
  std::ostringstream mult;
  for (size_t i = 0; i < vq.ch_mult.size(); ++i) mult << (i ? ", " : "") << vq.ch_mult[i];
  os << (training ? "tokenizer (aim train-vq; LlamaGen's VQ architecture)\n" : "tokenizer (LlamaGen's VQ architecture)\n");
  row("ch x ch_mult", str_cat(vq.ch, " x [", mult.str(), "]"));
  row("res blocks per level / z_channels", str_cat(vq.num_res_blocks, " / ", vq.z_channels));
  row("downsample", str_cat(f, ": ", c.data.image_size, " px -> ", side, "x", side, " = ", side * side, " codes"));
  row("codebook", str_cat(vq.codebook_size, " x ", vq.codebook_embed_dim, vq.codebook_l2_norm ? " (l2-normalised)" : ""));
  os << "parameters\n";
  row("encoder", count_str(enc));
  row("decoder", count_str(dec));
  row("codebook + quant convs", count_str(total - enc - dec));
  row("total", count_str(total) + str_cat(" (", std::setprecision(4), static_cast<double>(total) / 1e6, "M)"));
  if (!training) {
    os << "memory (estimates)\n";
    row("weights fp32", bytes_str(4.0 * static_cast<double>(total)));
    return os.str();
  }
  os << "training\n";
  std::ostringstream losses;
  losses << "L1 x " << vt.l1_weight << " + L2 x " << vt.l2_weight;
  if (vt.ssim_weight > 0) losses << " + (1 - SSIM) x " << vt.ssim_weight;
  if (vt.perceptual_weight > 0) losses << " + LPIPS x " << vt.perceptual_weight;
  losses << " + codebook x " << vt.codebook_weight << " (beta " << vt.commit_beta << ")";
  if (vt.entropy_weight > 0) losses << " + entropy x " << vt.entropy_weight;
  if (vt.disc_weight > 0) losses << " + PatchGAN x " << vt.disc_weight << " from step " << vt.disc_start;
  row("losses", losses.str());
  if (vt.disc_weight > 0)
    row("PatchGAN discriminator", str_cat(count_str(disc), " parameters (", vt.disc_channels, " channels, ",
                                          vt.disc_layers, " layers)"));
  if (vt.perceptual_weight > 0) row("LPIPS (VGG16, fixed)", str_cat(count_str(lpips), " parameters, ", vt.lpips));
  const double flops = train::vq_training_flops_per_image(vq, vt, c.data.image_size);
  row("FLOPs per image", str_cat(std::setprecision(4), flops / 1e9, " G (3 x forward",
                                 vt.perceptual_weight > 0 ? ", LPIPS x 3" : "", vt.disc_weight > 0 ? "; PatchGAN not counted" : "",
                                 ")"));
  os << "memory (estimates)\n";
  row("weights fp32", bytes_str(4.0 * static_cast<double>(total)));
  // fp32 weights, gradients and Adam's two moments: 16 bytes per trained parameter.
  const bool with_lpips = vt.perceptual_weight > 0;
  const char* with = disc > 0 && with_lpips ? " (with the PatchGAN and LPIPS's weights)"
                     : disc > 0             ? " (with the PatchGAN)"
                     : with_lpips           ? " (with LPIPS's weights)"
                                            : "";
  row("training: weights+grads+Adam",
      bytes_str(16.0 * static_cast<double>(total + disc) + 4.0 * static_cast<double>(with_lpips ? lpips : 0)) + with);
  return os.str();
}

}  // namespace

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
    // (A .safetensors is judged by SafetensorsFile, once its header does not parse: a real
    // header's length may begin with a pickle's two bytes.)
    if (!checkpoint) refuse_torch_pickle(*path);
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
    const bool tokenizer_config_given =
        !config->empty() && !looks_like_hf_config(*config) && is_tokenizer_json(*config);
    if (checkpoint && (config->empty() || tokenizer_config_given)) {
      // A tokenizer's weights (LlamaGen's VQ converted, beside its NAME.json or given its JSON
      // with --config; or its folder with a config.json): the tokenizer, its weights checked
      // against that config.
      const fs::path p(*path);
      const std::string json = tokenizer_config_given ? *config : tokenizer_json_beside(*path);
      const std::string w = fs::is_directory(p) ? (p / "model.safetensors").string() : *path;
      if (!json.empty() && fs::exists(w) && !holds_language_model(SafetensorsFile(w))) {
        Config c;
        c.vq = vq_config_from_json(json);
        load_vq_model(w, json, "aim info");  // every tensor checked against the config
        std::cout << "config: " << json << "\n" << describe_tokenizer(c, /*training=*/false) << "weights: " << w
                  << " (" << SafetensorsFile(w).entries().size() << " tensors, matching the config)\n";
        return 0;
      }
    }
    if (checkpoint) {
      auto ref = find_checkpoint(*path, *config, "aim info");
      const std::string& cp = ref.config_path;
      if (cp.size() > 5 && cp.compare(cp.size() - 5, 5, ".yaml") == 0) {
        // An aim train-vq run (or its weights with --config): its weights hold the tokenizer only
        // (its config.yaml, of older runs, every section).
        const SafetensorsFile file(ref.weights_path);
        if (!holds_language_model(file) && file.contains("quantize.embedding.weight")) {
          std::cout << "config: " << ref.config_path << "\n"
                    << describe_tokenizer(load_config(ref.config_path, {}, ConfigUse::kTokenizer))
                    << "weights: " << ref.weights_path << " (" << file.entries().size() << " tensors)\n";
          return 0;
        }
      }
      model = checkpoint_model_config(ref);
      source = ref.config_path;
      weights = ref.weights_path;
      if (ref.kind == CheckpointKind::kRunDir) {
        const Config run = load_config(ref.config_path);
        vq = run.vq;
        ema = run.train.ema;  // (the run's memory: its EMA copy too)
      } else if (const std::string vq_json = tokenizer_json_beside(*path); !vq_json.empty()) {
        // A converted AiM checkpoint's own tokenizer (vq.json / NAME.vq.json), as aim sample reads it.
        vq = vq_config_from_json(vq_json);
      }
    } else if (ends_with(".json")) {
      if (!looks_like_hf_config(*path) && is_tokenizer_json(*path)) {
        // A tokenizer's config (LlamaGen's names, as the converter writes NAME.json).
        Config c;
        c.vq = vq_config_from_json(*path);
        std::cout << "config: " << source << "\n" << describe_tokenizer(c, /*training=*/false);
        return 0;
      }
      model = model_config_from_hf_json(*path);
    } else if (is_tokenizer_yaml(*path)) {
      const auto cfg = load_config(*path, *overrides, ConfigUse::kTokenizer);
      std::cout << "config: " << source << "\n" << describe_tokenizer(cfg);
      return 0;
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
      // Against the config's layout, by name and shape, as loading them would check.
      std::map<std::string, std::vector<int64_t>> expected;
      for (const auto& e : official_layout(model)) expected[e.key] = e.shape;
      std::vector<std::string> problems;
      const std::string embedding = "mamba.backbone.embeddings.word_embeddings.weight", head = "mamba.lm_head.weight";
      for (const auto& e : file.entries()) {
        std::string k = "mamba." + strip(e.name);
        if (k.rfind("mamba.backbone.", 0) != 0 && k != head) continue;
        // A tied weight may be stored once, under either name (as the loader takes it).
        if (model.tie_embeddings && k == head && !has_embedding) k = embedding;
        const auto it = expected.find(k);
        if (it == expected.end()) {
          problems.push_back(str_cat("  unexpected: ", e.name, " ", shape_str(e.shape)));
          continue;
        }
        if (it->second != e.shape)
          problems.push_back(str_cat("  shape mismatch: ", e.name, ": checkpoint ", shape_str(e.shape), ", config ",
                                     shape_str(it->second)));
        expected.erase(it);
      }
      if (model.tie_embeddings) expected.erase(head);  // the embedding's, when not stored
      for (const auto& [k, shape] : expected) problems.push_back(str_cat("  missing: ", k, " ", shape_str(shape)));
      throw_if_problems(problems, weights, str_cat("the weights do not match the config ", source));
    }
    return 0;
  };
}

}  // namespace aim::cli
