#include "aim/model/registry.h"

#include <cmath>
#include <iomanip>
#include <sstream>

#include "aim/core/error.h"
#include "aim/model/vq.h"

namespace aim {

int64_t LayoutEntry::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

namespace {

void mixer_layout(const ModelConfig& c, const std::string& p, std::vector<LayoutEntry>& out) {
  const auto& s = c.ssm;
  const int64_t d = c.d_model, e = c.d_inner();
  if (c.is_mamba2()) {
    const int64_t h = c.nheads(), conv_dim = e + 2 * s.ngroups * s.d_state;
    const int64_t d_in_proj = 2 * e + 2 * s.ngroups * s.d_state + h;
    out.push_back({p + "dt_bias", {h}});
    out.push_back({p + "A_log", {h}});
    out.push_back({p + "D", {s.d_has_hdim ? e : h}});
    out.push_back({p + "in_proj.weight", {d_in_proj, d}});
    if (s.bias) out.push_back({p + "in_proj.bias", {d_in_proj}});
    out.push_back({p + "conv1d.weight", {conv_dim, 1, s.d_conv}});
    if (s.conv_bias) out.push_back({p + "conv1d.bias", {conv_dim}});
    if (s.rmsnorm) out.push_back({p + "norm.weight", {e}});
    out.push_back({p + "out_proj.weight", {d, e}});
    if (s.bias) out.push_back({p + "out_proj.bias", {d}});
  } else {
    const int64_t r = c.dt_rank();
    out.push_back({p + "A_log", {e, s.d_state}});
    out.push_back({p + "D", {e}});
    out.push_back({p + "in_proj.weight", {2 * e, d}});
    if (s.bias) out.push_back({p + "in_proj.bias", {2 * e}});
    out.push_back({p + "conv1d.weight", {e, 1, s.d_conv}});
    if (s.conv_bias) out.push_back({p + "conv1d.bias", {e}});
    out.push_back({p + "x_proj.weight", {r + 2 * s.d_state, e}});
    out.push_back({p + "dt_proj.weight", {e, r}});
    out.push_back({p + "dt_proj.bias", {e}});
    out.push_back({p + "out_proj.weight", {d, e}});
    if (s.bias) out.push_back({p + "out_proj.bias", {d}});
  }
}

}  // namespace

std::string bytes_str(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  std::ostringstream os;
  os << std::fixed << std::setprecision(u == 0 ? 0 : 2) << b << " " << units[u];
  return os.str();
}

std::string count_str(int64_t n) {
  std::string s = std::to_string(n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(i, ",");
  return s;
}

std::vector<LayoutEntry> official_layout(const ModelConfig& c) {
  const int64_t d = c.d_model;
  const std::string b = "mamba.backbone.";
  std::vector<LayoutEntry> out;
  out.push_back({b + "embeddings.word_embeddings.weight", {c.vocab_size, d}});
  out.push_back({b + "embeddings.position_embeddings.weight", {c.num_tokens + 1, d}});
  out.push_back({b + "cls_embed.embedding_table.weight", {c.num_classes + 1, d}});
  if (c.adaln_group) {
    out.push_back({b + "adaln_group.1.weight", {c.num_groups * 3 * d, d}});
    out.push_back({b + "adaln_group.1.bias", {c.num_groups * 3 * d}});
  }
  out.push_back({b + "final_layer.norm_final.weight", {d}});
  out.push_back({b + "final_layer.adaLN_modulation.1.weight", {2 * d, d}});
  out.push_back({b + "final_layer.adaLN_modulation.1.bias", {2 * d}});
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const std::string p = b + "layers." + std::to_string(i) + ".";
    if (c.adaln_group) out.push_back({p + "scale_shift_table", {1, 3, d}});
    out.push_back({p + "norm.weight", {d}});
    mixer_layout(c, p + "mixer.", out);
    if (!c.adaln_group) {
      out.push_back({p + "adaLN_modulation.1.weight", {3 * d, d}});
      out.push_back({p + "adaLN_modulation.1.bias", {3 * d}});
    }
  }
  out.push_back({b + "norm_f.weight", {d}});
  out.push_back({"mamba.lm_head.weight", {c.vocab_size, d}});
  return out;
}

ParameterCounts count_parameters(const ModelConfig& c) {
  ParameterCounts n;
  for (const auto& e : official_layout(c)) {
    const auto& k = e.key;
    if (k == "mamba.lm_head.weight") {
      if (!c.tie_embeddings) n.lm_head += e.numel();
    } else if (k.find("embeddings.") != std::string::npos || k.find("cls_embed.") != std::string::npos) {
      n.embeddings += e.numel();
    } else if (k.find(".mixer.") != std::string::npos) {
      n.mixers += e.numel();
    } else if (k.find("adaLN") != std::string::npos || k.find("adaln_group") != std::string::npos ||
               k.find("scale_shift_table") != std::string::npos) {
      n.adaln += e.numel();
    } else {
      n.norms += e.numel();
    }
  }
  return n;
}

MemoryEstimate estimate_memory(const ModelConfig& c, bool ema) {
  MemoryEstimate m;
  const int64_t p = count_parameters(c).total();
  m.weights_fp32 = 4 * p;
  m.weights_bf16 = 2 * p;
  m.train_states = (4 + 4 + 8 + (ema ? 4 : 0)) * p;
  const int64_t d = c.d_model, e = c.d_inner(), len = c.num_tokens;
  const auto& s = c.ssm;
  int64_t per_token_layer = 0;  // bf16 activations kept for backward, per token and layer
  int64_t conv_dim = 0, state_elems = 0;
  if (c.is_mamba2()) {
    conv_dim = e + 2 * s.ngroups * s.d_state;
    const int64_t d_in_proj = 2 * e + 2 * s.ngroups * s.d_state + c.nheads();
    per_token_layer = 2 * (d + d_in_proj + conv_dim + 2 * e + e) + 4 * d;
    state_elems = c.nheads() * s.headdim * s.d_state;
  } else {
    conv_dim = e;
    per_token_layer = 2 * (d + 2 * e + e + c.dt_rank() + 2 * s.d_state + 2 * e) + 4 * d;
    state_elems = e * s.d_state;
  }
  // Blocks, plus logits in bf16 and fp32 for the loss.
  m.train_activations_per_image = len * (c.n_layer * per_token_layer + c.vocab_size * 6);
  // Recomputing every block: each keeps its inputs (hidden in bf16, the fp32 residual), and one
  // block's activations exist at a time, while it is run again in the backward.
  m.train_activations_recompute_per_image =
      len * (c.n_layer * 6 * d + per_token_layer + c.vocab_size * 6);
  m.sample_state_per_image = c.n_layer * (4 * state_elems + 2 * conv_dim * s.d_conv);
  return m;
}

VqDecodeEstimate estimate_vq_decode(const VqConfig& vq, int64_t image_size) {
  VqDecodeEstimate e;
  torch::NoGradGuard no_grad;
  const VqModel model(vq);
  for (const auto& p : model->parameters()) e.parameters += p.numel();
  e.weights_fp32 = 4 * e.parameters;
  const int64_t top_channels = vq.ch * (vq.ch_mult.empty() ? 1 : vq.ch_mult.front());
  e.activations_per_image = 6 * 4 * top_channels * image_size * image_size;
  return e;
}

std::string describe_model(const ModelConfig& c, bool ema, const VqConfig& vq) {
  const auto n = count_parameters(c);
  const auto m = estimate_memory(c, ema);
  const auto side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(c.num_tokens))));
  const auto v = estimate_vq_decode(vq, side * vq.downsample());
  std::ostringstream os;
  auto row = [&](const std::string& k, const std::string& v) {
    os << "  " << std::left << std::setw(37) << k << v << "\n";
  };
  os << "architecture\n";
  row("mixer", c.ssm.layer);
  row("d_model x n_layer", str_cat(c.d_model, " x ", c.n_layer));
  row("conditioning", c.adaln_group ? str_cat("adaLN-group, G = ", c.num_groups) : "adaLN per layer");
  row("d_inner", std::to_string(c.d_inner()));
  if (c.is_mamba2()) {
    row("heads x headdim", str_cat(c.nheads(), " x ", c.ssm.headdim));
    row("d_state / ngroups / chunk", str_cat(c.ssm.d_state, " / ", c.ssm.ngroups, " / ", c.ssm.chunk_size));
  } else {
    row("d_state / dt_rank", str_cat(c.ssm.d_state, " / ", c.dt_rank()));
  }
  row("d_conv", std::to_string(c.ssm.d_conv));
  row("vocab / classes / tokens", str_cat(c.vocab_size, " / ", c.num_classes, " (+1 null) / ", c.num_tokens));
  row("lm_head", c.tie_embeddings ? "tied to token embeddings" : "separate");
  os << "parameters\n";
  row("embeddings (token, position, class)", count_str(n.embeddings));
  row("adaLN", count_str(n.adaln));
  row("mixers", count_str(n.mixers));
  row("norms", count_str(n.norms));
  if (n.lm_head) row("lm_head", count_str(n.lm_head));
  row("total", count_str(n.total()) + str_cat(" (", std::setprecision(4), n.total() / 1e6, "M)"));
  os << "memory (estimates)\n";
  row("weights fp32 / bf16", bytes_str(m.weights_fp32) + " / " + bytes_str(m.weights_bf16));
  row(ema ? "training: weights+grads+AdamW+EMA" : "training: weights+grads+AdamW", bytes_str(m.train_states));
  row("training: activations per image", bytes_str(m.train_activations_per_image) + " (bf16, no recompute)");
  row("  recomputing every block", bytes_str(m.train_activations_recompute_per_image) +
                                       " (train.recompute_every: 1, about 1/3 more compute)");
  row("sampling: state per image", bytes_str(m.sample_state_per_image) + str_cat(" (x2 with CFG)"));
  row("sampling: model + states, 16 w/ CFG", bytes_str(m.weights_fp32 + 32.0 * m.sample_state_per_image) +
                                                " (--dtype fp32; " +
                                                bytes_str(m.weights_bf16 + 32.0 * m.sample_state_per_image) +
                                                " with bf16)");
  row("sampling: tokenizer weights", bytes_str(v.weights_fp32) + str_cat(" (", std::setprecision(4),
                                                                            v.parameters / 1e6, "M, fp32)"));
  row("sampling: VQ decode per image", str_cat("about ", bytes_str(v.activations_per_image), " (",
                                                       side * vq.downsample(), " px, fp32)"));
  row("sampling: 16 images in all", str_cat("about ", bytes_str(m.weights_fp32 + 32.0 * m.sample_state_per_image +
                                                                        v.weights_fp32 + 16.0 * v.activations_per_image),
                                                " (--batch-size 16, fp32)"));
  return os.str();
}

}  // namespace aim
