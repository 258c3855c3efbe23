#pragma once
// Typed configuration: one struct per component, nested like the components, defaults inside,
// validate() beside each. YAML files, `--set section.key=value` overrides and official Hugging
// Face config.json files (MambaConfig fields) all fill the same structs.
#include <cstdint>
#include <string>
#include <vector>

namespace aim {

/// Mixer settings (the official `ssm_cfg`). Defaults are mamba_ssm v2.2.2's Mamba2 defaults;
/// `d_state = 0` means "the default of `layer`" (128 for Mamba2, 16 for Mamba1) and is resolved
/// by ModelConfig::resolve().
struct SsmConfig {
  std::string layer = "Mamba2";  ///< "Mamba2" | "Mamba1"
  int64_t d_state = 0;           ///< N
  int64_t d_conv = 4;            ///< causal conv width
  int64_t expand = 2;            ///< d_inner = expand * d_model
  int64_t headdim = 64;          ///< Mamba2: P
  int64_t ngroups = 1;           ///< Mamba2: B/C groups
  int64_t chunk_size = 256;      ///< Mamba2: SSD chunk (does not change results)
  int64_t dt_rank = 0;           ///< Mamba1: 0 = "auto" = ceil(d_model / 16)
  double dt_min = 0.001;         ///< init: dt log-uniform in [dt_min, dt_max]
  double dt_max = 0.1;
  double dt_init_floor = 1e-4;
  double dt_scale = 1.0;         ///< Mamba1 dt_proj init scale
  double a_init_min = 1.0;       ///< Mamba2 A_log init: A uniform in [a_init_min, a_init_max]
  double a_init_max = 16.0;
  bool conv_bias = true;
  bool bias = false;             ///< in_proj / out_proj bias
  bool rmsnorm = true;           ///< Mamba2 gated RMSNorm before out_proj
  bool norm_before_gate = false; ///< Mamba2 gated-norm order (official: false)
  bool d_has_hdim = false;       ///< Mamba2: D per channel instead of per head

  void validate() const;
};

/// The AiM language model (official MambaConfig fields plus our recorded conventions).
struct ModelConfig {
  int64_t d_model = 1024;
  int64_t n_layer = 48;
  int64_t d_intermediate = 0;     ///< MLP width; the official sizes use 0 (no MLP)
  int64_t vocab_size = 16384;     ///< V, not padded
  int64_t num_classes = 1000;     ///< class table has num_classes + 1 rows (last: null class)
  int64_t num_tokens = 256;       ///< L; position table has num_tokens + 1 rows
  bool adaln_group = true;        ///< shared adaLN-group (true) or per-layer adaLN (false)
  int64_t num_groups = 4;         ///< G for adaLN-group
  bool rms_norm = true;
  bool residual_in_fp32 = true;
  bool fused_add_norm = true;
  bool tie_embeddings = true;
  int64_t pad_vocab_size_multiple = 8;  ///< accepted, unused (the official code does not pad)
  double norm_eps = 1e-5;
  double token_drop = 0.0;        ///< dropout on token embeddings while training
  double mixer_drop = 0.0;        ///< accepted, unused by the official code
  double mlp_drop = 0.0;          ///< accepted, unused by the official code
  double class_dropout = 0.1;     ///< P(label -> null class) while training
  double initializer_range = 0.02;
  /// Position index of image token t during recurrent decoding is t + decode_position_offset.
  /// The official decoder uses 1 (training uses 0); official checkpoints are sampled with 1.
  int64_t decode_position_offset = 1;
  SsmConfig ssm;

  /// Fills layer-dependent defaults (d_state, dt_rank). Idempotent.
  void resolve();
  void validate() const;

  // Derived sizes (valid after resolve()).
  int64_t d_inner() const { return ssm.expand * d_model; }
  int64_t nheads() const { return d_inner() / ssm.headdim; }
  int64_t dt_rank() const;
  bool is_mamba2() const { return ssm.layer == "Mamba2"; }
};


/// The image tokenizer (LlamaGen VQ-16 as used by AiM: models/stage1/vq_model.py). The
/// downsampling factor is 2^(len(ch_mult) - 1), 16 for the default ch_mult.
struct VqConfig {
  int64_t codebook_size = 16384;           ///< K; must equal model.vocab_size
  int64_t codebook_embed_dim = 8;          ///< code vector width
  bool codebook_l2_norm = true;            ///< cosine-similarity lookup (normalised codes)
  int64_t ch = 128;                        ///< base channel width
  std::vector<int64_t> ch_mult = {1, 1, 2, 2, 4};  ///< per-level width multipliers
  int64_t z_channels = 256;                ///< encoder output / decoder input width
  int64_t num_res_blocks = 2;              ///< residual blocks per level
  /// GroupNorm groups (LlamaGen: 32). Not stored in the weights; narrow tokenizers (ch 32) need
  /// fewer, since 32 groups of one channel erase each channel's mean (and with it colour).
  int64_t norm_groups = 32;
  double dropout = 0.0;                    ///< dropout inside the residual blocks
  std::string weights;                     ///< tokenizer .safetensors ("" = none given)

  /// Image pixels per code along one side: 2^(len(ch_mult) - 1).
  int64_t downsample() const;
  void validate() const;
};

/// Training data: pre-extracted codes (aim extract-codes) and/or the images they come from.
struct DataConfig {
  std::string codes;           ///< code dataset directory or file ("" = none given)
  std::string images;          ///< image folder tree (class sub-folders) ("" = none given)
  int64_t image_size = 256;    ///< final square crop, pixels
  /// The views training sees: "tencrop" | "flip" | "none", which data.codes must hold (its
  /// extraction's --aug); with data.images, "flip" adds random flips and "none" is the official
  /// trainer's (tencrop is refused there). "" = whatever the codes hold.
  std::string aug;
  double crop_ratio = 1.125;   ///< resize the short side to image_size * crop_ratio, then crop
  int64_t num_workers = 4;     ///< loader threads per rank
  bool shuffle = true;         ///< reshuffle the samples every epoch
  std::string val_codes;       ///< held-out code dataset for the validation loss ("" = none)

  void validate() const;
};

/// AdamW. The peak learning rate is `lr` when set, else base_lr * global_batch / base_batch
/// (the paper's "1e-4 per 256 images").
struct OptimConfig {
  double base_lr = 1e-4;                    ///< learning rate per base_batch images
  int64_t base_batch = 256;                 ///< batch size base_lr refers to
  double lr = 0.0;                          ///< absolute peak learning rate; 0 = derived
  std::vector<double> betas = {0.9, 0.95};  ///< AdamW (beta1, beta2)
  double eps = 1e-8;                        ///< AdamW epsilon
  double weight_decay = 0.05;               ///< applied to parameters with >= 2 dims only
  double grad_clip = 1.0;                   ///< max global gradient norm; 0 = no clipping

  /// The peak learning rate for a global batch of `global_batch` images.
  double peak_lr(int64_t global_batch) const;
  void validate() const;
};

/// Learning-rate schedule over the whole run: linear warm-up from 0, then `type`.
struct ScheduleConfig {
  std::string type = "linear";  ///< "linear" (to min) | "constant" | "cosine" (to min)
  int64_t warmup_steps = 0;     ///< warm-up length in optimizer steps (exclusive with ratio)
  double warmup_ratio = 0.0;    ///< warm-up length as a fraction of all steps
  double min_lr_ratio = 0.0;    ///< final lr / peak lr for "linear" and "cosine"

  void validate() const;
};

/// The training run.
struct TrainConfig {
  int64_t epochs = 300;
  int64_t max_steps = 0;           ///< stop after this many optimizer steps; 0 = run all epochs
  int64_t global_batch = 256;      ///< images per optimizer step over all ranks
  int64_t micro_batch = 64;        ///< images per forward/backward on one rank
  /// "bf16" (autocast, fp32 master weights) | "fp32" | "auto": bf16 where the device has fast bf16
  /// arithmetic (CUDA sm80+, CPUs with AMX), else fp32 (aim/train/precision.h)
  std::string precision = "auto";
  bool ema = false;                ///< keep an exponential moving average of the weights
  double ema_decay = 0.9999;
  int64_t seed = 0;
  int64_t ckpt_every = 5000;       ///< checkpoint every this many steps; 0 = only at the end
  int64_t keep_last = 2;           ///< checkpoints kept on disk
  int64_t log_every = 50;          ///< steps between log lines
  int64_t sample_every = 0;        ///< steps between sample grids; 0 = never
  int64_t eval_every = 0;          ///< steps between held-out losses (data.val_codes); 0 = never
  int64_t eval_batches = 0;        ///< held-out loss over eval_batches x global_batch images spread over the set; 0 = all
  bool tensorboard = true;         ///< also log metrics.jsonl's numbers and the step pictures to <run>/tensorboard/
  bool skip_nonfinite = false;     ///< skip a step with a NaN/inf loss or gradient (else stop)
  /// Activation checkpointing: blocks 0, N, 2N, ... keep only their inputs and run again in the
  /// backward (less activation memory for about a third more compute at N = 1); 0 = off
  int64_t recompute_every = 0;
  double peak_tflops = 0.0;        ///< device peak for MFU, TFLOP/s; 0 = known GPUs' bf16 peak
  /// FID while training (aim/train/fid_monitor.h): every fid_every steps, fid_samples images
  /// drawn over all ranks as `aim sample --preset fid --labels random` draws them (cfg fid_cfg,
  /// no filters, labels and randomness from sample.seed, batches of sample.batch_size per rank,
  /// weights in sample.dtype, the EMA when kept), decoded by vq.weights, scored by the FID
  /// Inception-v3 against fid_ref's statistics. 0 = never.
  int64_t fid_every = 0;
  int64_t fid_samples = 10000;
  std::string fid_ref;             ///< ADM reference batch .npz (stored mu/sigma, else its images)
  std::string fid_inception;       ///< convert_checkpoint.py --kind inception output
  double fid_cfg = 0.0;            ///< guidance scale; 0 = the published FIDs' (1.75 with adaLN groups, else 2.0)
  std::string out_dir;             ///< run directory; "" = runs/<name> (filled by resolve())

  void validate() const;
};

/// Sampling (aim sample and the samples drawn while training).
struct SampleConfig {
  double cfg_scale = 5.0;       ///< logits = uncond + (cond - uncond) * cfg_scale; 1 = no guidance
  double temperature = 1.0;     ///< 1.0 reproduces the official sampler (which ignores it)
  int64_t top_k = 0;            ///< 0 = off
  double top_p = 1.0;           ///< 1.0 = off
  double cfg_top_p = 1.0;       ///< guide only among the conditional top-p tokens; 1.0 = off
  int64_t seed = 0;
  int64_t batch_size = 32;      ///< images per generation batch (per rank)
  int64_t num_samples = 50000;  ///< images for an evaluation run (ADM .npz)
  std::string dtype = "auto";   ///< "auto" (bf16 on CUDA, fp32 on CPU) | "bf16" | "fp32"

  void validate() const;
};

/// Stage-1 tokenizer training (aim train-vq): LlamaGen's VQ losses. The loss is
///   l1_weight * |x - x'| + l2_weight * (x - x')^2                         (reconstruction)
/// + ssim_weight * (1 - SSIM(x, x'))                                          (structure)
/// + perceptual_weight * LPIPS(x, x')                             (VGG16 LPIPS, as LlamaGen)
/// + codebook_weight * (||sg[z] - z_q||^2 + commit_beta * ||z - sg[z_q]||^2 + entropy_weight * H)
/// + disc_weight * (-D(x')) after disc_start steps                           (PatchGAN, hinge)
/// The discriminator minimises disc_weight * 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x')))
/// (LlamaGen's vq_loss.py).
/// with z and z_q l2-normalised when vq.codebook_l2_norm. Data, optimizer, schedule and run
/// settings come from the data, optim, schedule and train sections.
struct VqTrainConfig {
  double l1_weight = 1.0;            ///< mean absolute reconstruction error
  double l2_weight = 1.0;            ///< mean squared reconstruction error
  double ssim_weight = 0.0;          ///< 1 - structural similarity (LlamaGen: 0, it has LPIPS)
  double perceptual_weight = 0.0;    ///< LPIPS perceptual loss (LlamaGen: 1.0); needs `lpips`
  std::string lpips;                 ///< LPIPS weights (convert_checkpoint.py --kind lpips)
  bool lpips_dropout = true;         ///< LPIPS's dropout active, as in LlamaGen's training
  double codebook_weight = 1.0;      ///< codebook (+ commitment, entropy) loss weight
  double commit_beta = 0.25;         ///< commitment loss factor
  double entropy_weight = 0.0;       ///< entropy loss (LlamaGen: 0 for VQ-16)
  double entropy_temperature = 0.01; ///< softmax temperature of the entropy loss
  int64_t restart_every = 0;         ///< steps between dead-code restarts; 0 = never (LlamaGen)
  bool hflip = true;                 ///< random horizontal flips
  std::string crop = "resize";       ///< "resize" (resize to 1.125 x size, random crop) | "llamagen"
                                     ///< (LlamaGen's random_crop_arr: short side in [size, 1.25 size])
  double disc_weight = 0.0;          ///< PatchGAN generator loss weight; 0 = no discriminator
  int64_t disc_start = 0;            ///< first step (1-based) with the adversarial losses
  int64_t disc_channels = 64;        ///< PatchGAN base width
  int64_t disc_layers = 3;           ///< PatchGAN stride-2 layers
  double disc_lr = 0.0;              ///< discriminator lr; 0 = the generator's peak lr
  int64_t eval_images = 64;          ///< images of the reconstruction grid and held-out PSNR

  void validate() const;
};

/// Multi-process settings (ranks come from MPI or torchrun-style environment variables).
struct DistConfig {
  std::string backend = "auto";  ///< "auto" (nccl on CUDA, gloo on CPU) | "nccl" | "gloo"
  int64_t timeout_s = 1800;      ///< collective timeout, seconds

  void validate() const;
};

/// What a config is loaded for: stage-2 AiM training and sampling (every rule), stage-1
/// tokenizer training (the model and sample sections are not used, so their rules are not
/// applied), or only the model it describes (`--config` beside a weights file: the run name and
/// the model section's rules).
enum class ConfigUse { kAim, kTokenizer, kModel };

/// Everything a run needs. Loaded from YAML (any key may be omitted), then `--set` overrides,
/// then resolve(), then validate().
struct Config {
  std::string name;  ///< run name; load_config() uses the file's stem when it is empty
  ModelConfig model;
  VqConfig vq;
  DataConfig data;
  OptimConfig optim;
  ScheduleConfig schedule;
  TrainConfig train;
  SampleConfig sample;
  DistConfig dist;
  VqTrainConfig vq_train;

  /// Fills derived defaults (model.resolve(), train.out_dir). Idempotent.
  void resolve();
  /// Every section's rules plus, for ConfigUse::kAim, the rules across sections (vocab =
  /// codebook, tokens = grid). ConfigUse::kTokenizer (aim train-vq) skips the model and sample
  /// sections; ConfigUse::kModel checks the name and the model section alone.
  void validate(ConfigUse use = ConfigUse::kAim) const;
  /// Peak learning rate of this run: optim.peak_lr(train.global_batch).
  double lr() const { return optim.peak_lr(train.global_batch); }
};

/// Field-by-field equality over every registered key (doubles compared exactly).
bool operator==(const Config& a, const Config& b);
inline bool operator!=(const Config& a, const Config& b) { return !(a == b); }
bool operator==(const ModelConfig& a, const ModelConfig& b);
inline bool operator!=(const ModelConfig& a, const ModelConfig& b) { return !(a == b); }

/// Value types of config keys.
enum class ConfigType { kInt, kDouble, kBool, kString, kIntList, kDoubleList };

/// One registered key: full dotted path ("model.ssm.d_state"), type and a one-line doc.
struct ConfigKeyInfo {
  std::string key;
  ConfigType type;
  std::string doc;
};

/// Every key a config file may hold, in file order.
std::vector<ConfigKeyInfo> config_keys();

/// The value of `key` as YAML text ("128", "[0.9, 0.95]", "\"Mamba2\""). Throws for unknown keys.
std::string config_value(const Config& config, const std::string& key);

/// Reads a YAML config, applies `--set` overrides in order, resolves and validates.
/// Errors name the file, the dotted key, what was expected and what was found.
Config load_config(const std::string& yaml_path, const std::vector<std::string>& overrides = {},
                   ConfigUse use = ConfigUse::kAim);

/// load_config() on YAML text; `what` names the source in error messages.
Config config_from_yaml_string(const std::string& text, const std::string& what,
                               const std::vector<std::string>& overrides = {},
                               ConfigUse use = ConfigUse::kAim);

/// Applies one `section.key=value` assignment (value: a YAML scalar or flow sequence such as
/// `[1, 2]`). Does not resolve or validate. Errors name the `--set` flag.
void apply_override(Config& config, const std::string& assignment);

/// The config as YAML, one commented line per key, that loads back to an equal Config. For
/// ConfigUse::kTokenizer (an aim train-vq run) without the sections aim train-vq does not read
/// (model, sample), so that the file reads as a tokenizer config (aim info) and loads back to an
/// equal Config when those hold their defaults (tokenizer_config() below).
std::string config_to_yaml(const Config& config, ConfigUse use = ConfigUse::kAim);

/// `config` with the sections aim train-vq does not read (model, sample) at their defaults.
Config tokenizer_config(Config config);

/// Every key whose value differs, as "<dotted key> <before> -> <after>", in schema order.
std::vector<std::string> config_changes(const Config& before, const Config& after);

/// A two-column table (key | value) of every key, followed by derived values.
std::string config_table(const Config& config);

/// Reads an official AiM Hugging Face `config.json` (MambaConfig fields). Missing fields take
/// the official MambaConfig defaults (note: adaln_group false, num_groups 1); our extra
/// ModelConfig fields keep their defaults, which are the official code's behaviour. The result
/// is resolved and validated.
ModelConfig model_config_from_hf_json(const std::string& path);

/// True when `path` (a config.json, or a directory holding one) is a JSON object with the
/// MambaConfig fields d_model and n_layer. Never throws.
bool looks_like_hf_config(const std::string& path);

/// The MambaConfig fields of `model` as an official config.json (keys only MambaConfig has;
/// our extra fields are implied by the official code).
std::string model_config_to_hf_json(const ModelConfig& model);

/// Tokenizer configuration from JSON: LlamaGen's ModelArgs fields (codebook_size,
/// codebook_embed_dim, codebook_l2_norm, encoder_ch_mult / decoder_ch_mult, z_channels,
/// dropout_p) plus `ch` and `num_res_blocks`, or AiM's VQConfig names (n_embed, embed_dim,
/// ch_mult). `object_path` selects a nested object ("fixture.vq"); "" is the whole file.
/// Fields absent take the VQ-16 defaults. LlamaGen's training-only fields (commit_loss_beta,
/// entropy_loss_ratio, codebook_show_usage) and AiM's attn_resolutions are not read; a field
/// within a few edits of a known one is refused as a misspelling, any other is named in a
/// warning on standard error.
VqConfig vq_config_from_json(const std::string& path, const std::string& object_path = "");

/// Levenshtein distance between two names (the "did you mean" hints for unknown keys).
size_t edit_distance(const std::string& a, const std::string& b);

}  // namespace aim
