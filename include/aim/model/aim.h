#pragma once
// The AiM language model: class-conditioned Mamba blocks over VQ tokens, in the official
// module and key layout (`backbone.*`, `lm_head.weight`; checkpoints prefix them with `mamba.`).
//
// Training sequence:  [c, E[tok_0] + P[0], ..., E[tok_{L-2}] + P[L-2]] -> logits for tok_0..L-1.
// Block i:            residual = hidden + residual (fp32); h = rms(residual);
//                     hidden = gate * Mixer(h * (1 + scale) + shift).
// End:                x = rms(hidden + residual); x = rms(x) * (1 + scale_f) + shift_f;
//                     logits = x E^T (tied) or lm_head(x).
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "aim/core/config.h"
#include "aim/model/adaln.h"
#include "aim/model/mixer.h"

namespace aim {

/// Token and position tables: `word_embeddings` [V, D], `position_embeddings` [L + 1, D].
class EmbeddingsImpl : public torch::nn::Module {
 public:
  EmbeddingsImpl(int64_t vocab_size, int64_t dim, int64_t num_positions);
  torch::nn::Embedding word_embeddings{nullptr}, position_embeddings{nullptr};
};
TORCH_MODULE(Embeddings);

/// One pre-norm block with adaLN: `norm`, `mixer`, and either `scale_shift_table` [1, 3, D]
/// (adaLN-group) or `adaLN_modulation` = Sequential(SiLU, Linear(D, 3D)).
class AimBlockImpl : public torch::nn::Module {
 public:
  explicit AimBlockImpl(const ModelConfig& config);
  /// hidden [B, L, D] (or [B, D] for a step), residual same shape or undefined (first block).
  /// The block's output is mod.gate * mixer(...); it is returned *ungated* together with the
  /// gate's factor left to apply, which the next add + norm applies as it reads hidden
  /// (ops::add_rms_norm_modulate's hidden_gate: one kernel on CUDA instead of a multiply and the
  /// norm). `hidden_gate` is that factor from the previous block (undefined: none).
  /// Returns {hidden', residual'}: the gated output is hidden' * mod.gate.
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& hidden,
                                                  const torch::Tensor& residual,
                                                  const torch::Tensor& hidden_gate,
                                                  const Modulation& mod,
                                                  MixerState* state = nullptr);
  std::pair<torch::Tensor, torch::Tensor> step(const torch::Tensor& hidden,
                                               const torch::Tensor& residual,
                                               const torch::Tensor& hidden_gate,
                                               const Modulation& mod, MixerState& state);
  bool group;
  double eps;
  bool residual_in_fp32;
  torch::Tensor scale_shift_table;
  RMSNorm norm{nullptr};
  std::shared_ptr<MixerImpl> mixer;
  torch::nn::Sequential adaLN_modulation{nullptr};
};
TORCH_MODULE(AimBlock);

/// Everything that depends only on the class: computed once per sequence.
struct Conditioning {
  torch::Tensor c;                      ///< [B, D] class embedding
  std::vector<Modulation> layers;       ///< per block
  torch::Tensor final_shift, final_scale;  ///< [B, D]
};

/// The backbone (`MixerModel` in the official code).
class AimBackboneImpl : public torch::nn::Module {
 public:
  explicit AimBackboneImpl(const ModelConfig& config);
  /// c [B, D] -> adaLN parameters of every block and of the final layer.
  Conditioning condition(const torch::Tensor& c);
  /// h [B, T, D] (or [B, D] with `step` states) through the blocks, norm_f and final layer.
  torch::Tensor run(const torch::Tensor& h, const Conditioning& cond,
                    std::vector<MixerState>* states, bool step);

  ModelConfig config;
  /// Activation checkpointing of a training forward (run() with grad enabled, no states): every
  /// block i with i % recompute_every == 0 keeps only its inputs and is run again in the
  /// backward. 0 = off. Not part of the architecture: the trainer sets it (train.recompute_every).
  int64_t recompute_every = 0;
  Embeddings embeddings{nullptr};
  LabelEmbedder cls_embed{nullptr};
  torch::nn::Sequential adaln_group{nullptr};
  FinalLayer final_layer{nullptr};
  torch::nn::ModuleList layers{nullptr};
  std::vector<AimBlock> blocks;
  RMSNorm norm_f{nullptr};
};
TORCH_MODULE(AimBackbone);

/// Recurrent decoding state: conditioning, per-layer mixer states, and how many inputs have
/// been consumed (0: the class slot comes next).
struct InferenceState {
  Conditioning cond;
  std::vector<MixerState> layers;
  int64_t offset = 0;
  int64_t batch = 0;
};

class AimModelImpl : public torch::nn::Module {
 public:
  explicit AimModelImpl(const ModelConfig& config);

  /// input_tokens [B, T] int64, labels [B] int64 in [0, num_classes] -> logits [B, T + 1, V].
  /// position_ids [T] default 0..T-1. In training mode, class dropout and token dropout apply.
  torch::Tensor forward(const torch::Tensor& input_tokens, const torch::Tensor& labels,
                        const torch::Tensor& position_ids = {});
  /// Final hidden states [B, T + 1, D] (before the lm_head).
  torch::Tensor forward_hidden(const torch::Tensor& input_tokens, const torch::Tensor& labels,
                               const torch::Tensor& position_ids = {});
  /// hidden [..., D] -> logits [..., V].
  torch::Tensor logits(const torch::Tensor& hidden);
  /// The lm_head's weight [V, D]: the token embedding when tied.
  const torch::Tensor& head_weight() const;
  /// Mean cross-entropy of the training forward on tokens [B, L] (inputs tokens[:, :-1]).
  torch::Tensor loss(const torch::Tensor& tokens, const torch::Tensor& labels);

  /// Fresh decoding state for labels [B] (no class dropout): conv states in `state_dtype`, ssm
  /// states in `ssm_state_dtype` (fp32, or bf16 to halve their traffic).
  InferenceState start(const torch::Tensor& labels, torch::ScalarType state_dtype = torch::kFloat,
                       torch::ScalarType ssm_state_dtype = torch::kFloat);
  /// Consumes one input and returns logits [B, V] for the next token: at offset 0 the class
  /// embedding (tokens ignored, may be undefined), later tokens [B] (the previous image token;
  /// image token j gets position j + decode_position_offset).
  torch::Tensor step(InferenceState& state, const torch::Tensor& tokens);
  /// step() for CUDA-graph capture: consumes image tokens [B] at the position index held in
  /// `position` (int64, one element, on the tokens' device; the caller adds
  /// decode_position_offset and keeps it within the table). Nothing is read on the host and
  /// state.offset does not move, so a captured call replays with `tokens`, `position` and the
  /// state updated in place.
  torch::Tensor step_at(InferenceState& state, const torch::Tensor& tokens,
                        const torch::Tensor& position);
  /// Consumes the class slot and tokens [B, T] in one parallel pass; returns logits [B, V] for
  /// token T and leaves `state` ready for step().
  torch::Tensor prefill(InferenceState& state, const torch::Tensor& tokens);

  /// The null-class label used for classifier-free guidance.
  int64_t null_class() const { return config.num_classes; }
  /// Re-draws every parameter as the official constructor does.
  void reset_parameters();
  /// Number of parameters, the tied weight counted once (the official get_num_params()).
  int64_t num_parameters() const;

  ModelConfig config;
  AimBackbone backbone{nullptr};
  torch::nn::Linear lm_head{nullptr};  ///< only when embeddings are not tied
};
TORCH_MODULE(AimModel);

/// State dict in the official checkpoint layout: `mamba.`-prefixed names; the tied weight
/// appears under both `mamba.backbone.embeddings.word_embeddings.weight` and
/// `mamba.lm_head.weight`.
std::vector<std::pair<std::string, torch::Tensor>> official_state_dict(const AimModel& model);

/// Loads weights by official names, with or without the `mamba.` prefix; `vqvae.*` entries are
/// ignored (the tokenizer loads them). A tied weight may be stored under either name. Every
/// missing, unexpected or mis-shaped key is collected and reported in one aim::Error that
/// names `what` (the file) and, for shapes, both shapes.
void load_official_state_dict(AimModel& model, const std::map<std::string, torch::Tensor>& sd,
                              const std::string& what);

}  // namespace aim
