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

}  // namespace aim
