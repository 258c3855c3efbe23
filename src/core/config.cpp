// The field registry of the config structs and everything built on it: YAML loading with
// unknown-key detection, `--set` overrides, YAML dumping, the resolved-config table, equality.
//
// Each struct lists its keys once as {key, pointer to member, doc}; flatten() turns a Config into
// one ordered list of {dotted key, typed pointer}. Adding a field to a struct and to its list is
// all it takes for every feature here to know it.
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <variant>

#include "aim/core/config.h"
#include "aim/core/error.h"

namespace aim {
namespace {

// ------------------------------------------------------------------------------------ registry

template <class S>
using Member = std::variant<int64_t S::*, double S::*, bool S::*, std::string S::*,
                            std::vector<int64_t> S::*, std::vector<double> S::*>;

template <class S>
struct Field {
  const char* key;
  Member<S> member;
  const char* doc;
};

const std::vector<Field<SsmConfig>>& ssm_fields() {
  using S = SsmConfig;
  static const std::vector<Field<S>> f = {
      {"layer", &S::layer, "mixer: Mamba2 | Mamba1"},
      {"d_state", &S::d_state, "state size N; 0 = layer default (128 Mamba2, 16 Mamba1)"},
      {"d_conv", &S::d_conv, "causal conv width (2..4)"},
      {"expand", &S::expand, "d_inner = expand * d_model"},
      {"headdim", &S::headdim, "Mamba2 head dim P"},
      {"ngroups", &S::ngroups, "Mamba2 B/C groups"},
      {"chunk_size", &S::chunk_size, "Mamba2 SSD chunk length (speed only)"},
      {"dt_rank", &S::dt_rank, "Mamba1 dt rank; 0 = auto = ceil(d_model / 16)"},
      {"dt_min", &S::dt_min, "init: dt log-uniform in [dt_min, dt_max]"},
      {"dt_max", &S::dt_max, "init: dt upper bound"},
      {"dt_init_floor", &S::dt_init_floor, "init: dt lower clamp"},
      {"dt_scale", &S::dt_scale, "Mamba1 dt_proj init scale"},
      {"a_init_min", &S::a_init_min, "Mamba2 init: A uniform in [a_init_min, a_init_max]"},
      {"a_init_max", &S::a_init_max, "Mamba2 init: A upper bound"},
      {"conv_bias", &S::conv_bias, "bias in the causal conv"},
      {"bias", &S::bias, "bias in in_proj / out_proj"},
      {"rmsnorm", &S::rmsnorm, "Mamba2 gated RMSNorm before out_proj"},
      {"norm_before_gate", &S::norm_before_gate, "Mamba2 gated-norm order (official false)"},
      {"d_has_hdim", &S::d_has_hdim, "Mamba2 D per channel instead of per head"},
  };
  return f;
}

const std::vector<Field<ModelConfig>>& model_fields() {
  using S = ModelConfig;
  static const std::vector<Field<S>> f = {
      {"d_model", &S::d_model, "width D"},
      {"n_layer", &S::n_layer, "number of Mamba blocks"},
      {"d_intermediate", &S::d_intermediate, "MLP width; must be 0 (no MLP)"},
      {"vocab_size", &S::vocab_size, "token vocabulary V (= vq.codebook_size)"},
      {"num_classes", &S::num_classes, "classes; the table has one more row (null class)"},
      {"num_tokens", &S::num_tokens, "image tokens L (square grid)"},
      {"adaln_group", &S::adaln_group, "shared adaLN-group (true) or per-layer adaLN (false)"},
      {"num_groups", &S::num_groups, "adaLN groups G"},
      {"rms_norm", &S::rms_norm, "RMSNorm (must be true)"},
      {"residual_in_fp32", &S::residual_in_fp32, "keep the residual stream in fp32"},
      {"fused_add_norm", &S::fused_add_norm, "fused residual add + norm"},
      {"tie_embeddings", &S::tie_embeddings, "lm_head shares the token embedding"},
      {"pad_vocab_size_multiple", &S::pad_vocab_size_multiple, "accepted, unused (no padding)"},
      {"norm_eps", &S::norm_eps, "RMSNorm epsilon"},
      {"token_drop", &S::token_drop, "dropout on token embeddings (training)"},
      {"mixer_drop", &S::mixer_drop, "accepted, unused by the official code"},
      {"mlp_drop", &S::mlp_drop, "accepted, unused by the official code"},
      {"class_dropout", &S::class_dropout, "P(label -> null class) while training"},
      {"initializer_range", &S::initializer_range, "std of the embedding init"},
      {"decode_position_offset", &S::decode_position_offset,
       "decoding position of token t is t + offset (official 1)"},
  };
  return f;
}

const std::vector<Field<VqConfig>>& vq_fields() {
  using S = VqConfig;
  static const std::vector<Field<S>> f = {
      {"codebook_size", &S::codebook_size, "codes K (= model.vocab_size)"},
      {"codebook_embed_dim", &S::codebook_embed_dim, "code vector width"},
      {"codebook_l2_norm", &S::codebook_l2_norm, "l2-normalised codebook lookup"},
      {"ch", &S::ch, "base channels"},
      {"ch_mult", &S::ch_mult, "channel multipliers; downsample 2^(len-1)"},
      {"z_channels", &S::z_channels, "latent channels"},
      {"num_res_blocks", &S::num_res_blocks, "residual blocks per level"},
      {"norm_groups", &S::norm_groups, "GroupNorm groups (LlamaGen: 32)"},
      {"dropout", &S::dropout, "dropout in residual blocks"},
      {"weights", &S::weights, "tokenizer .safetensors"},
  };
  return f;
}

const std::vector<Field<DataConfig>>& data_fields() {
  using S = DataConfig;
  static const std::vector<Field<S>> f = {
      {"codes", &S::codes, "code dataset (aim extract-codes)"},
      {"images", &S::images, "image folder (class sub-folders)"},
      {"image_size", &S::image_size, "square crop in pixels"},
      {"aug", &S::aug, "views: tencrop | flip | none (codes must hold them); \"\" = as the codes hold"},
      {"crop_ratio", &S::crop_ratio, "resize short side to image_size * crop_ratio, then crop"},
      {"num_workers", &S::num_workers, "loader threads per rank"},
      {"shuffle", &S::shuffle, "reshuffle every epoch"},
      {"val_codes", &S::val_codes, "held-out code dataset; empty = none"},
  };
  return f;
}

const std::vector<Field<OptimConfig>>& optim_fields() {
  using S = OptimConfig;
  static const std::vector<Field<S>> f = {
      {"base_lr", &S::base_lr, "lr per base_batch images"},
      {"base_batch", &S::base_batch, "batch base_lr refers to"},
      {"lr", &S::lr, "absolute peak lr; 0 = base_lr * global_batch / base_batch"},
      {"betas", &S::betas, "AdamW [beta1, beta2]"},
      {"eps", &S::eps, "AdamW epsilon"},
      {"weight_decay", &S::weight_decay, "on parameters with >= 2 dims"},
      {"grad_clip", &S::grad_clip, "max global grad norm; 0 = off"},
  };
  return f;
}

const std::vector<Field<ScheduleConfig>>& schedule_fields() {
  using S = ScheduleConfig;
  static const std::vector<Field<S>> f = {
      {"type", &S::type, "linear | constant | cosine (after warm-up)"},
      {"warmup_steps", &S::warmup_steps, "warm-up steps"},
      {"warmup_ratio", &S::warmup_ratio, "warm-up as a fraction of all steps"},
      {"min_lr_ratio", &S::min_lr_ratio, "final lr / peak lr (linear, cosine)"},
  };
  return f;
}

const std::vector<Field<TrainConfig>>& train_fields() {
  using S = TrainConfig;
  static const std::vector<Field<S>> f = {
      {"epochs", &S::epochs, "passes over the data"},
      {"max_steps", &S::max_steps, "stop after this many steps; 0 = all epochs"},
      {"global_batch", &S::global_batch, "images per optimizer step, all ranks"},
      {"micro_batch", &S::micro_batch, "images per forward/backward per rank"},
      {"precision", &S::precision, "bf16 | fp32 | auto (bf16 on CUDA sm80+ and AMX CPUs, else fp32)"},
      {"ema", &S::ema, "keep an EMA of the weights"},
      {"ema_decay", &S::ema_decay, "EMA decay per step"},
      {"seed", &S::seed, "random seed"},
      {"ckpt_every", &S::ckpt_every, "steps between checkpoints; 0 = end only"},
      {"keep_last", &S::keep_last, "checkpoints kept"},
      {"log_every", &S::log_every, "steps between log lines"},
      {"sample_every", &S::sample_every, "steps between sample grids; 0 = never"},
      {"eval_every", &S::eval_every, "steps between held-out losses; 0 = never"},
      {"eval_batches", &S::eval_batches, "held-out loss over eval_batches x global_batch images spread over the set; 0 = all"},
      {"tensorboard", &S::tensorboard, "also write TensorBoard events (<run>/tensorboard/)"},
      {"skip_nonfinite", &S::skip_nonfinite, "skip NaN/inf steps instead of stopping"},
      {"recompute_every", &S::recompute_every, "recompute every N-th block's activations in the backward; 0 = off"},
      {"peak_tflops", &S::peak_tflops, "device peak TFLOP/s for MFU; 0 = known GPUs"},
      {"fid_every", &S::fid_every, "steps between FIDs while training; 0 = never"},
      {"fid_samples", &S::fid_samples, "images per FID (all ranks)"},
      {"fid_ref", &S::fid_ref, "FID reference batch .npz (ADM's VIRTUAL_imagenet256_labeled.npz)"},
      {"fid_inception", &S::fid_inception, "FID Inception weights (convert_checkpoint.py --kind inception)"},
      {"fid_cfg", &S::fid_cfg, "FID guidance scale; 0 (the default) = the published FIDs' (1.75 adaLN-group, else 2.0)"},
      {"out_dir", &S::out_dir, "run directory; empty = runs/<name>"},
  };
  return f;
}

const std::vector<Field<SampleConfig>>& sample_fields() {
  using S = SampleConfig;
  static const std::vector<Field<S>> f = {
      {"cfg_scale", &S::cfg_scale, "classifier-free guidance scale"},
      {"temperature", &S::temperature, "softmax temperature"},
      {"top_k", &S::top_k, "keep the k most likely tokens; 0 = off"},
      {"top_p", &S::top_p, "nucleus mass; 1 = off"},
      {"cfg_top_p", &S::cfg_top_p, "guide only among the conditional top-p tokens; 1 = off"},
      {"seed", &S::seed, "random seed"},
      {"batch_size", &S::batch_size, "images per batch per rank"},
      {"num_samples", &S::num_samples, "images for an evaluation run"},
      {"dtype", &S::dtype, "auto | bf16 | fp32"},
  };
  return f;
}

const std::vector<Field<VqTrainConfig>>& vq_train_fields() {
  using S = VqTrainConfig;
  static const std::vector<Field<S>> f = {
      {"l1_weight", &S::l1_weight, "L1 reconstruction loss weight"},
      {"l2_weight", &S::l2_weight, "L2 reconstruction loss weight"},
      {"ssim_weight", &S::ssim_weight, "1 - SSIM reconstruction loss weight; 0 = off"},
      {"perceptual_weight", &S::perceptual_weight, "LPIPS perceptual loss weight; 0 = off"},
      {"lpips", &S::lpips, "LPIPS weights (.safetensors, convert_checkpoint.py --kind lpips)"},
      {"lpips_dropout", &S::lpips_dropout, "LPIPS dropout on while training (LlamaGen)"},
      {"codebook_weight", &S::codebook_weight, "codebook + commitment + entropy weight"},
      {"commit_beta", &S::commit_beta, "commitment loss factor"},
      {"entropy_weight", &S::entropy_weight, "codebook entropy loss weight; 0 = off"},
      {"entropy_temperature", &S::entropy_temperature, "entropy loss softmax temperature"},
      {"restart_every", &S::restart_every, "steps between dead-code restarts; 0 = never"},
      {"hflip", &S::hflip, "random horizontal flips"},
      {"crop", &S::crop, "resize (short side to data.crop_ratio x size, random crop) | llamagen (random_crop_arr)"},
      {"disc_weight", &S::disc_weight, "PatchGAN loss weight; 0 = no discriminator"},
      {"disc_start", &S::disc_start, "first step (1-based) with the adversarial losses"},
      {"disc_channels", &S::disc_channels, "PatchGAN base width"},
      {"disc_layers", &S::disc_layers, "PatchGAN stride-2 layers"},
      {"disc_lr", &S::disc_lr, "discriminator lr; 0 = the generator's"},
      {"eval_images", &S::eval_images, "images in reconstruction grids and PSNR"},
  };
  return f;
}

const std::vector<Field<DistConfig>>& dist_fields() {
  using S = DistConfig;
  static const std::vector<Field<S>> f = {
      {"backend", &S::backend, "auto | nccl | gloo"},
      {"timeout_s", &S::timeout_s, "collective timeout in seconds"},
  };
  return f;
}

using Ref = std::variant<int64_t*, double*, bool*, std::string*, std::vector<int64_t>*,
                         std::vector<double>*>;

struct Slot {
  std::string key;
  Ref ref;
  const char* doc;
};

template <class S>
void add_section(std::vector<Slot>& out, const std::string& prefix, S& s,
                 const std::vector<Field<S>>& fields) {
  for (const auto& f : fields)
    std::visit([&](auto m) { out.push_back({prefix + f.key, Ref(&(s.*m)), f.doc}); }, f.member);
}

/// Every key of `c` in file order. Keys of one section are contiguous, and a nested section
/// follows its parent's own keys, so the list can be printed as nested YAML in one pass.
std::vector<Slot> flatten(Config& c) {
  std::vector<Slot> out;
  out.push_back({"name", Ref(&c.name), "run name"});
  add_section(out, "model.", c.model, model_fields());
  add_section(out, "model.ssm.", c.model.ssm, ssm_fields());
  add_section(out, "vq.", c.vq, vq_fields());
  add_section(out, "data.", c.data, data_fields());
  add_section(out, "optim.", c.optim, optim_fields());
  add_section(out, "schedule.", c.schedule, schedule_fields());
  add_section(out, "train.", c.train, train_fields());
  add_section(out, "sample.", c.sample, sample_fields());
  add_section(out, "dist.", c.dist, dist_fields());
  add_section(out, "vq_train.", c.vq_train, vq_train_fields());
  return out;
}

/// Read-only use of flatten(): the pointers are only dereferenced for reading.
std::vector<Slot> flatten(const Config& c) { return flatten(const_cast<Config&>(c)); }

std::string section_of(const std::string& key) {
  const auto dot = key.rfind('.');
  return dot == std::string::npos ? "" : key.substr(0, dot);
}

std::string leaf_of(const std::string& key) {
  const auto dot = key.rfind('.');
  return dot == std::string::npos ? key : key.substr(dot + 1);
}

/// All section paths ("model", "model.ssm", ...).
std::set<std::string> sections(const std::vector<Slot>& slots) {
  std::set<std::string> out;
  for (const auto& s : slots) {
    std::string sec = section_of(s.key);
    while (!sec.empty()) {
      out.insert(sec);
      sec = section_of(sec);
    }
  }
  return out;
}

ConfigType type_of(const Ref& r) {
  switch (r.index()) {
    case 0: return ConfigType::kInt;
    case 1: return ConfigType::kDouble;
    case 2: return ConfigType::kBool;
    case 3: return ConfigType::kString;
    case 4: return ConfigType::kIntList;
    default: return ConfigType::kDoubleList;
  }
}

// ------------------------------------------------------------------------------------ suggestions

size_t levenshtein(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

/// " ---> HINT: did you mean 'x'?" for the closest valid key, or a list of the keys of the
/// section the unknown key sits in.
std::string unknown_key_hint(const std::string& key, const std::vector<Slot>& slots) {
  std::vector<std::string> candidates;
  for (const auto& s : slots) candidates.push_back(s.key);
  for (const auto& s : sections(slots)) candidates.push_back(s);

  // The right name in the wrong section ("train.lr") is the likeliest slip.
  std::string best;
  size_t best_d = std::string::npos;
  for (const auto& c : candidates) {
    if (leaf_of(c) != leaf_of(key)) continue;
    const size_t d = levenshtein(key, c);
    if (d < best_d) best = c, best_d = d;
  }
  if (best.empty()) {
    for (const auto& c : candidates) {
      const size_t d = levenshtein(key, c);
      if (d < best_d) best = c, best_d = d;
    }
    if (best_d > std::max<size_t>(2, key.size() / 3)) best.clear();
  }
  if (!best.empty()) return str_cat(" ---> HINT: did you mean '", best, "'?");

  std::string sec = section_of(key);
  const auto secs = sections(slots);
  while (!sec.empty() && !secs.count(sec)) sec = section_of(sec);
  std::string keys;
  for (const auto& s : slots) {
    if (section_of(s.key) != sec) continue;
    keys += keys.empty() ? "" : ", ";
    keys += leaf_of(s.key);
  }
  if (sec.empty()) {
    for (const auto& s : secs)
      if (s.find('.') == std::string::npos) keys += ", " + s;
    return str_cat(" ---> HINT: top-level keys are ", keys);
  }
  return str_cat(" ---> HINT: keys under '", sec, "' are ", keys);
}

// ------------------------------------------------------------------------------------ values

/// Shortest decimal text that reads back to exactly `v`.
std::string format_double(double v) {
  char buf[64];
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof(buf), "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string s = buf;
  // Keep the value visibly a float ("1.0", not "1") so that the dump reads as its type.
  if (std::isfinite(v) && s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned char>(c));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

/// The value as YAML (`quoted` strings) or as table text (raw strings).
std::string format_value(const Ref& r, bool quoted) {
  struct V {
    bool quoted;
    std::string operator()(const int64_t* p) const { return std::to_string(*p); }
    std::string operator()(const double* p) const { return format_double(*p); }
    std::string operator()(const bool* p) const { return *p ? "true" : "false"; }
    std::string operator()(const std::string* p) const {
      return quoted || p->empty() ? quote(*p) : *p;
    }
    std::string operator()(const std::vector<int64_t>* p) const {
      std::string s = "[";
      for (size_t i = 0; i < p->size(); ++i) s += (i ? ", " : "") + std::to_string((*p)[i]);
      return s + "]";
    }
    std::string operator()(const std::vector<double>* p) const {
      std::string s = "[";
      for (size_t i = 0; i < p->size(); ++i) s += (i ? ", " : "") + format_double((*p)[i]);
      return s + "]";
    }
  };
  return std::visit(V{quoted}, r);
}

bool equal_values(const Ref& a, const Ref& b) {
  return std::visit(
      [&](auto pa) {
        using P = decltype(pa);
        return *pa == *std::get<P>(b);
      },
      a);
}

/// Where a value came from, for messages: "configs/x.yaml" or "--set a.b=c".
struct Source {
  std::string what;
  bool from_file = true;
};

std::string location(const Source& src, const YAML::Node& node) {
  if (!src.from_file) return "";
  const YAML::Mark m = node.Mark();
  if (m.is_null()) return "";
  return str_cat(" (line ", m.line + 1, ", column ", m.column + 1, ")");
}

std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null: return "nothing (null)";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Scalar: return str_cat("'", node.Scalar(), "'");
    default: return "an undefined value";
  }
}

[[noreturn]] void type_error(const Source& src, const std::string& key, const YAML::Node& node,
                             const std::string& expected, const std::string& found = "") {
  throw Error(str_cat(src.what, ": key '", key, "': expected ", expected, ", found ",
                      found.empty() ? describe(node) : found, location(src, node)));
}

bool parse_int(const std::string& text, int64_t* out) {
  if (text.empty()) return false;
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (errno == ERANGE || end != text.c_str() + text.size()) return false;
  // strtoll skips leading blanks; a config value must not start with one either.
  if (std::isspace(static_cast<unsigned char>(text[0]))) return false;
  *out = v;
  return true;
}

bool parse_double(const std::string& text, double* out) {
  if (text.empty() || std::isspace(static_cast<unsigned char>(text[0]))) return false;
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size() || !std::isfinite(v)) return false;
  *out = v;
  return true;
}

bool parse_bool(const std::string& text, bool* out) {
  std::string t = text;
  std::transform(t.begin(), t.end(), t.begin(), [](unsigned char c) { return std::tolower(c); });
  if (t == "true" || t == "yes" || t == "on") return *out = true, true;
  if (t == "false" || t == "no" || t == "off") return *out = false, true;
  return false;
}

int64_t scalar_int(const Source& src, const std::string& key, const YAML::Node& n,
                   const char* expected) {
  int64_t v = 0;
  if (!n.IsScalar() || !parse_int(n.Scalar(), &v)) {
    double d = 0;
    if (n.IsScalar() && parse_double(n.Scalar(), &d))
      type_error(src, key, n, expected, str_cat("'", n.Scalar(), "' (not a whole number)"));
    type_error(src, key, n, expected);
  }
  return v;
}

double scalar_double(const Source& src, const std::string& key, const YAML::Node& n,
                     const char* expected) {
  double v = 0;
  if (!n.IsScalar() || !parse_double(n.Scalar(), &v)) type_error(src, key, n, expected);
  return v;
}

/// Stores YAML `node` into the field `ref` named `key`, checking the type.
void assign(const Ref& ref, const YAML::Node& node, const std::string& key, const Source& src) {
  struct A {
    const YAML::Node& n;
    const std::string& key;
    const Source& src;
    void operator()(int64_t* p) const { *p = scalar_int(src, key, n, "an integer"); }
    void operator()(double* p) const { *p = scalar_double(src, key, n, "a number"); }
    void operator()(bool* p) const {
      bool v = false;
      if (!n.IsScalar() || !parse_bool(n.Scalar(), &v)) type_error(src, key, n, "true or false");
      *p = v;
    }
    void operator()(std::string* p) const {
      if (n.IsNull()) *p = "";
      else if (n.IsScalar()) *p = n.Scalar();
      else type_error(src, key, n, "a string");
    }
    void operator()(std::vector<int64_t>* p) const {
      if (!n.IsSequence()) type_error(src, key, n, "a list of integers such as [1, 2]");
      std::vector<int64_t> v;
      for (size_t i = 0; i < n.size(); ++i)
        v.push_back(scalar_int(src, str_cat(key, "[", i, "]"), n[i], "an integer"));
      *p = std::move(v);
    }
    void operator()(std::vector<double>* p) const {
      if (!n.IsSequence()) type_error(src, key, n, "a list of numbers such as [0.9, 0.95]");
      std::vector<double> v;
      for (size_t i = 0; i < n.size(); ++i)
        v.push_back(scalar_double(src, str_cat(key, "[", i, "]"), n[i], "a number"));
      *p = std::move(v);
    }
  };
  std::visit(A{node, key, src}, ref);
}

/// Walks the mapping `node` found at section path `prefix` ("" at top level). `seen` holds every
/// key given so far in the file, whether nested or dotted ("model.d_model: 8" at the top level):
/// one given both ways is refused, as one given twice in a mapping is.
void fill(Config& c, const YAML::Node& node, const std::string& prefix, const Source& src,
          const std::vector<Slot>& slots, const std::map<std::string, size_t>& index,
          const std::set<std::string>& secs, std::set<std::string>& seen) {
  for (auto it = node.begin(); it != node.end(); ++it) {
    if (!it->first.IsScalar())
      throw Error(str_cat(src.what, ": ", prefix.empty() ? "top level" : "section '" + prefix + "'",
                          ": expected key names, found ", describe(it->first),
                          location(src, it->first)));
    const std::string key = prefix.empty() ? it->first.Scalar() : prefix + "." + it->first.Scalar();
    if (!seen.insert(key).second)
      throw Error(str_cat(src.what, ": key '", key, "' appears twice (nested or dotted)", location(src, it->first)));
    const YAML::Node& value = it->second;
    if (auto f = index.find(key); f != index.end()) {
      assign(slots[f->second].ref, value, key, src);
    } else if (secs.count(key)) {
      if (value.IsNull()) continue;  // "vq:" with nothing under it: all defaults
      if (!value.IsMap())
        throw Error(str_cat(src.what, ": key '", key, "': expected a section (a mapping of keys), found ",
                            describe(value), location(src, value)));
      fill(c, value, key, src, slots, index, secs, seen);
    } else {
      throw Error(str_cat(src.what, ": unknown key '", key, "'", location(src, it->first),
                          unknown_key_hint(key, slots)));
    }
  }
}

void fill_from_yaml(Config& c, const YAML::Node& root, const Source& src) {
  if (!root || root.IsNull()) return;  // empty file: every default
  if (!root.IsMap())
    throw Error(str_cat(src.what, ": expected a mapping of sections (model:, optim:, ...) at the top "
                        "level, found ", describe(root), location(src, root)));
  const auto slots = flatten(c);
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < slots.size(); ++i) index[slots[i].key] = i;
  std::set<std::string> seen;
  fill(c, root, "", src, slots, index, sections(slots), seen);
}

YAML::Node parse_yaml(const std::string& text, const std::string& what) {
  try {
    return YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw Error(str_cat(what, ": YAML syntax error at line ", e.mark.line + 1, ", column ",
                        e.mark.column + 1, ": ", e.msg));
  } catch (const YAML::Exception& e) {
    throw Error(str_cat(what, ": cannot parse YAML: ", e.what()));
  }
}

Config build(const std::string& text, const std::string& what,
             const std::vector<std::string>& overrides, const std::string& default_name,
             ConfigUse use) {
  Config c;
  fill_from_yaml(c, parse_yaml(text, what), Source{what, true});
  for (const auto& o : overrides) apply_override(c, o);
  if (c.name.empty()) c.name = default_name;
  c.resolve();
  try {
    c.validate(use);
  } catch (const Error& e) {
    throw Error(str_cat(what, overrides.empty() ? "" : " with --set overrides", ": ", e.what()));
  }
  return c;
}

std::string file_stem(const std::string& path) {
  std::string base = path.substr(path.find_last_of('/') + 1);
  const auto dot = base.rfind('.');
  if (dot != std::string::npos && dot > 0) base = base.substr(0, dot);
  return base;
}

}  // namespace

// ------------------------------------------------------------------------------------ public API

std::vector<ConfigKeyInfo> config_keys() {
  Config c;
  std::vector<ConfigKeyInfo> out;
  for (const auto& s : flatten(c)) out.push_back({s.key, type_of(s.ref), s.doc});
  return out;
}

std::string config_value(const Config& config, const std::string& key) {
  const auto slots = flatten(config);
  for (const auto& s : slots)
    if (s.key == key) return format_value(s.ref, true);
  throw Error(str_cat("unknown config key '", key, "'", unknown_key_hint(key, slots)));
}

bool operator==(const Config& a, const Config& b) {
  const auto sa = flatten(a), sb = flatten(b);
  for (size_t i = 0; i < sa.size(); ++i)
    if (!equal_values(sa[i].ref, sb[i].ref)) return false;
  return true;
}

bool operator==(const ModelConfig& a, const ModelConfig& b) {
  Config ca, cb;
  ca.model = a;
  cb.model = b;
  return ca == cb;
}

Config load_config(const std::string& yaml_path, const std::vector<std::string>& overrides,
                   ConfigUse use) {
  std::error_code ec;
  if (std::filesystem::is_directory(yaml_path, ec))
    throw Error(str_cat(yaml_path, ": is a folder, not a YAML config",
                        std::filesystem::exists(std::filesystem::path(yaml_path) / "config.yaml", ec)
                            ? str_cat(" ---> HINT: a run directory: aim train --resume ", yaml_path,
                                      " (or give its config.yaml)")
                            : std::string()));
  std::ifstream in(yaml_path, std::ios::binary);
  if (!in)
    throw Error(str_cat(yaml_path, ": cannot open the config file (", std::strerror(errno), ")",
                        " ---> HINT: the shipped configs are configs/aim_b.yaml, aim_l.yaml, "
                        "aim_xl.yaml, aim_1b.yaml and tiny.yaml"));
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(str_cat(yaml_path, ": cannot read the config file"));
  return build(ss.str(), yaml_path, overrides, file_stem(yaml_path), use);
}

Config config_from_yaml_string(const std::string& text, const std::string& what,
                               const std::vector<std::string>& overrides, ConfigUse use) {
  return build(text, what, overrides, "", use);
}

void apply_override(Config& config, const std::string& assignment) {
  const Source src{str_cat("--set ", assignment), false};
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw Error(str_cat(src.what, ": expected section.key=value, found no '='",
                        " ---> HINT: for example --set optim.lr=8e-4"));
  std::string key = assignment.substr(0, eq);
  while (!key.empty() && std::isspace(static_cast<unsigned char>(key.back()))) key.pop_back();
  const std::string text = assignment.substr(eq + 1);

  const auto slots = flatten(config);
  const Slot* slot = nullptr;
  for (const auto& s : slots)
    if (s.key == key) slot = &s;
  if (slot == nullptr) {
    if (sections(slots).count(key)) {
      std::string example;
      for (const auto& s : slots)
        if (example.empty() && section_of(s.key) == key)
          example = s.key + "=" + format_value(s.ref, false);
      throw Error(str_cat(src.what, ": '", key, "' is a section, not a key",
                          " ---> HINT: set one key at a time, e.g. --set ", example));
    }
    throw Error(str_cat(src.what, ": unknown key '", key, "'", unknown_key_hint(key, slots)));
  }
  if (auto* str = std::get_if<std::string*>(&slot->ref)) {
    // A string (a path, a name) is taken as written: read as YAML, "runs/a #2" would lose " #2"
    // as a comment and "x: y" would be a mapping. A YAML-quoted value is unquoted.
    std::string v = text;
    while (!v.empty() && std::isspace(static_cast<unsigned char>(v.back()))) v.pop_back();
    v.erase(0, std::min(v.size(), v.find_first_not_of(" \t")));
    if (!v.empty() && (v.front() == '"' || v.front() == '\'')) {
      assign(slot->ref, parse_yaml(v, src.what), key, src);
    } else {
      **str = v;
    }
    return;
  }
  assign(slot->ref, parse_yaml(text, src.what), key, src);
}

Config tokenizer_config(Config config) {
  config.model = ModelConfig{};
  config.model.resolve();
  config.sample = SampleConfig{};
  return config;
}

std::string config_to_yaml(const Config& config, ConfigUse use) {
  auto slots = flatten(config);
  if (use == ConfigUse::kTokenizer) {
    slots.erase(std::remove_if(slots.begin(), slots.end(),
                               [](const Slot& s) { return s.key.rfind("model.", 0) == 0 || s.key.rfind("sample.", 0) == 0; }),
                slots.end());
  }
  size_t width = 0;  // aligns the doc comments
  std::vector<std::string> open;  // section path printed so far
  std::vector<std::pair<std::string, const char*>> rows;
  for (const auto& s : slots) {
    std::vector<std::string> path;
    std::string sec = section_of(s.key);
    for (size_t start = 0; !sec.empty();) {
      const auto dot = sec.find('.', start);
      path.push_back(sec.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
    size_t common = 0;
    while (common < open.size() && common < path.size() && open[common] == path[common]) ++common;
    for (size_t d = common; d < path.size(); ++d)
      rows.push_back({std::string(2 * d, ' ') + path[d] + ":", nullptr});
    open = path;
    std::string line = std::string(2 * path.size(), ' ') + leaf_of(s.key) + ": " +
                       format_value(s.ref, true);
    width = std::max(width, line.size());
    rows.push_back({line, s.doc});
  }
  std::string out = use == ConfigUse::kTokenizer
                        ? "# aim train-vq config (resolved). Load with: aim train-vq <this file>\n"
                        : "# aim config (resolved). Load with: aim train <this file>\n";
  for (const auto& [line, doc] : rows) {
    out += line;
    if (doc != nullptr) out += std::string(width - line.size() + 2, ' ') + "# " + doc;
    out += "\n";
  }
  return out;
}

std::vector<std::string> config_changes(const Config& before, const Config& after) {
  const auto a = flatten(before), b = flatten(after);  // the same keys in the same order
  std::vector<std::string> out;
  for (size_t i = 0; i < a.size(); ++i) {
    const std::string x = format_value(a[i].ref, false), y = format_value(b[i].ref, false);
    if (x != y) out.push_back(str_cat(a[i].key, " ", x, " -> ", y));
  }
  return out;
}

std::string config_table(const Config& config) {
  std::vector<std::pair<std::string, std::string>> rows;
  for (const auto& s : flatten(config)) rows.push_back({s.key, format_value(s.ref, false)});
  const size_t n_keys = rows.size();

  // Values the code derives from the keys, shown so that a run's log is self-explanatory.
  Config r = config;
  r.resolve();
  rows.push_back({"(derived) peak lr", format_double(r.lr())});
  rows.push_back({"(derived) d_inner", std::to_string(r.model.d_inner())});
  if (r.model.is_mamba2() && r.model.ssm.headdim > 0)
    rows.push_back({"(derived) nheads", std::to_string(r.model.nheads())});
  else
    rows.push_back({"(derived) dt_rank", std::to_string(r.model.dt_rank())});
  const int64_t ds = r.vq.downsample();
  rows.push_back({"(derived) token grid",
                  str_cat(r.data.image_size / ds, "x", r.data.image_size / ds, " (downsample ", ds, ")")});

  size_t wk = 3, wv = 5;
  for (const auto& [k, v] : rows) wk = std::max(wk, k.size()), wv = std::max(wv, v.size());
  const std::string rule = "+" + std::string(wk + 2, '-') + "+" + std::string(wv + 2, '-') + "+\n";
  auto row = [&](const std::string& k, const std::string& v) {
    return "| " + k + std::string(wk - k.size(), ' ') + " | " + v + std::string(wv - v.size(), ' ') +
           " |\n";
  };
  std::string out = rule + row("key", "value") + rule;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (i == n_keys) out += rule;
    out += row(rows[i].first, rows[i].second);
  }
  return out + rule;
}

size_t edit_distance(const std::string& a, const std::string& b) { return levenshtein(a, b); }

}  // namespace aim
