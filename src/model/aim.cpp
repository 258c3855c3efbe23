#include "aim/model/aim.h"

#include <ATen/autocast_mode.h>

#include <cmath>
#include <set>
#include <sstream>

#include "aim/core/autocast.h"
#include "aim/core/error.h"
#include "aim/model/mamba1.h"
#include "aim/model/mamba2.h"
#include "aim/model/state_dict.h"
#include "aim/ops/dispatch.h"
#include "aim/ops/linear.h"
#include "aim/ops/loss.h"
#include "aim/ops/norms.h"

namespace aim {

namespace {

constexpr const char* kPrefix = "mamba.";
constexpr const char* kEmbeddingKey = "backbone.embeddings.word_embeddings.weight";
constexpr const char* kLmHeadKey = "lm_head.weight";

}  // namespace

EmbeddingsImpl::EmbeddingsImpl(int64_t vocab_size, int64_t dim, int64_t num_positions) {
  word_embeddings = register_module("word_embeddings", torch::nn::Embedding(vocab_size, dim));
  position_embeddings =
      register_module("position_embeddings", torch::nn::Embedding(num_positions, dim));
}

AimBlockImpl::AimBlockImpl(const ModelConfig& config)
    : group(config.adaln_group), eps(config.norm_eps), residual_in_fp32(config.residual_in_fp32) {
  const int64_t d = config.d_model;
  if (group) scale_shift_table = register_parameter("scale_shift_table", torch::empty({1, 3, d}));
  norm = register_module("norm", RMSNorm(RMSNormOptions(d).eps(config.norm_eps)));
  if (config.is_mamba2()) {
    mixer = register_module("mixer", std::make_shared<Mamba2MixerImpl>(
                                         Mamba2MixerOptions(d, config.ssm)));
  } else {
    mixer = register_module("mixer", std::make_shared<Mamba1MixerImpl>(
                                         Mamba1MixerOptions(d, config.ssm, config.dt_rank())));
  }
  if (!group) {
    adaLN_modulation = register_module(
        "adaLN_modulation", torch::nn::Sequential(torch::nn::SiLU(), torch::nn::Linear(d, 3 * d)));
  }
}

std::pair<torch::Tensor, torch::Tensor> AimBlockImpl::forward(const torch::Tensor& hidden,
                                                              const torch::Tensor& residual,
                                                              const torch::Tensor& hidden_gate,
                                                              const Modulation& mod,
                                                              MixerState* state) {
  // Under autocast the norm's output goes straight to in_proj in autocast's dtype, so the norm
  // writes it in that dtype (the gate's multiply and the cast inside its kernels).
  const auto device_type = hidden.device().type();
  const auto out_dtype = at::autocast::is_autocast_enabled(device_type)
                             ? std::optional(at::autocast::get_autocast_dtype(device_type))
                             : std::nullopt;
  auto [modulated, res] = ops::add_rms_norm_modulate(hidden, residual, norm->weight, eps,
                                                     residual_in_fp32, mod.shift, mod.scale,
                                                     hidden_gate, out_dtype);
  return {mixer->forward(modulated, state), res};
}

std::pair<torch::Tensor, torch::Tensor> AimBlockImpl::step(const torch::Tensor& hidden,
                                                           const torch::Tensor& residual,
                                                           const torch::Tensor& hidden_gate,
                                                           const Modulation& mod,
                                                           MixerState& state) {
  // The norm and in_proj: one kernel for a small decoding batch on CUDA.
  const auto in_proj = mixer->input_projection();
  auto [projected, res] = ops::add_rms_norm_modulate_linear(
      hidden, residual, norm->weight, eps, residual_in_fp32, mod.shift, mod.scale, hidden_gate,
      in_proj->weight, in_proj->bias);
  return {mixer->step_projected(projected, state), res};
}

namespace {

/// The parameters AimBlockImpl::forward reads (its norm's and mixer's; the adaLN tables are
/// read by AimBackboneImpl::condition).
std::vector<torch::Tensor> forward_parameters(AimBlockImpl& block) {
  auto p = block.norm->parameters();
  for (auto& t : block.mixer->parameters()) p.push_back(t);
  return p;
}

/// A block whose activations are not kept (activation checkpointing): the forward runs without
/// recording a graph and saves only the block's inputs; the backward runs the block again from
/// them, under the forward's autocast state, and differentiates that. The block's parameters
/// are inputs of this node, so their gradients leave through the enclosing backward like any
/// other (accumulated once, seen by gradient-sync hooks); the nested pass only computes them.
class RecomputedBlock : public torch::autograd::Function<RecomputedBlock> {
 public:
  /// Inputs as AimBlockImpl::forward's; returns {hidden', residual'}.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, AimBlockImpl* block,
                                                const torch::Tensor& hidden,
                                                const std::optional<torch::Tensor>& residual,
                                                const std::optional<torch::Tensor>& hidden_gate,
                                                const torch::Tensor& shift, const torch::Tensor& scale,
                                                torch::TensorList params) {
    const auto device_type = hidden.device().type();
    ctx->saved_data["block"] = reinterpret_cast<int64_t>(block);
    ctx->saved_data["num_params"] = static_cast<int64_t>(params.size());
    ctx->saved_data["autocast"] = at::autocast::is_autocast_enabled(device_type);
    ctx->saved_data["autocast_dtype"] = at::autocast::get_autocast_dtype(device_type);
    const auto r = residual.value_or(torch::Tensor()), g = hidden_gate.value_or(torch::Tensor());
    ctx->save_for_backward({hidden, r, g, shift, scale});
    auto [h, res] = block->forward(hidden, r, g, Modulation{shift, scale, torch::Tensor()});
    return {h, res};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* block = reinterpret_cast<AimBlockImpl*>(ctx->saved_data["block"].toInt());
    const auto saved = ctx->get_saved_variables();
    std::vector<torch::Tensor> in;  // hidden, residual, hidden_gate, shift, scale: detached
    for (const auto& t : saved) in.push_back(t.defined() ? t.detach().requires_grad_(t.requires_grad()) : t);
    const auto params = forward_parameters(*block);
    TORCH_CHECK(static_cast<int64_t>(params.size()) == ctx->saved_data["num_params"].toInt(),
                "RecomputedBlock: the block's parameters changed between forward and backward");
    std::vector<torch::Tensor> outputs;
    {
      torch::AutoGradMode grad_on(true);
      AutocastScope autocast(ctx->saved_data["autocast"].toBool(), in[0].device().type(),
                             ctx->saved_data["autocast_dtype"].toScalarType());
      auto [h, res] = block->forward(in[0], in[1], in[2], Modulation{in[3], in[4], torch::Tensor()});
      outputs = {h, res};
    }
    // Differentiate with respect to what needs a gradient: inputs first, then parameters.
    std::vector<torch::Tensor> wrt;
    std::vector<size_t> slot;  // position of wrt[k] in the returned list (after `block`)
    for (size_t i = 0; i < in.size(); ++i) {
      if (in[i].defined() && in[i].requires_grad()) {
        wrt.push_back(in[i]);
        slot.push_back(1 + i);
      }
    }
    for (size_t i = 0; i < params.size(); ++i) {
      if (params[i].requires_grad()) {
        wrt.push_back(params[i]);
        slot.push_back(1 + in.size() + i);
      }
    }
    std::vector<torch::Tensor> outs, gouts;
    for (size_t i = 0; i < outputs.size(); ++i) {
      if (outputs[i].requires_grad() && grads[i].defined()) {
        outs.push_back(outputs[i]);
        gouts.push_back(grads[i]);
      }
    }
    torch::autograd::variable_list result(1 + in.size() + params.size());
    if (outs.empty() || wrt.empty()) return result;
    const auto g = torch::autograd::grad(outs, wrt, gouts, /*retain_graph=*/false, /*create_graph=*/false,
                                         /*allow_unused=*/true);
    for (size_t k = 0; k < g.size(); ++k) result[slot[k]] = g[k];
    return result;
  }
};

}  // namespace

AimBackboneImpl::AimBackboneImpl(const ModelConfig& config_) : config(config_) {
  const int64_t d = config.d_model;
  embeddings = register_module(
      "embeddings", Embeddings(config.vocab_size, d, config.num_tokens + 1));
  cls_embed = register_module("cls_embed", LabelEmbedder(config.num_classes, d));
  if (config.adaln_group) {
    adaln_group = register_module(
        "adaln_group",
        torch::nn::Sequential(torch::nn::SiLU(), torch::nn::Linear(d, config.num_groups * 3 * d)));
  }
  final_layer = register_module("final_layer", FinalLayer(d, config.norm_eps));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.n_layer; ++i) {
    blocks.push_back(AimBlock(config));
    layers->push_back(blocks.back());
  }
  norm_f = register_module("norm_f", RMSNorm(RMSNormOptions(d).eps(config.norm_eps)));
}

Conditioning AimBackboneImpl::condition(const torch::Tensor& c) {
  Conditioning cond;
  cond.c = c;
  const int64_t batch = c.size(0), d = config.d_model;
  std::vector<torch::Tensor> groups;
  if (config.adaln_group) {
    // [B, G * 3 * D] -> G sets of [B, 3, D]; block i uses set i % G plus its own table.
    groups = adaln_group->forward(c).view({batch, config.num_groups * 3, d}).chunk(
        config.num_groups, 1);
  }
  cond.layers.reserve(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    std::vector<torch::Tensor> parts;
    if (config.adaln_group) {
      parts = (blocks[i]->scale_shift_table + groups[i % config.num_groups]).unbind(1);
    } else {
      parts = blocks[i]->adaLN_modulation->forward(c).chunk(3, 1);
    }
    // Contiguous once here: the norm kernels read shift and scale as stored only when they
    // are, and would otherwise copy them at every call (every generated token).
    cond.layers.push_back(Modulation{parts[0].contiguous(), parts[1].contiguous(), parts[2].contiguous()});
  }
  std::tie(cond.final_shift, cond.final_scale) = final_layer->modulation(c);
  cond.final_shift = cond.final_shift.contiguous();
  cond.final_scale = cond.final_scale.contiguous();
  return cond;
}

torch::Tensor AimBackboneImpl::run(const torch::Tensor& h, const Conditioning& cond,
                                   std::vector<MixerState>* states, bool step) {
  // Block i's output is gate_i * hidden; the multiply happens in the next add + norm.
  torch::Tensor hidden = h, residual, gate;
  const bool recompute = recompute_every > 0 && !step && states == nullptr && torch::GradMode::is_enabled();
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (step) {
      std::tie(hidden, residual) =
          blocks[i]->step(hidden, residual, gate, cond.layers[i], (*states)[i]);
    } else if (recompute && static_cast<int64_t>(i) % recompute_every == 0) {
      auto opt = [](const torch::Tensor& t) { return t.defined() ? std::optional(t) : std::nullopt; };
      const auto params = forward_parameters(*blocks[i]);
      const auto out = RecomputedBlock::apply(blocks[i].get(), hidden, opt(residual), opt(gate), cond.layers[i].shift,
                                              cond.layers[i].scale, torch::TensorList(params));
      hidden = out[0];
      residual = out[1];
    } else {
      std::tie(hidden, residual) = blocks[i]->forward(hidden, residual, gate, cond.layers[i],
                                                      states ? &(*states)[i] : nullptr);
    }
    gate = cond.layers[i].gate;
  }
  auto x = ops::add_rms_norm(hidden, residual, norm_f->weight, config.norm_eps,
                             config.residual_in_fp32, gate)
               .first;
  return final_layer->forward(x, cond.final_shift, cond.final_scale);
}

AimModelImpl::AimModelImpl(const ModelConfig& config_) : config(config_) {
  config.resolve();
  config.validate();
  backbone = register_module("backbone", AimBackbone(config));
  if (!config.tie_embeddings) {
    lm_head = register_module(
        "lm_head",
        torch::nn::Linear(torch::nn::LinearOptions(config.d_model, config.vocab_size).bias(false)));
  }
  reset_parameters();
}

void AimModelImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  const double std = config.initializer_range;
  auto& bb = *backbone;
  bb.embeddings->word_embeddings->weight.normal_(0.0, std);
  bb.embeddings->position_embeddings->weight.normal_(0.0, std);
  bb.cls_embed->embedding_table->weight.normal_(0.0, std);
  if (config.adaln_group) {
    // GroupAdaLN keeps nn.Linear's default weight init; its bias is zeroed like every Linear bias.
    auto lin = bb.adaln_group[1]->as<torch::nn::Linear>();
    lin->reset_parameters();
    lin->bias.zero_();
  }
  auto final_lin = bb.final_layer->adaLN_modulation[1]->as<torch::nn::Linear>();
  final_lin->weight.zero_();
  final_lin->bias.zero_();
  bb.final_layer->norm_final->reset_parameters();
  bb.norm_f->reset_parameters();
  const double d = static_cast<double>(config.d_model);
  for (auto& block : bb.blocks) {
    block->norm->reset_parameters();
    block->mixer->reset_parameters();
    if (config.adaln_group) {
      block->scale_shift_table.normal_(0.0, 1.0).div_(std::sqrt(d));
    } else {
      auto lin = block->adaLN_modulation[1]->as<torch::nn::Linear>();
      lin->weight.zero_();
      lin->bias.zero_();
    }
    // GPT-2 style: out_proj re-drawn with the default init and scaled by 1/sqrt(n_layer);
    // every Linear bias zeroed (dt_proj's bias keeps its dt initialisation).
    for (auto& item : block->mixer->named_modules("", /*include_self=*/false)) {
      if (auto* lin = item.value()->as<torch::nn::Linear>()) {
        if (item.key() == "dt_proj") continue;
        if (lin->bias.defined()) lin->bias.zero_();
      }
    }
    auto out = block->mixer->named_modules("", false)["out_proj"]->as<torch::nn::Linear>();
    torch::nn::init::kaiming_uniform_(out->weight, std::sqrt(5.0));
    out->weight.div_(std::sqrt(static_cast<double>(config.n_layer)));
  }
  if (lm_head) lm_head->reset_parameters();
}

int64_t AimModelImpl::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

torch::Tensor AimModelImpl::forward_hidden(const torch::Tensor& input_tokens,
                                           const torch::Tensor& labels,
                                           const torch::Tensor& position_ids) {
  TORCH_CHECK(input_tokens.dim() == 2, "AimModel: input_tokens must be [B, T], got ",
              input_tokens.sizes());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == input_tokens.size(0),
              "AimModel: labels must be [B] = [", input_tokens.size(0), "], got ", labels.sizes());
  const int64_t t = input_tokens.size(1);
  TORCH_CHECK(t <= config.num_tokens, "AimModel: ", t, " input tokens exceed num_tokens ",
              config.num_tokens);
  auto& bb = *backbone;
  const bool train = is_training();
  auto c = bb.cls_embed->forward(labels, train ? config.class_dropout : 0.0);   // [B, D]
  auto cond = bb.condition(c);
  auto pos = position_ids.defined()
                 ? position_ids
                 : torch::arange(t, torch::dtype(torch::kLong).device(input_tokens.device()));
  auto tok = bb.embeddings->word_embeddings->forward(input_tokens);
  if (train && config.token_drop > 0) tok = torch::dropout(tok, config.token_drop, true);
  tok = tok + bb.embeddings->position_embeddings->forward(pos);
  auto h = torch::cat({c.unsqueeze(1).to(tok.scalar_type()), tok}, 1);        // [B, T + 1, D]
  return bb.run(h, cond, nullptr, false);
}

const torch::Tensor& AimModelImpl::head_weight() const {
  return config.tie_embeddings ? backbone->embeddings->word_embeddings->weight : lm_head->weight;
}

torch::Tensor AimModelImpl::logits(const torch::Tensor& hidden) {
  const auto& weight = head_weight();
  const auto w = weight.to(hidden.scalar_type());
  // A converted weight is written by the kernel right before the product: that one must not
  // start before the conversion ends (aim/ops/dispatch.h). An unconverted one keeps the scope.
  const ops::DependentLaunchScope unless_converted(w.is_same(weight) && ops::dependent_launch_enabled());
  return ops::linear(hidden, w);
}

torch::Tensor AimModelImpl::forward(const torch::Tensor& input_tokens, const torch::Tensor& labels,
                                    const torch::Tensor& position_ids) {
  return logits(forward_hidden(input_tokens, labels, position_ids));
}

torch::Tensor AimModelImpl::loss(const torch::Tensor& tokens, const torch::Tensor& labels) {
  TORCH_CHECK(tokens.dim() == 2 && tokens.size(1) >= 1, "AimModel::loss: tokens must be [B, L]");
  auto h = forward_hidden(tokens.narrow(1, 0, tokens.size(1) - 1), labels);   // [B, L, D]
  // lm_head and cross-entropy in one op: on CUDA the [B * L, V] logits live a chunk at a time.
  return ops::linear_cross_entropy(h.reshape({-1, h.size(-1)}), head_weight(), tokens.reshape({-1}));
}

InferenceState AimModelImpl::start(const torch::Tensor& labels, torch::ScalarType state_dtype,
                                   torch::ScalarType ssm_state_dtype) {
  TORCH_CHECK(labels.dim() == 1, "AimModel::start: labels must be [B], got ", labels.sizes());
  InferenceState s;
  s.batch = labels.size(0);
  s.cond = backbone->condition(backbone->cls_embed->forward(labels, 0.0));
  const auto device = labels.device();
  for (auto& block : backbone->blocks) {
    s.layers.push_back(block->mixer->allocate_state(s.batch, device, state_dtype, ssm_state_dtype));
  }
  return s;
}

torch::Tensor AimModelImpl::step(InferenceState& state, const torch::Tensor& tokens) {
  auto& bb = *backbone;
  torch::Tensor h;
  if (state.offset == 0) {
    h = state.cond.c;
  } else {
    const int64_t pos = state.offset - 1 + config.decode_position_offset;
    TORCH_CHECK(pos <= config.num_tokens, "AimModel::step: position ", pos,
                " exceeds the table of ", config.num_tokens + 1, " rows");
    TORCH_CHECK(tokens.defined() && tokens.dim() == 1 && tokens.size(0) == state.batch,
                "AimModel::step: tokens must be [", state.batch, "]");
    h = bb.embeddings->word_embeddings->forward(tokens) +
        bb.embeddings->position_embeddings->weight[pos];
  }
  // The layers' kernels may start before the previous one ends: nothing here writes a weight
  // or a state but those kernels (aim/ops/dispatch.h).
  ops::DependentLaunchScope dependent_launches;
  auto x = bb.run(h, state.cond, &state.layers, /*step=*/true);              // [B, D]
  state.offset += 1;
  return logits(x);
}

torch::Tensor AimModelImpl::step_at(InferenceState& state, const torch::Tensor& tokens,
                                    const torch::Tensor& position) {
  auto& bb = *backbone;
  TORCH_CHECK(tokens.defined() && tokens.dim() == 1 && tokens.size(0) == state.batch,
              "AimModel::step_at: tokens must be [", state.batch, "]");
  TORCH_CHECK(position.numel() == 1 && position.scalar_type() == torch::kLong &&
                  position.device() == tokens.device(),
              "AimModel::step_at: position must be one int64 on ", tokens.device());
  // [B, D] + [1, D]: the same sums as step()'s [B, D] + [D].
  auto h = bb.embeddings->word_embeddings->forward(tokens) +
           bb.embeddings->position_embeddings->weight.index_select(0, position.reshape({1}));
  ops::DependentLaunchScope dependent_launches;  // as in step()
  auto x = bb.run(h, state.cond, &state.layers, /*step=*/true);              // [B, D]
  return logits(x);
}

torch::Tensor AimModelImpl::prefill(InferenceState& state, const torch::Tensor& tokens) {
  TORCH_CHECK(state.offset == 0, "AimModel::prefill: state must be fresh (offset 0), got ",
              state.offset);
  TORCH_CHECK(tokens.dim() == 2 && tokens.size(0) == state.batch, "AimModel::prefill: tokens must be [",
              state.batch, ", T], got ", tokens.sizes());
  auto& bb = *backbone;
  const int64_t t = tokens.size(1);
  TORCH_CHECK(t - 1 + config.decode_position_offset <= config.num_tokens,
              "AimModel::prefill: ", t, " tokens exceed num_tokens ", config.num_tokens);
  auto pos = torch::arange(t, torch::dtype(torch::kLong).device(tokens.device())) +
             config.decode_position_offset;
  auto tok = bb.embeddings->word_embeddings->forward(tokens) +
             bb.embeddings->position_embeddings->forward(pos);
  auto h = torch::cat({state.cond.c.unsqueeze(1).to(tok.scalar_type()), tok}, 1);
  auto x = bb.run(h, state.cond, &state.layers, /*step=*/false);             // [B, T + 1, D]
  state.offset = t + 1;
  return logits(x.select(1, t));
}

std::vector<std::pair<std::string, torch::Tensor>> official_state_dict(const AimModel& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : model->named_parameters(true)) {
    out.emplace_back(kPrefix + item.key(), item.value().detach());
  }
  if (model->config.tie_embeddings) {
    out.emplace_back(std::string(kPrefix) + kLmHeadKey,
                     model->backbone->embeddings->word_embeddings->weight.detach());
  }
  return out;
}

void load_official_state_dict(AimModel& model, const std::map<std::string, torch::Tensor>& sd,
                              const std::string& what) {
  std::map<std::string, torch::Tensor> incoming;
  for (const auto& [key, value] : sd) {
    if (key.rfind("vqvae.", 0) == 0) continue;
    std::string k = key.rfind(kPrefix, 0) == 0 ? key.substr(std::strlen(kPrefix)) : key;
    incoming[k] = value;
  }
  std::vector<std::string> problems;
  const bool tied = model->config.tie_embeddings;
  if (tied && incoming.count(kLmHeadKey)) {
    auto head = incoming[kLmHeadKey];
    incoming.erase(kLmHeadKey);
    auto emb = incoming.find(kEmbeddingKey);
    if (emb == incoming.end()) {
      incoming[kEmbeddingKey] = head;  // stored once, under the lm_head name
    } else if (emb->second.sizes() != head.sizes() ||
               !torch::equal(emb->second.to(torch::kFloat), head.to(torch::kFloat))) {
      problems.push_back(str_cat("  mamba.", kLmHeadKey, " differs from mamba.", kEmbeddingKey,
                                 " but the config ties them (tie_embeddings: true)"));
    }
  }
  auto copied = copy_state_dict(*model, incoming, kPrefix);
  problems.insert(problems.end(), copied.begin(), copied.end());
  throw_if_problems(problems, what,
                    str_cat("the weights do not match the model configuration (d_model ",
                            model->config.d_model, ", n_layer ", model->config.n_layer, ", ",
                            model->config.ssm.layer, ")"));
}

}  // namespace aim
