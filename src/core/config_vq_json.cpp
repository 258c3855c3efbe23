// Tokenizer configurations written as JSON by LlamaGen-style tools and by our converter.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <sstream>

#include "aim/core/config.h"
#include "aim/core/error.h"

namespace aim {

VqConfig vq_config_from_json(const std::string& path, const std::string& object_path) {
  std::ifstream in(path);
  if (!in) throw Error(str_cat(path, ": cannot open tokenizer config"));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(str_cat(path, ": not valid JSON: ", e.what()));
  }
  std::string where;
  std::stringstream parts(object_path);
  std::string part;
  while (std::getline(parts, part, '.')) {
    if (part.empty()) continue;
    where += (where.empty() ? "" : ".") + part;
    if (!j.is_object() || !j.contains(part)) throw Error(str_cat(path, ": no object '", where, "'"));
    j = j[part];
  }
  if (!j.is_object()) throw Error(str_cat(path, ": '", object_path, "' is not an object"));
  // An AiM model's config.json (given by mistake as a tokenizer config) would otherwise read as
  // the defaults: nothing in it is a tokenizer field.
  for (const char* lm : {"d_model", "n_layer", "ssm_cfg", "vocab_size"}) {
    if (j.contains(lm) && !j.contains("codebook_size") && !j.contains("n_embed"))
      throw Error(str_cat(path, ": a language model's config (field '", lm, "'), not a tokenizer's\n---> HINT: ",
                          "give the tokenizer's JSON (codebook_size, encoder_ch_mult, ...), e.g. the one "
                          "tools/convert_checkpoint.py writes beside its weights"));
  }
  // Every field is one this reader knows: a misspelled one ("codebok_size") would otherwise
  // leave the default in place and fail later as a shape mismatch of some tensor, or not at all.
  {
    static const char* const kRead[] = {
        "codebook_size", "n_embed", "codebook_embed_dim", "embed_dim", "z_channels", "ch", "num_res_blocks",
        "norm_groups", "group_norm_groups", "codebook_l2_norm", "dropout_p", "in_channels", "out_channels",
        "norm_type", "encoder_ch_mult", "ch_mult", "decoder_ch_mult", "group_norm_eps", "resamp_with_conv",
        "downsample_factor"};
    // Training settings of LlamaGen's ModelArgs, and AiM's VQConfig.attn_resolutions (its code
    // puts attention at the last level whatever the list says): not part of what is built here.
    static const char* const kNotRead[] = {"codebook_show_usage", "commit_loss_beta", "entropy_loss_ratio",
                                           "attn_resolutions"};
    std::vector<std::string> ignored;
    for (const auto& item : j.items()) {
      const std::string& key = item.key();
      bool known = false;
      for (const char* k : kRead) known |= key == k;
      for (const char* k : kNotRead) known |= key == k;
      if (known || key.empty() || key[0] == '_') continue;  // "_comment", "_name_or_path": by convention not fields
      // A slip is a few edits of a name of some length: every short key ("id", "lr") is within
      // two edits of "ch", and "dropout" (VQGAN's name) is a field of its own, not a typo.
      std::string best;
      size_t best_d = std::string::npos;
      for (const char* k : kRead) {
        const size_t d = edit_distance(key, k);
        if (d < best_d) best = k, best_d = d;
      }
      const size_t shorter = std::min(key.size(), best.size());
      if (key.size() > 3 && best_d <= std::max<size_t>(1, shorter / 4))
        throw Error(str_cat(path, ": unknown field '", key, "'\n---> HINT: did you mean '", best, "'?"));
      ignored.push_back(key);
    }
    if (!ignored.empty()) {
      std::string names;
      for (const auto& k : ignored) names += (names.empty() ? "'" : ", '") + k + "'";
      std::cerr << "warning: " << path << ": field" << (ignored.size() > 1 ? "s " : " ") << names
                << " not read (not a tokenizer setting this reader knows)\n";
    }
  }
  VqConfig c;
  auto get_int = [&](std::initializer_list<const char*> names, int64_t& out) {
    for (const char* n : names) {
      if (!j.contains(n)) continue;
      if (!j[n].is_number_integer()) throw Error(str_cat(path, ": field '", n, "': expected an integer, found ", j[n].dump()));
      out = j[n].get<int64_t>();
      return;
    }
  };
  auto get_list = [&](const char* n, std::vector<int64_t>& out) {
    if (!j.contains(n)) return false;
    if (!j[n].is_array()) throw Error(str_cat(path, ": field '", n, "': expected a list of integers, found ", j[n].dump()));
    out.clear();
    for (const auto& v : j[n]) {
      if (!v.is_number_integer()) throw Error(str_cat(path, ": field '", n, "': expected integers, found ", v.dump()));
      out.push_back(v.get<int64_t>());
    }
    return true;
  };
  get_int({"codebook_size", "n_embed"}, c.codebook_size);
  get_int({"codebook_embed_dim", "embed_dim"}, c.codebook_embed_dim);
  get_int({"z_channels"}, c.z_channels);
  get_int({"ch"}, c.ch);
  get_int({"num_res_blocks"}, c.num_res_blocks);
  get_int({"norm_groups", "group_norm_groups"}, c.norm_groups);
  if (j.contains("codebook_l2_norm")) {
    if (!j["codebook_l2_norm"].is_boolean())
      throw Error(str_cat(path, ": field 'codebook_l2_norm': expected true or false, found ", j["codebook_l2_norm"].dump()));
    c.codebook_l2_norm = j["codebook_l2_norm"].get<bool>();
  }
  if (j.contains("dropout_p")) {
    if (!j["dropout_p"].is_number())
      throw Error(str_cat(path, ": field 'dropout_p': expected a number, found ", j["dropout_p"].dump()));
    c.dropout = j["dropout_p"].get<double>();
  }
  // Fields of the architecture that this tokenizer fixes: a file saying otherwise is refused
  // rather than read as something it is not.
  for (const char* n : {"in_channels", "out_channels"}) {
    if (j.contains(n) && !(j[n].is_number_integer() && j[n].get<int64_t>() == 3))
      throw Error(str_cat(path, ": field '", n, "': expected 3 (RGB), found ", j[n].dump()));
  }
  if (j.contains("norm_type") && j["norm_type"] != "group")
    throw Error(str_cat(path, ": field 'norm_type': expected \"group\" (LlamaGen's GroupNorm), found ",
                        j["norm_type"].dump()));
  if (j.contains("group_norm_eps") && !(j["group_norm_eps"].is_number() &&
                                        std::abs(j["group_norm_eps"].get<double>() - 1e-6) <= 1e-12))
    throw Error(str_cat(path, ": field 'group_norm_eps': expected 1e-06 (LlamaGen's GroupNorm), found ",
                        j["group_norm_eps"].dump()));
  if (j.contains("resamp_with_conv") && j["resamp_with_conv"] != true)
    throw Error(str_cat(path, ": field 'resamp_with_conv': expected true (strided and upsampling convolutions), "
                              "found ", j["resamp_with_conv"].dump()));
  if (!get_list("encoder_ch_mult", c.ch_mult)) get_list("ch_mult", c.ch_mult);
  if (j.contains("downsample_factor")) {
    const int64_t factor = int64_t{1} << std::clamp<int64_t>(static_cast<int64_t>(c.ch_mult.size()) - 1, 0, 62);
    if (!(j["downsample_factor"].is_number_integer() && j["downsample_factor"].get<int64_t>() == factor))
      throw Error(str_cat(path, ": field 'downsample_factor': ", c.ch_mult.size(), " levels of ch_mult downsample by ",
                          factor, ", found ", j["downsample_factor"].dump()));
  }
  std::vector<int64_t> dec;
  if (get_list("decoder_ch_mult", dec) && dec != c.ch_mult) {
    throw Error(str_cat(path, ": field 'decoder_ch_mult' differs from 'encoder_ch_mult': "
                              "only symmetric tokenizers are supported"));
  }
  try {
    c.validate();
  } catch (const Error& e) {
    // Its rules name the YAML keys (vq.ch, ...): say which file held the values.
    throw Error(str_cat(path, ": ", e.what(), " (the JSON fields codebook_size, encoder_ch_mult, ch, norm_groups, ... "
                                              "are vq.* here)"));
  }
  return c;
}

}  // namespace aim
