// Derived defaults (resolve) and the range rules of every config section (validate). Each rule's
// message names the full dotted key, the expected range and the value found, so that a user can
// fix the file or the `--set` flag without reading code.
#include <cmath>
#include <initializer_list>
#include <sstream>
#include <string>

#include "aim/core/config.h"
#include "aim/core/error.h"

namespace aim {
namespace {

std::string num(double v) {
  std::ostringstream os;
  os.precision(10);
  os << v;
  return os.str();
}

[[noreturn]] void fail(const std::string& key, const std::string& expected,
                       const std::string& found, const std::string& hint = "") {
  std::string msg = str_cat("key '", key, "': expected ", expected, ", found ", found);
  if (!hint.empty()) msg += str_cat(" ---> HINT: ", hint);
  throw Error(msg);
}

void int_at_least(const std::string& key, int64_t v, int64_t lo, const std::string& hint = "") {
  if (v < lo) fail(key, str_cat("an integer >= ", lo), std::to_string(v), hint);
}

void int_in(const std::string& key, int64_t v, int64_t lo, int64_t hi,
            const std::string& hint = "") {
  if (v < lo || v > hi) fail(key, str_cat("an integer in [", lo, ", ", hi, "]"), std::to_string(v), hint);
}

void positive(const std::string& key, double v) {
  if (!(v > 0)) fail(key, "a number > 0", num(v));
}

void non_negative(const std::string& key, double v) {
  if (!(v >= 0)) fail(key, "a number >= 0", num(v));
}

/// [0, 1): probabilities of dropping something and decay rates.
void unit_half_open(const std::string& key, double v) {
  if (!(v >= 0 && v < 1)) fail(key, "a number in [0, 1)", num(v));
}

void one_of(const std::string& key, const std::string& v, std::initializer_list<const char*> options) {
  std::string expected;
  for (const char* o : options) {
    if (v == o) return;
    expected += expected.empty() ? "" : " | ";
    expected += str_cat("'", o, "'");
  }
  fail(key, str_cat("one of ", expected), str_cat("'", v, "'"));
}

bool is_perfect_square(int64_t n) {
  if (n < 0) return false;
  auto r = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(n))));
  for (int64_t c = std::max<int64_t>(r - 1, 0); c <= r + 1; ++c)
    if (c * c == n) return true;
  return false;
}

}  // namespace

// ------------------------------------------------------------------------------------ model

void SsmConfig::validate() const {
  one_of("model.ssm.layer", layer, {"Mamba2", "Mamba1"});
  // 0 is allowed here: it means "the default of `layer`" until ModelConfig::resolve().
  int_in("model.ssm.d_state", d_state, 0, 256,
         "0 means the default of the layer (128 for Mamba2, 16 for Mamba1)");
  int_in("model.ssm.d_conv", d_conv, 2, 4, "the causal conv1d supports widths 2, 3 and 4");
  int_at_least("model.ssm.expand", expand, 1);
  int_at_least("model.ssm.headdim", headdim, 1);
  int_at_least("model.ssm.ngroups", ngroups, 1);
  int_at_least("model.ssm.chunk_size", chunk_size, 1);
  int_at_least("model.ssm.dt_rank", dt_rank, 0, "0 means \"auto\" = ceil(d_model / 16)");
  positive("model.ssm.dt_min", dt_min);
  if (!(dt_max >= dt_min))
    fail("model.ssm.dt_max", str_cat("a number >= model.ssm.dt_min (", num(dt_min), ")"), num(dt_max));
  non_negative("model.ssm.dt_init_floor", dt_init_floor);
  positive("model.ssm.dt_scale", dt_scale);
  positive("model.ssm.a_init_min", a_init_min);
  if (!(a_init_max >= a_init_min))
    fail("model.ssm.a_init_max", str_cat("a number >= model.ssm.a_init_min (", num(a_init_min), ")"),
         num(a_init_max));
}

void ModelConfig::resolve() {
  if (ssm.d_state == 0) {
    if (ssm.layer == "Mamba2") ssm.d_state = 128;
    if (ssm.layer == "Mamba1") ssm.d_state = 16;
  }
  if (ssm.layer == "Mamba1" && ssm.dt_rank == 0 && d_model > 0) ssm.dt_rank = dt_rank();
}

int64_t ModelConfig::dt_rank() const {
  return ssm.dt_rank > 0 ? ssm.dt_rank : (d_model + 15) / 16;
}

void ModelConfig::validate() const {
  int_at_least("model.d_model", d_model, 1);
  int_at_least("model.n_layer", n_layer, 1);
  if (d_intermediate != 0)
    fail("model.d_intermediate", "0", std::to_string(d_intermediate),
         "the block variant with a gated MLP (d_intermediate > 0) is not supported: no published "
         "AiM size uses it");
  int_in("model.vocab_size", vocab_size, 2, 65536, "codes are stored as uint16");
  int_in("model.num_classes", num_classes, 1, 32768, "class labels are stored as int16");
  int_at_least("model.num_tokens", num_tokens, 1);
  if (!is_perfect_square(num_tokens))
    fail("model.num_tokens", "a perfect square (tokens form a square grid: 256 = 16x16)",
         std::to_string(num_tokens));
  if (adaln_group) int_at_least("model.num_groups", num_groups, 1);
  if (!rms_norm)
    fail("model.rms_norm", "true", "false",
         "the LayerNorm variant (rms_norm: false) is not supported: every AiM size uses RMSNorm");
  int_at_least("model.pad_vocab_size_multiple", pad_vocab_size_multiple, 1);
  positive("model.norm_eps", norm_eps);
  unit_half_open("model.token_drop", token_drop);
  unit_half_open("model.mixer_drop", mixer_drop);
  unit_half_open("model.mlp_drop", mlp_drop);
  unit_half_open("model.class_dropout", class_dropout);
  positive("model.initializer_range", initializer_range);
  int_in("model.decode_position_offset", decode_position_offset, 0, 1,
         "1 is the official decoder's convention, 0 matches training positions");

  ssm.validate();
  ModelConfig m = *this;  // the rules below need the layer defaults filled in
  m.resolve();
  int_in("model.ssm.d_state", m.ssm.d_state, 1, 256);
  if (m.is_mamba2()) {
    if (m.d_inner() % m.ssm.headdim != 0)
      fail("model.ssm.headdim",
           str_cat("a divisor of d_inner = model.ssm.expand * model.d_model = ", m.d_inner()),
           std::to_string(m.ssm.headdim));
    if (m.nheads() % m.ssm.ngroups != 0)
      fail("model.ssm.ngroups",
           str_cat("a divisor of the number of heads d_inner / headdim = ", m.nheads()),
           std::to_string(m.ssm.ngroups));
  }
}

// ------------------------------------------------------------------------------------ other sections

int64_t VqConfig::downsample() const {
  return ch_mult.empty() ? 1 : int64_t{1} << (ch_mult.size() - 1);
}

void VqConfig::validate() const {
  int_in("vq.codebook_size", codebook_size, 2, 65536, "codes are stored as uint16");
  int_at_least("vq.codebook_embed_dim", codebook_embed_dim, 1);
  int_at_least("vq.ch", ch, 1);
  int_at_least("vq.norm_groups", norm_groups, 1);
  if (ch_mult.empty() || ch_mult.size() > 8)
    fail("vq.ch_mult", "a list of 1 to 8 multipliers", str_cat(ch_mult.size(), " entries"));
  for (size_t i = 0; i < ch_mult.size(); ++i) {
    int_at_least(str_cat("vq.ch_mult[", i, "]"), ch_mult[i], 1);
    if ((ch * ch_mult[i]) % norm_groups != 0)
      fail("vq.ch", str_cat("a width such that every vq.ch * vq.ch_mult[i] is a multiple of vq.norm_groups (",
                            norm_groups, ")"),
           str_cat(ch, " (vq.ch * vq.ch_mult[", i, "] = ", ch * ch_mult[i], ")"),
           "the tokenizer's GroupNorm layers split the channels into vq.norm_groups groups");
  }
  int_at_least("vq.z_channels", z_channels, 1);
  int_at_least("vq.num_res_blocks", num_res_blocks, 1);
  unit_half_open("vq.dropout", dropout);
}

void DataConfig::validate() const {
  int_in("data.image_size", image_size, 1, 4096);
  one_of("data.aug", aug, {"", "tencrop", "flip", "none"});
  if (!(crop_ratio >= 1.0 && crop_ratio <= 4.0))
    fail("data.crop_ratio", "a number in [1, 4]", num(crop_ratio),
         "images are resized to image_size * crop_ratio before cropping (official: 1.125)");
  int_at_least("data.num_workers", num_workers, 0);
}

double OptimConfig::peak_lr(int64_t global_batch) const {
  if (lr > 0) return lr;
  return base_lr * static_cast<double>(global_batch) / static_cast<double>(base_batch);
}

void OptimConfig::validate() const {
  positive("optim.base_lr", base_lr);
  int_at_least("optim.base_batch", base_batch, 1);
  if (!(lr >= 0))
    fail("optim.lr", "a number >= 0 (0 = base_lr * train.global_batch / base_batch)", num(lr));
  if (betas.size() != 2)
    fail("optim.betas", "a list of two numbers [beta1, beta2]", str_cat(betas.size(), " numbers"));
  unit_half_open("optim.betas[0]", betas[0]);
  unit_half_open("optim.betas[1]", betas[1]);
  positive("optim.eps", eps);
  non_negative("optim.weight_decay", weight_decay);
  non_negative("optim.grad_clip", grad_clip);
}

void ScheduleConfig::validate() const {
  one_of("schedule.type", type, {"linear", "constant", "cosine"});
  int_at_least("schedule.warmup_steps", warmup_steps, 0);
  unit_half_open("schedule.warmup_ratio", warmup_ratio);
  if (warmup_steps > 0 && warmup_ratio > 0)
    fail("schedule.warmup_ratio", "0 when schedule.warmup_steps is set", num(warmup_ratio),
         "give the warm-up either in steps or as a ratio of the run, not both");
  if (!(min_lr_ratio >= 0 && min_lr_ratio <= 1))
    fail("schedule.min_lr_ratio", "a number in [0, 1]", num(min_lr_ratio));
}

void TrainConfig::validate() const {
  int_at_least("train.epochs", epochs, 1);
  int_at_least("train.max_steps", max_steps, 0);
  int_at_least("train.global_batch", global_batch, 1);
  int_at_least("train.micro_batch", micro_batch, 1);
  if (global_batch % micro_batch != 0)
    fail("train.global_batch", str_cat("a multiple of train.micro_batch (", micro_batch, ")"),
         std::to_string(global_batch),
         "global_batch = micro_batch * ranks * gradient accumulation steps");
  one_of("train.precision", precision, {"bf16", "fp32", "auto"});
  unit_half_open("train.ema_decay", ema_decay);
  int_at_least("train.seed", seed, 0);
  int_at_least("train.ckpt_every", ckpt_every, 0);
  int_at_least("train.keep_last", keep_last, 1);
  int_at_least("train.log_every", log_every, 1);
  int_at_least("train.sample_every", sample_every, 0);
  int_at_least("train.eval_every", eval_every, 0);
  int_at_least("train.eval_batches", eval_batches, 0);
  int_at_least("train.recompute_every", recompute_every, 0, "0 keeps every activation");
  non_negative("train.peak_tflops", peak_tflops);
  int_at_least("train.fid_every", fid_every, 0);
  int_at_least("train.fid_samples", fid_samples, 2, "a covariance needs two images");
  non_negative("train.fid_cfg", fid_cfg);
}

void SampleConfig::validate() const {
  // The bounds of aim sample's --cfg and --temperature (SamplingOptions::validate).
  if (!(cfg_scale >= 0 && cfg_scale <= 100)) fail("sample.cfg_scale", "a number in [0, 100]", num(cfg_scale), "");
  if (!(temperature >= 1e-4 && temperature <= 1e4))
    fail("sample.temperature", "a number in [1e-4, 1e4]", num(temperature), "top_k 1 samples greedily");
  int_at_least("sample.top_k", top_k, 0, "0 turns top-k filtering off");
  if (!(top_p > 0 && top_p <= 1))
    fail("sample.top_p", "a number in (0, 1]", num(top_p), "1.0 turns top-p filtering off");
  if (!(cfg_top_p > 0 && cfg_top_p <= 1))
    fail("sample.cfg_top_p", "a number in (0, 1]", num(cfg_top_p), "1.0 guides over the whole vocabulary");
  int_at_least("sample.seed", seed, 0);
  int_at_least("sample.batch_size", batch_size, 1);
  int_at_least("sample.num_samples", num_samples, 1);
  one_of("sample.dtype", dtype, {"auto", "bf16", "fp32"});
}

void DistConfig::validate() const {
  one_of("dist.backend", backend, {"auto", "nccl", "gloo"});
  int_at_least("dist.timeout_s", timeout_s, 1);
}

// ------------------------------------------------------------------------------------ whole config

void Config::resolve() {
  if (name.empty()) name = "run";
  model.resolve();
  if (train.out_dir.empty()) train.out_dir = "runs/" + name;
}

void VqTrainConfig::validate() const {
  non_negative("vq_train.l1_weight", l1_weight);
  non_negative("vq_train.l2_weight", l2_weight);
  non_negative("vq_train.ssim_weight", ssim_weight);
  if (l1_weight + l2_weight <= 0)
    fail("vq_train.l2_weight", "a positive weight for at least one reconstruction loss",
         str_cat(num(l2_weight), " (vq_train.l1_weight ", num(l1_weight), ")"));
  non_negative("vq_train.perceptual_weight", perceptual_weight);
  if (perceptual_weight > 0 && lpips.empty())
    fail("vq_train.lpips", "the LPIPS weights file that vq_train.perceptual_weight > 0 needs", "''",
         "convert torchvision's vgg16-397923af.pth and LPIPS's vgg.pth with tools/convert_checkpoint.py "
         "--kind lpips (README, \"Training a tokenizer\")");
  non_negative("vq_train.codebook_weight", codebook_weight);
  non_negative("vq_train.commit_beta", commit_beta);
  non_negative("vq_train.entropy_weight", entropy_weight);
  positive("vq_train.entropy_temperature", entropy_temperature);
  int_at_least("vq_train.restart_every", restart_every, 0);
  one_of("vq_train.crop", crop, {"resize", "llamagen"});
  non_negative("vq_train.disc_weight", disc_weight);
  int_at_least("vq_train.disc_start", disc_start, 0);
  int_in("vq_train.disc_channels", disc_channels, 1, 4096);
  int_in("vq_train.disc_layers", disc_layers, 1, 8);
  non_negative("vq_train.disc_lr", disc_lr);
  int_in("vq_train.eval_images", eval_images, 1, 4096);
}

void Config::validate(ConfigUse use) const {
  if (name.empty())
    fail("name", "a non-empty run name", "''");
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-' || c == '.';
    if (!ok)
      fail("name", "letters, digits, '_', '-' and '.' only (it names the run directory)",
           str_cat("'", name, "'"));
  }
  // ("." or "..": train.out_dir runs/<name> would be runs/ itself or the folder above it.)
  if (name.find_first_not_of('.') == std::string::npos)
    fail("name", "a name other than dots alone (it names the run directory, runs/<name>)", str_cat("'", name, "'"));
  if (use != ConfigUse::kTokenizer) model.validate();
  if (use == ConfigUse::kModel) return;
  vq.validate();
  data.validate();
  optim.validate();
  schedule.validate();
  train.validate();
  if (use != ConfigUse::kTokenizer) sample.validate();
  dist.validate();
  vq_train.validate();
  if (use == ConfigUse::kTokenizer) {
    if (data.image_size % vq.downsample() != 0)
      fail("data.image_size",
           str_cat("a multiple of the tokenizer's downsampling factor ", vq.downsample(),
                   " (2^(len(vq.ch_mult)-1))"),
           std::to_string(data.image_size));
    if (vq_train.perceptual_weight > 0 && data.image_size < 16)
      fail("data.image_size", "at least 16 with vq_train.perceptual_weight > 0 (LPIPS's VGG16 pools four times)",
           std::to_string(data.image_size));
    if (vq_train.disc_weight > 0) {
      // The PatchGAN halves the image disc_layers times, then its two stride-1 4x4 convolutions
      // need 3 pixels: found here, not at the first adversarial step (vq_train.disc_start).
      int64_t fit = 0;
      while (fit < 8 && (data.image_size >> (fit + 1)) >= 3) ++fit;
      if (fit == 0)
        fail("data.image_size", "at least 6 with vq_train.disc_weight > 0 (the PatchGAN discriminator)",
             std::to_string(data.image_size));
      if (vq_train.disc_layers > fit)
        fail("vq_train.disc_layers",
             str_cat("at most ", fit, " for data.image_size ", data.image_size,
                     " (each layer halves the image; the PatchGAN's last two convolutions need 3 px)"),
             std::to_string(vq_train.disc_layers));
    }
    return;
  }

  if (vq.codebook_size != model.vocab_size)
    fail("vq.codebook_size", str_cat("model.vocab_size (", model.vocab_size, ")"),
         std::to_string(vq.codebook_size), "the language model predicts tokenizer codes");
  const int64_t ds = vq.downsample();
  if (data.image_size % ds != 0)
    fail("data.image_size",
         str_cat("a multiple of the tokenizer's downsampling factor ", ds, " (2^(len(vq.ch_mult)-1))"),
         std::to_string(data.image_size));
  const int64_t grid = data.image_size / ds;
  if (grid * grid != model.num_tokens)
    fail("model.num_tokens",
         str_cat("(data.image_size / ", ds, ")^2 = ", grid, "x", grid, " = ", grid * grid),
         std::to_string(model.num_tokens), "one token per tokenizer code of the image");
  if (train.fid_every > 0 && train.fid_ref.empty())
    fail("train.fid_ref", "an ADM reference batch .npz with train.fid_every > 0", "''",
         "VIRTUAL_imagenet256_labeled.npz from ADM's evaluation suite (README, Evaluation)");
  if (train.fid_every > 0 && train.fid_inception.empty())
    fail("train.fid_inception", "FID Inception-v3 weights with train.fid_every > 0", "''",
         "tools/convert_checkpoint.py pt_inception-2015-12-05-6726825d.pth --kind inception");
  if (train.fid_every > 0 && vq.weights.empty())
    fail("vq.weights", str_cat("the tokenizer that decodes the samples, with train.fid_every ", train.fid_every), "''",
         "the tokenizer data.codes were extracted with, or train.fid_every=0");
}

}  // namespace aim
