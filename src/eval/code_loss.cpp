#include "aim/eval/code_loss.h"

#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cmath>
#include <limits>

#include "aim/core/error.h"

namespace aim {

torch::Tensor token_nll(AimModel& model, const torch::Tensor& hidden, const torch::Tensor& targets) {
  AIM_CHECK(hidden.dim() == 3 && targets.dim() == 2 && hidden.size(0) == targets.size(0) &&
                hidden.size(1) == targets.size(1),
            "token_nll: expected hidden [B, T, D] and targets [B, T], found ", hidden.sizes(), " and ",
            targets.sizes());
  const auto h = hidden.reshape({-1, hidden.size(2)});
  const auto t = targets.reshape({-1}).to(torch::kLong);
  // About 256 MB of fp32 logits at a time.
  const int64_t vocab = model->head_weight().size(0);
  const int64_t rows = std::max<int64_t>(1, (int64_t{1} << 26) / vocab);
  std::vector<torch::Tensor> parts;
  for (int64_t s = 0; s < h.size(0); s += rows) {
    const int64_t n = std::min(rows, h.size(0) - s);
    const auto logits = model->logits(h.narrow(0, s, n)).to(torch::kFloat);
    parts.push_back(torch::logsumexp(logits, -1) - logits.gather(1, t.narrow(0, s, n).unsqueeze(1)).squeeze(1));
  }
  return torch::cat(parts).view(targets.sizes());
}

namespace {

/// Running sums of the recurrent pass's agreement with the parallel one, kept on the device.
struct LogitErrors {
  torch::Tensor max_error, max_abs, sum_error, sum_abs, agree;
  int64_t logits = 0, positions = 0;

  void add(const torch::Tensor& recurrent, const torch::Tensor& parallel) {
    const auto err = (recurrent - parallel).abs();
    const auto mx = err.max().to(torch::kDouble), ma = parallel.abs().max().to(torch::kDouble);
    const auto se = err.sum(torch::kDouble), sa = parallel.abs().sum(torch::kDouble);
    const auto ag = recurrent.argmax(-1).eq(parallel.argmax(-1)).sum();
    if (!max_error.defined()) {
      max_error = mx, max_abs = ma, sum_error = se, sum_abs = sa, agree = ag;
    } else {
      max_error = torch::maximum(max_error, mx), max_abs = torch::maximum(max_abs, ma);
      sum_error += se, sum_abs += sa, agree += ag;
    }
    logits += recurrent.numel();
    positions += recurrent.size(0);
  }
};

}  // namespace

CodeLoss evaluate_code_loss(AimModel& model, const CodeDataset& data, const CodeLossOptions& o,
                            const std::function<void(int64_t)>& on_batch) {
  const auto& mc = model->config;
  const auto& info = data.info();
  const std::string& path = data.path();
  AIM_CHECK(o.batch_size >= 1, "eval-loss: batch size must be >= 1, found ", o.batch_size);
  AIM_CHECK(info.tokens == mc.num_tokens, path, ": ", info.tokens, " codes per image, but the model predicts ",
            mc.num_tokens, " tokens (model.num_tokens)\n---> HINT: the codes must come from the tokenizer and "
            "image size the model was trained with");
  AIM_CHECK(info.vocab_size == mc.vocab_size, path, ": codes of a ", info.vocab_size,
            "-entry codebook, but the model's vocabulary has ", mc.vocab_size, " entries");
  AIM_CHECK(o.view >= -1 && o.view < info.num_aug, "eval-loss: view ", o.view, " requested, but ", path, " holds ",
            info.num_aug, " view(s) per image (aug ", info.aug, "): expected 0..", info.num_aug - 1,
            " or all");

  // Which images, which views.
  const auto& valid = data.valid_indices();
  AIM_CHECK(!valid.empty(), path, ": no labelled image to score");
  std::vector<int64_t> images;
  const int64_t n_valid = static_cast<int64_t>(valid.size());
  if (o.max_images > 0 && o.max_images < n_valid) {
    for (int64_t i = 0; i < o.max_images; ++i) images.push_back(valid[static_cast<size_t>(i * n_valid / o.max_images)]);
  } else {
    images = valid;
  }
  std::vector<int64_t> seq_index, seq_view;
  for (const int64_t i : images) {
    const int16_t label = data.label(i);
    AIM_CHECK(label < mc.num_classes, path, ": image ", i, " has label ", label, ", but the model has ",
              mc.num_classes, " classes (model.num_classes)");
    for (int64_t a = o.view < 0 ? 0 : o.view; a < (o.view < 0 ? info.num_aug : o.view + 1); ++a) {
      seq_index.push_back(i);
      seq_view.push_back(a);
    }
  }

  const int64_t T = mc.num_tokens, S = static_cast<int64_t>(seq_index.size());
  const int64_t offset = mc.decode_position_offset;
  AIM_CHECK(offset >= 0 && T - 2 + offset <= mc.num_tokens, "eval-loss: decode_position_offset ", offset,
            " puts the last token beyond the position table of ", mc.num_tokens + 1, " rows");
  const auto device = model->head_weight().device();
  model->eval();
  torch::NoGradGuard no_grad;

  auto by_position = torch::zeros({T}, torch::kDouble), by_position_decode = torch::zeros({T}, torch::kDouble);
  auto by_position_rec = torch::zeros({T}, torch::kDouble);
  auto class_sum = torch::zeros({mc.num_classes}, torch::kDouble);
  auto class_count = torch::zeros({mc.num_classes}, torch::kLong);
  LogitErrors errors;
  const auto pos_opt = torch::TensorOptions().dtype(torch::kLong).device(device);
  const auto decode_positions = torch::arange(offset, offset + T - 1, pos_opt);

  for (int64_t s = 0; s < S; s += o.batch_size) {
    const int64_t n = std::min(o.batch_size, S - s);
    const std::vector<int64_t> idx(seq_index.begin() + s, seq_index.begin() + s + n);
    const std::vector<int64_t> aug(seq_view.begin() + s, seq_view.begin() + s + n);
    torch::Tensor codes, labels;
    data.gather(idx, aug, codes, labels);
    codes = codes.to(device);
    const auto fed = (o.unconditional ? torch::full_like(labels, model->null_class()) : labels).to(device);
    const auto inputs = codes.narrow(1, 0, T - 1);

    const auto hidden = model->forward_hidden(inputs, fed);
    const auto nll = token_nll(model, hidden, codes);  // [n, T]
    by_position += nll.sum(0).to(torch::kDouble).cpu();
    class_sum.index_add_(0, labels, nll.mean(1).to(torch::kDouble).cpu());
    class_count.index_add_(0, labels, torch::ones({n}, torch::kLong));

    // At offset 0 the decoder's positions are training's: the same pass.
    const auto hidden_decode = offset == 0 ? hidden : model->forward_hidden(inputs, fed, decode_positions);
    if (offset != 0) {
      by_position_decode += token_nll(model, hidden_decode, codes).sum(0).to(torch::kDouble).cpu();
    }
    if (o.recurrent) {
      auto state = model->start(fed, torch::kFloat, o.ssm_state_dtype);
      std::vector<torch::Tensor> nll_steps;
      for (int64_t t = 0; t < T; ++t) {
        const auto rec = model->step(state, t == 0 ? torch::Tensor() : codes.select(1, t - 1)).to(torch::kFloat);
        const auto par = model->logits(hidden_decode.select(1, t)).to(torch::kFloat);
        errors.add(rec, par);
        nll_steps.push_back(torch::logsumexp(rec, -1) - rec.gather(1, codes.select(1, t).unsqueeze(1)).squeeze(1));
      }
      by_position_rec += torch::stack(nll_steps, 1).sum(0).to(torch::kDouble).cpu();
    }
    if (on_batch) on_batch(n);
  }

  CodeLoss r;
  r.images = static_cast<int64_t>(images.size());
  r.sequences = S;
  r.tokens = T;
  auto finish = [&](const torch::Tensor& sums, std::vector<double>& per_position) {
    const auto mean = sums / static_cast<double>(S);
    per_position.assign(mean.data_ptr<double>(), mean.data_ptr<double>() + T);
    return mean.mean().item<double>();
  };
  r.nll = finish(by_position, r.nll_by_position);
  if (offset != 0) {
    r.nll_decode = finish(by_position_decode, r.nll_decode_by_position);
  } else {
    r.nll_decode = r.nll;
    r.nll_decode_by_position = r.nll_by_position;
  }
  r.sequences_by_class.assign(class_count.data_ptr<int64_t>(), class_count.data_ptr<int64_t>() + mc.num_classes);
  r.nll_by_class.resize(static_cast<size_t>(mc.num_classes));
  for (int64_t c = 0; c < mc.num_classes; ++c) {
    r.nll_by_class[c] = r.sequences_by_class[c] > 0 ? class_sum[c].item<double>() / r.sequences_by_class[c]
                                                    : std::numeric_limits<double>::quiet_NaN();
  }
  if (o.recurrent) {
    std::vector<double> unused;
    r.recurrent = true;
    r.nll_recurrent = finish(by_position_rec, unused);
    r.max_logit_error = errors.max_error.item<double>();
    r.max_abs_logit = errors.max_abs.item<double>();
    r.mean_logit_error = errors.sum_error.item<double>() / static_cast<double>(errors.logits);
    r.mean_abs_logit = errors.sum_abs.item<double>() / static_cast<double>(errors.logits);
    r.argmax_agreement = static_cast<double>(errors.agree.item<int64_t>()) / static_cast<double>(errors.positions);
  }
  return r;
}

namespace {

/// A dark-blue -> teal -> green -> yellow ramp (close to viridis) at t in [0, 1].
std::array<uint8_t, 3> ramp(double t) {
  static constexpr double kStops[5][3] = {
      {68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  t = std::clamp(t, 0.0, 1.0) * 4.0;
  const int i = std::min(static_cast<int>(t), 3);
  const double f = t - i;
  std::array<uint8_t, 3> c{};
  for (int k = 0; k < 3; ++k) {
    c[k] = static_cast<uint8_t>(std::lround(kStops[i][k] + f * (kStops[i + 1][k] - kStops[i][k])));
  }
  return c;
}

void fill(Image& image, int x0, int y0, int w, int h, std::array<uint8_t, 3> c) {
  for (int y = y0; y < y0 + h; ++y)
    for (int x = x0; x < x0 + w; ++x) std::copy(c.begin(), c.end(), image.pixel(x, y));
}

}  // namespace

Image loss_heatmap(const std::vector<double>& v, const std::string& title) {
  const int n = static_cast<int>(v.size());
  const int side = static_cast<int>(std::lround(std::sqrt(static_cast<double>(n))));
  AIM_CHECK(n > 0 && side * side == n, "loss_heatmap: ", n, " positions are not a square grid of tokens");
  // The colour scale spans tokens 1.. only: token 0, predicted from the class alone, is usually far
  // harder than the rest and would flatten them; it takes the scale's end colour and its value is
  // printed under the bar.
  const auto first = n > 1 ? v.begin() + 1 : v.begin();
  const auto [lo_it, hi_it] = std::minmax_element(first, v.end());
  const double lo = *lo_it, hi = *hi_it, span = hi > lo ? hi - lo : 1.0;
  const int cell = std::max(4, 384 / side), grid = cell * side, pad = 10, text_h = kCellHeight;
  const int bar_h = 14;
  const int width = std::max(grid, text_width(title, 1)) + 2 * pad;  // (the title whole on a small grid)
  const int height = pad + text_h + 6 + grid + 8 + bar_h + 4 + text_h + pad;
  Image image(width, height);
  fill(image, 0, 0, width, height, {255, 255, 255});
  draw_text(image, pad, pad, title, {0, 0, 0});
  const int gy = pad + text_h + 6;
  for (int i = 0; i < n; ++i) {
    fill(image, pad + (i % side) * cell, gy + (i / side) * cell, cell, cell, ramp((v[i] - lo) / span));
  }
  const int by = gy + grid + 8;
  for (int x = 0; x < grid; ++x) {
    fill(image, pad + x, by, 1, bar_h, ramp(static_cast<double>(x) / std::max(grid - 1, 1)));
  }
  char lo_text[32], hi_text[32], first_text[48];
  std::snprintf(lo_text, sizeof(lo_text), "%.3f", lo);
  std::snprintf(hi_text, sizeof(hi_text), "%.3f nats", hi);
  draw_text(image, pad, by + bar_h + 4, lo_text, {0, 0, 0});
  if (n > 1 && (v[0] > hi || v[0] < lo)) {
    std::snprintf(first_text, sizeof(first_text), "token 0: %.3f", v[0]);
    draw_text(image, pad + (grid - text_width(first_text, 1)) / 2, by + bar_h + 4, first_text, {0, 0, 0});
  }
  draw_text(image, pad + grid - text_width(hi_text, 1), by + bar_h + 4, hi_text, {0, 0, 0});
  return image;
}

}  // namespace aim
