// Official AiM Hugging Face `config.json` files (the MambaConfig dataclass of hp-l33/AiM,
// models/stage2/config_mamba.py) to ModelConfig and back.
//
// Defaults follow the official code exactly, which differs from ModelConfig's in two places:
// the dataclass has adaln_group false / num_groups 1, and `ssm_cfg` absent means
// {layer: Mamba2} while an `ssm_cfg` without "layer" (or null) means Mamba1, because
// mamba_ssm's create_block() pops "layer" with the default "Mamba1".
#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "aim/core/config.h"
#include "aim/core/error.h"

namespace aim {
namespace {

using nlohmann::json;

const char* const kMambaConfigFields =
    "d_model, d_intermediate, n_layer, vocab_size, ssm_cfg, attn_layer_idx, attn_cfg, rms_norm, "
    "residual_in_fp32, fused_add_norm, pad_vocab_size_multiple, tie_embeddings, num_classes, "
    "num_tokens, adaln_group, num_groups, token_drop, mixer_drop, mlp_drop";

/// Fields a Hugging Face snapshot may add next to the MambaConfig ones, and our fixtures' notes.
const std::set<std::string> kIgnoredTopLevel = {
    "fixture", "architectures", "transformers_version", "model_type", "_name_or_path", "torch_dtype"};

/// Reads one JSON value with a type check; `field` is the dotted JSON path for messages.
struct Reader {
  std::string path;

  [[noreturn]] void fail(const std::string& field, const std::string& expected, const json& v) const {
    throw Error(str_cat(path, ": field '", field, "': expected ", expected, ", found ", v.dump()));
  }
  int64_t integer(const std::string& field, const json& v) const {
    if (!v.is_number_integer()) fail(field, "an integer", v);
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      fail(field, "an integer that fits in 64 bits", v);
    return v.get<int64_t>();
  }
  double number(const std::string& field, const json& v) const {
    if (!v.is_number()) fail(field, "a number", v);
    return v.get<double>();
  }
  bool boolean(const std::string& field, const json& v) const {
    if (!v.is_boolean()) fail(field, "true or false", v);
    return v.get<bool>();
  }
};

void read_ssm_cfg(const Reader& r, const json& cfg, SsmConfig& ssm) {
  ssm = SsmConfig{};
  ssm.layer = "Mamba1";  // create_block(): ssm_cfg.pop("layer", "Mamba1")
  if (cfg.is_null()) return;
  if (!cfg.is_object()) r.fail("ssm_cfg", "an object of mixer arguments", cfg);
  if (cfg.contains("layer")) {
    const json& l = cfg["layer"];
    if (!l.is_string() || (l != "Mamba1" && l != "Mamba2"))
      r.fail("ssm_cfg.layer", "\"Mamba1\" or \"Mamba2\"", l);
    ssm.layer = l.get<std::string>();
  }
  const bool m2 = ssm.layer == "Mamba2";
  for (const auto& [key, v] : cfg.items()) {
    const std::string f = "ssm_cfg." + key;
    // Arguments of both Mamba (mamba_simple.py) and Mamba2 (mamba2.py), mamba_ssm v2.2.2.
    if (key == "layer") continue;
    else if (key == "d_state") ssm.d_state = r.integer(f, v);
    else if (key == "d_conv") ssm.d_conv = r.integer(f, v);
    else if (key == "expand") ssm.expand = r.integer(f, v);
    else if (key == "dt_min") ssm.dt_min = r.number(f, v);
    else if (key == "dt_max") ssm.dt_max = r.number(f, v);
    else if (key == "dt_init_floor") ssm.dt_init_floor = r.number(f, v);
    else if (key == "conv_bias") ssm.conv_bias = r.boolean(f, v);
    else if (key == "bias") ssm.bias = r.boolean(f, v);
    // Mamba1 only.
    else if (!m2 && key == "dt_rank") {
      if (v.is_string() && v == "auto") ssm.dt_rank = 0;
      else if (v.is_number_integer() && v.get<int64_t>() >= 1) ssm.dt_rank = v.get<int64_t>();
      else r.fail(f, "\"auto\" or an integer >= 1", v);
    } else if (!m2 && key == "dt_scale") ssm.dt_scale = r.number(f, v);
    else if (!m2 && key == "dt_init") {
      if (v != "random")
        throw Error(str_cat(r.path, ": field '", f, "': expected \"random\", found ", v.dump(),
                            " ---> HINT: only the default dt_proj initialisation is supported"));
    } else if (!m2 && key == "use_fast_path") continue;  // kernel choice, same maths
    // Mamba2 only.
    else if (m2 && key == "headdim") ssm.headdim = r.integer(f, v);
    else if (m2 && key == "ngroups") ssm.ngroups = r.integer(f, v);
    else if (m2 && key == "chunk_size") ssm.chunk_size = r.integer(f, v);
    else if (m2 && key == "A_init_range") {
      if (!v.is_array() || v.size() != 2 || !v[0].is_number() || !v[1].is_number())
        r.fail(f, "[min, max]", v);
      ssm.a_init_min = v[0].get<double>();
      ssm.a_init_max = v[1].get<double>();
    } else if (m2 && key == "rmsnorm") ssm.rmsnorm = r.boolean(f, v);
    else if (m2 && key == "norm_before_gate") ssm.norm_before_gate = r.boolean(f, v);
    else if (m2 && key == "D_has_hdim") ssm.d_has_hdim = r.boolean(f, v);
    else if (m2 && (key == "d_ssm" || key == "conv_init")) {
      if (!v.is_null())
        throw Error(str_cat(r.path, ": field '", f, "': expected null, found ", v.dump(),
                            " ---> HINT: ", key == "d_ssm" ? "a partial SSM (d_ssm < d_inner)"
                                                           : "a custom conv initialisation",
                            " is not supported; no published AiM size uses it"));
    } else if (m2 && key == "dt_limit") {
      // mamba_ssm clamps dt to this range in its chunked scan; the default (0, inf) is no clamp
      // (JSON has no inf: a large bound stands for it). Another range would change the model.
      const bool unclamped = v.is_null() || (v.is_array() && v.size() == 2 && v[0].is_number() &&
                                             v[1].is_number() && v[0].get<double>() <= 0.0 &&
                                             v[1].get<double>() >= 1e6);
      if (!unclamped)
        throw Error(str_cat(r.path, ": field '", f, "': expected [0.0, inf] (no clamp), found ", v.dump(),
                            " ---> HINT: a dt clamp is not supported; no published AiM size uses one"));
    } else if (m2 && key == "use_mem_eff_path") continue;
    else
      throw Error(str_cat(r.path, ": field '", f, "' is not an argument of ", ssm.layer,
                          " ---> HINT: ", m2 ? "Mamba2 takes d_state, d_conv, expand, headdim, "
                                               "ngroups, chunk_size, A_init_range, dt_min, dt_max, "
                                               "dt_init_floor, conv_bias, bias, rmsnorm, "
                                               "norm_before_gate, D_has_hdim"
                                             : "Mamba1 takes d_state, d_conv, expand, dt_rank, "
                                               "dt_min, dt_max, dt_init, dt_scale, dt_init_floor, "
                                               "conv_bias, bias"));
  }
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(str_cat(path, ": cannot open (", std::strerror(errno), ")"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json parse_json(const std::string& text, const std::string& path) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    // Report a line and column rather than nlohmann's byte offset.
    size_t line = 1, col = 1;
    for (size_t i = 0; i + 1 < e.byte && i < text.size(); ++i) {
      if (text[i] == '\n') ++line, col = 1;
      else ++col;
    }
    throw Error(str_cat(path, ": invalid JSON at line ", line, ", column ", col, ": ", e.what()));
  }
}

/// A MambaConfig written nested as {"config": {...}} (how some hub mixins save a dataclass
/// argument) is read as its inner object.
json unnested(json j) {
  if (j.is_object() && !j.contains("d_model") && j.contains("config") && j["config"].is_object()) return j["config"];
  return j;
}

}  // namespace

ModelConfig model_config_from_hf_json(const std::string& path) {
  const json j = unnested(parse_json(read_text(path), path));
  const Reader r{path};
  if (!j.is_object()) r.fail("(top level)", "an object of MambaConfig fields", j);

  // The official MambaConfig defaults; our extra fields keep ModelConfig's defaults, which
  // are what the official code does (class dropout 0.1, eps 1e-5, decode offset 1).
  ModelConfig m;
  m.d_model = 1024;
  m.d_intermediate = 0;
  m.n_layer = 48;
  m.vocab_size = 16384;
  m.ssm = SsmConfig{};
  m.ssm.layer = "Mamba2";
  m.rms_norm = true;
  m.residual_in_fp32 = true;
  m.fused_add_norm = true;
  m.pad_vocab_size_multiple = 8;
  m.tie_embeddings = true;
  m.num_classes = 1000;
  m.num_tokens = 256;
  m.adaln_group = false;
  m.num_groups = 1;
  m.token_drop = m.mixer_drop = m.mlp_drop = 0.0;

  for (const auto& [key, v] : j.items()) {
    if (key == "d_model") m.d_model = r.integer(key, v);
    else if (key == "d_intermediate") m.d_intermediate = r.integer(key, v);
    else if (key == "n_layer") m.n_layer = r.integer(key, v);
    else if (key == "vocab_size") m.vocab_size = r.integer(key, v);
    else if (key == "ssm_cfg") read_ssm_cfg(r, v, m.ssm);
    else if (key == "attn_layer_idx") {
      if (!(v.is_null() || (v.is_array() && v.empty())))
        throw Error(str_cat(path, ": field 'attn_layer_idx': expected [], found ", v.dump(),
                            " ---> HINT: hybrid models with attention layers are not supported; "
                            "no published AiM size has them"));
    } else if (key == "attn_cfg") {
      if (!v.is_null() && !v.is_object()) r.fail(key, "an object", v);  // unused without attention
    } else if (key == "rms_norm") m.rms_norm = r.boolean(key, v);
    else if (key == "residual_in_fp32") m.residual_in_fp32 = r.boolean(key, v);
    else if (key == "fused_add_norm") m.fused_add_norm = r.boolean(key, v);
    else if (key == "pad_vocab_size_multiple") m.pad_vocab_size_multiple = r.integer(key, v);
    else if (key == "tie_embeddings") m.tie_embeddings = r.boolean(key, v);
    else if (key == "num_classes") m.num_classes = r.integer(key, v);
    else if (key == "num_tokens") m.num_tokens = r.integer(key, v);
    else if (key == "adaln_group") m.adaln_group = r.boolean(key, v);
    else if (key == "num_groups") m.num_groups = r.integer(key, v);
    else if (key == "token_drop") m.token_drop = r.number(key, v);
    else if (key == "mixer_drop") m.mixer_drop = r.number(key, v);
    else if (key == "mlp_drop") m.mlp_drop = r.number(key, v);
    else if (kIgnoredTopLevel.count(key)) continue;
    else
      throw Error(str_cat(path, ": unknown field '", key, "' ---> HINT: an AiM config.json holds the "
                          "MambaConfig fields ", kMambaConfigFields));
  }
  m.resolve();
  try {
    m.validate();
  } catch (const Error& e) {
    throw Error(str_cat(path, ": ", e.what()));
  }
  return m;
}

bool looks_like_hf_config(const std::string& path) {
  try {
    std::filesystem::path p(path);
    if (std::filesystem::is_directory(p)) p /= "config.json";
    if (!std::filesystem::is_regular_file(p)) return false;
    std::ifstream in(p, std::ios::binary);
    if (!in) return false;
    std::stringstream ss;
    ss << in.rdbuf();
    const json j = unnested(json::parse(ss.str(), nullptr, /*allow_exceptions=*/false));
    return j.is_object() && j.contains("d_model") && j.contains("n_layer");
  } catch (...) {
    return false;
  }
}

std::string model_config_to_hf_json(const ModelConfig& model) {
  ModelConfig m = model;
  m.resolve();
  // ordered_json keeps the dataclass field order, which makes the file easy to compare.
  nlohmann::ordered_json ssm;
  ssm["layer"] = m.ssm.layer;
  ssm["d_state"] = m.ssm.d_state;
  ssm["d_conv"] = m.ssm.d_conv;
  ssm["expand"] = m.ssm.expand;
  if (m.is_mamba2()) {
    ssm["headdim"] = m.ssm.headdim;
    ssm["ngroups"] = m.ssm.ngroups;
    ssm["chunk_size"] = m.ssm.chunk_size;
    ssm["A_init_range"] = {m.ssm.a_init_min, m.ssm.a_init_max};
    ssm["rmsnorm"] = m.ssm.rmsnorm;
    ssm["norm_before_gate"] = m.ssm.norm_before_gate;
    ssm["D_has_hdim"] = m.ssm.d_has_hdim;
  } else {
    ssm["dt_rank"] = m.dt_rank();
    ssm["dt_scale"] = m.ssm.dt_scale;
  }
  ssm["dt_min"] = m.ssm.dt_min;
  ssm["dt_max"] = m.ssm.dt_max;
  ssm["dt_init_floor"] = m.ssm.dt_init_floor;
  ssm["conv_bias"] = m.ssm.conv_bias;
  ssm["bias"] = m.ssm.bias;

  nlohmann::ordered_json j;
  j["d_model"] = m.d_model;
  j["d_intermediate"] = m.d_intermediate;
  j["n_layer"] = m.n_layer;
  j["vocab_size"] = m.vocab_size;
  j["ssm_cfg"] = ssm;
  j["attn_layer_idx"] = nlohmann::ordered_json::array();
  j["attn_cfg"] = nlohmann::ordered_json::object();
  j["rms_norm"] = m.rms_norm;
  j["residual_in_fp32"] = m.residual_in_fp32;
  j["fused_add_norm"] = m.fused_add_norm;
  j["pad_vocab_size_multiple"] = m.pad_vocab_size_multiple;
  j["tie_embeddings"] = m.tie_embeddings;
  j["num_classes"] = m.num_classes;
  j["num_tokens"] = m.num_tokens;
  j["adaln_group"] = m.adaln_group;
  j["num_groups"] = m.num_groups;
  j["token_drop"] = m.token_drop;
  j["mixer_drop"] = m.mixer_drop;
  j["mlp_drop"] = m.mlp_drop;
  return j.dump(2) + "\n";
}

}  // namespace aim
