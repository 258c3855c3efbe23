// `aim eval-loss --ckpt CKPT --codes FILE`: held-out next-token loss of a checkpoint; with
// --recurrent, the sampler's step-by-step path checked against it.
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "aim/cli/commands.h"
#include "aim/core/checkpoint.h"
#include "aim/core/config.h"
#include "aim/core/env.h"
#include "aim/core/error.h"
#include "aim/core/fileio.h"
#include "aim/core/progress.h"
#include "aim/data/code_dataset.h"
#include "aim/data/image.h"
#include "aim/eval/code_loss.h"
#include "aim/model/loader.h"

namespace aim::cli {

namespace {

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

std::string sci(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.2e", v);
  return buf;
}

/// "  <name>" padded to the column where figures start.
std::string row(const std::string& name) {
  return "  " + name + std::string(name.size() < 31 ? 31 - name.size() : 1, ' ');
}

/// Mean of per-position losses over [begin, end).
double span_mean(const std::vector<double>& v, int64_t begin, int64_t end) {
  double s = 0;
  for (int64_t i = begin; i < end; ++i) s += v[static_cast<size_t>(i)];
  return end > begin ? s / static_cast<double>(end - begin) : 0.0;
}

}  // namespace

Runner add_eval_loss_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval-loss", "Held-out next-token loss of a checkpoint on a code dataset "
                                              "(and the recurrent decoder checked against it)");
  struct Args {
    std::string ckpt, config, codes, view = "0", device = "auto", dtype = "fp32", ssm_state = "fp32";
    std::string json, heatmap;
    int64_t batch_size = 32, max_images = 0, position_offset = 0;
    bool use_ema = false, unconditional = false, recurrent = false, quiet = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--ckpt", a->ckpt, "official HF snapshot dir, aim run dir, or .safetensors with --config")->required();
  cmd->add_option("--config", a->config, "model config for a bare weights file (YAML or config.json)");
  cmd->add_option("--codes", a->codes, "code dataset (aim extract-codes), e.g. of the validation images")->required();
  cmd->add_option("--view", a->view, "augmentation view of each image: an index or 'all'")->capture_default_str();
  cmd->add_option("--max-images", a->max_images, "score this many images, spread over the set (0 = all)")
      ->capture_default_str();
  cmd->add_option("--batch-size", a->batch_size, "sequences per forward")->capture_default_str();
  cmd->add_option("--device", a->device, kDeviceHelp)->capture_default_str();
  cmd->add_option("--dtype", a->dtype, "model weights: fp32 | bf16")->capture_default_str();
  cmd->add_flag("--ema", a->use_ema, "use the run directory's EMA weights");
  cmd->add_option("--decode-position-offset", a->position_offset,
                  "score the decoder's positions with this shift (0 or 1) instead of the checkpoint's");
  cmd->add_flag("--unconditional", a->unconditional, "feed the null class (the guidance's unconditional model)");
  cmd->add_flag("--recurrent", a->recurrent,
                "also decode step by step (teacher-forced, the sampler's path) and compare its logits");
  cmd->add_option("--ssm-state", a->ssm_state, "the recurrent pass's Mamba state: fp32 | bf16")->capture_default_str();
  cmd->add_option("--json", a->json, "also write the figures (per position and per class too) as JSON (- for standard output)");
  cmd->add_option("--heatmap", a->heatmap, "PNG of the loss at each token position of the image's code grid");
  cmd->add_flag("--quiet", a->quiet, "no progress lines");
  return [cmd, a]() -> int {
    if (!cmd->parsed()) return -1;
    refuse_launcher("eval-loss");
    {
      std::vector<std::pair<std::string, std::string>> inputs = {{"--codes", a->codes}, {"--ckpt", a->ckpt}, {"--config", a->config}};
      try {
        const auto r = find_checkpoint(a->ckpt, a->config);
        for (const auto& f : {r.weights_path, r.config_path, r.ema_path}) inputs.emplace_back("--ckpt", f);
      } catch (const Error&) {  // reported where it is loaded
      }
      refuse_output_over_input("--json", a->json, inputs);
      refuse_output_over_input("--heatmap", a->heatmap, inputs);
      if (!a->json.empty() && !a->heatmap.empty() && !is_stream_output(a->json)) {
        std::error_code ec;
        AIM_CHECK(std::filesystem::weakly_canonical(a->json, ec) != std::filesystem::weakly_canonical(a->heatmap, ec),
                  "--heatmap ", a->heatmap, ": the same file as --json ", a->json, ": one would replace the other");
      }
      check_report_path("--json", a->json);
      check_output_path("--heatmap", a->heatmap);
    }
    AIM_CHECK(a->dtype == "fp32" || a->dtype == "bf16", "--dtype: expected fp32 or bf16, found '", a->dtype, "'");
    AIM_CHECK(a->ssm_state == "fp32" || a->ssm_state == "bf16", "--ssm-state: expected fp32 or bf16, found '",
              a->ssm_state, "'");
    AIM_CHECK(a->ssm_state == "fp32" || a->recurrent, "--ssm-state ", a->ssm_state,
              ": the state is used by the recurrent pass only\n---> HINT: add --recurrent");
    AIM_CHECK(a->batch_size >= 1, "--batch-size: expected >= 1, found ", a->batch_size);
    AIM_CHECK(a->max_images >= 0, "--max-images: expected >= 0, found ", a->max_images);
    CodeLossOptions o;
    o.batch_size = a->batch_size;
    o.max_images = a->max_images;
    o.unconditional = a->unconditional;
    o.recurrent = a->recurrent;
    o.ssm_state_dtype = a->ssm_state == "bf16" ? torch::kBFloat16 : torch::kFloat;
    if (a->view == "all") {
      o.view = -1;
    } else {
      try {
        size_t used = 0;
        o.view = std::stoll(a->view, &used);
        AIM_CHECK(used == a->view.size() && o.view >= 0, "");
      } catch (const std::exception&) {
        throw Error(str_cat("--view: expected a view index (0, 1, ...) or 'all', found '", a->view, "'"));
      }
    }
    const auto device = parse_device(a->device, 0);
    const auto ref = find_checkpoint(a->ckpt, a->config);
    auto model = load_aim_model(ref, a->use_ema);
    model->to(device, a->dtype == "bf16" ? torch::kBFloat16 : torch::kFloat);
    if (cmd->count("--decode-position-offset")) {
      set_decode_position_offset(model, a->position_offset, "--decode-position-offset");
    }
    const auto& mc = model->config;
    const auto side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(mc.num_tokens))));
    AIM_CHECK(a->heatmap.empty() || side * side == mc.num_tokens, "--heatmap: the model's ", mc.num_tokens,
              " tokens are not a square grid of codes");
    CodeDataset data(a->codes);
    const auto& info = data.info();
    if (ref.kind == CheckpointKind::kRunDir) {
      // Codes of another tokenizer than the run's training codes give a loss that measures nothing.
      const std::string trained_on = load_config(ref.config_path).data.codes;
      std::error_code ec;
      std::string theirs;
      std::vector<std::string> their_classes;
      if (!trained_on.empty() && std::filesystem::is_regular_file(trained_on, ec)) {
        try {
          const CodeDataset trained(trained_on);
          theirs = trained.info().tokenizer;
          their_classes = trained.info().classes;
        } catch (const Error&) {  // a file this command does not need: no warning, no failure
        }
        // Labels index class names: codes listing the classes in another order would score every
        // image under another class (training refuses such data.val_codes too).
        const std::string difference =
            class_order_difference(info.classes, their_classes, str_cat("the run's training data (data.codes ", trained_on, ")"));
        AIM_CHECK(difference.empty(), "--codes ", a->codes, ": ", difference,
                  "\n---> HINT: extract the held-out images with the training data's classes (extract-codes --list ... "
                  "--classes <the training classes>)");
        if (!theirs.empty() && theirs != info.tokenizer)
          std::cerr << "warning: " << a->codes << " holds codes of tokenizer " << info.tokenizer << ", but the run "
                    << "trained on codes of " << theirs << " (data.codes " << trained_on << "): the loss compares "
                    << "two tokenizers' codes\n---> HINT: extract the held-out images with the run's tokenizer\n";
      }
    }

    const int64_t views = a->view == "all" ? info.num_aug : 1;
    const int64_t images = a->max_images > 0 ? std::min<int64_t>(a->max_images, data.valid_indices().size())
                                             : static_cast<int64_t>(data.valid_indices().size());
    Progress progress("eval-loss", images * views, "seq", !a->quiet);
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = evaluate_code_loss(model, data, o, [&](int64_t n) { progress.update(n); });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    progress.finish();

    // The figures as text, on standard error where the JSON takes standard output (--json -).
    std::ostream& out = process_stream_fd(a->json) == 1 ? std::cerr : std::cout;
    const std::string state_name = a->ssm_state + " state";
    out << a->ckpt << " on " << a->codes << ": " << r.images << " images x " << views << " view(s) ("
              << (o.view < 0 ? "all" : str_cat("view ", o.view, " of ", info.num_aug)) << ", aug " << info.aug
              << "), " << r.tokens << " tokens each, " << (a->unconditional ? "null class" : "their labels")
              << ", " << a->dtype << " on " << device << ", " << fixed(r.sequences * r.tokens / seconds, 0)
              << " tokens/s\n";
    out << row("loss") << fixed(r.nll, 4) << " nats/token (perplexity "
              << fixed(std::exp(r.nll), 2) << ", " << fixed(r.nll / std::log(2.0), 4) << " bits/token)\n";
    if (mc.decode_position_offset == 0) {
      out << row("loss, decoder's positions") << "the same (model.decode_position_offset 0)\n";
    } else {
      out << row("loss, decoder's positions") << fixed(r.nll_decode, 4) << " nats/token ("
                << (r.nll_decode >= r.nll ? "+" : "") << fixed(r.nll_decode - r.nll, 4)
                << ": image token j at position j + " << mc.decode_position_offset << ", as sampling feeds it)\n";
    }
    const int64_t T = r.tokens, q = std::max<int64_t>(T / 4, 1);
    out << row("by position") << "token 0: " << fixed(r.nll_by_position[0], 3);
    const int64_t edges[] = {1, q, 2 * q, 3 * q, T};
    for (int i = 0; i < 4; ++i) {
      if (edges[i + 1] <= edges[i]) continue;
      out << " | " << edges[i] << "-" << edges[i + 1] - 1 << ": "
                << fixed(span_mean(r.nll_by_position, edges[i], edges[i + 1]), 3);
    }
    out << "\n";
    int64_t best = -1, worst = -1;
    for (int64_t c = 0; c < mc.num_classes; ++c) {
      if (r.sequences_by_class[c] == 0) continue;
      if (best < 0 || r.nll_by_class[c] < r.nll_by_class[best]) best = c;
      if (worst < 0 || r.nll_by_class[c] > r.nll_by_class[worst]) worst = c;
    }
    auto class_name = [&](int64_t c) {
      return c < static_cast<int64_t>(info.classes.size()) ? str_cat(c, " (", info.classes[c], ")") : std::to_string(c);
    };
    out << row("by class") << "lowest " << class_name(best) << ": " << fixed(r.nll_by_class[best], 3)
              << ", highest " << class_name(worst) << ": " << fixed(r.nll_by_class[worst], 3) << "\n";
    if (r.recurrent) {
      out << row("recurrent decoding, " + state_name) << fixed(r.nll_recurrent, 4) << " nats/token ("
                << (r.nll_recurrent >= r.nll_decode ? "+" : "") << sci(r.nll_recurrent - r.nll_decode)
                << " against the parallel pass at the decoder's positions)\n"
                << "    logits against that pass: max |error| " << sci(r.max_logit_error) << " = "
                << sci(r.max_logit_error / r.max_abs_logit) << " of max |logit|, mean |error| "
                << sci(r.mean_logit_error) << " = " << sci(r.mean_logit_error / r.mean_abs_logit)
                << " of mean |logit|; most likely token the same at " << fixed(100.0 * r.argmax_agreement, 2)
                << "% of positions\n";
    }
    if (!a->heatmap.empty()) {
      // (Training's positions, token j at j; with an offset the decoder's are in the JSON.)
      write_png(a->heatmap,
                loss_heatmap(r.nll_by_position,
                             str_cat("loss by token position", mc.decode_position_offset ? " (training's: j at j)" : "",
                                     ", ", r.sequences, " sequences (mean ", fixed(r.nll, 3), ")")));
      out << "heatmap: " << a->heatmap << "\n";
    }
    if (!a->json.empty()) {
      nlohmann::ordered_json j;
      j["checkpoint"] = a->ckpt;
      j["ema"] = a->use_ema;
      j["codes"] = a->codes;
      j["codes_tokenizer"] = info.tokenizer;
      j["max_images"] = a->max_images;
      j["images"] = r.images;
      j["sequences"] = r.sequences;
      j["tokens"] = r.tokens;
      j["view"] = o.view < 0 ? nlohmann::ordered_json("all") : nlohmann::ordered_json(o.view);
      j["labels"] = a->unconditional ? "null class" : "dataset";
      j["dtype"] = a->dtype;
      j["nll"] = r.nll;
      j["perplexity"] = std::exp(r.nll);
      j["decode_position_offset"] = mc.decode_position_offset;
      j["nll_decode_positions"] = r.nll_decode;
      j["nll_by_position"] = r.nll_by_position;
      j["nll_decode_positions_by_position"] = r.nll_decode_by_position;
      auto& classes = j["by_class"] = nlohmann::ordered_json::array();
      for (int64_t c = 0; c < mc.num_classes; ++c) {
        if (r.sequences_by_class[c] == 0) continue;
        nlohmann::ordered_json e;
        e["class"] = c;
        if (c < static_cast<int64_t>(info.classes.size())) e["name"] = info.classes[c];
        e["sequences"] = r.sequences_by_class[c];
        e["nll"] = r.nll_by_class[c];
        classes.push_back(e);
      }
      if (r.recurrent) {
        auto& rec = j["recurrent"];
        rec["ssm_state"] = a->ssm_state;
        rec["nll"] = r.nll_recurrent;
        rec["max_logit_error"] = r.max_logit_error;
        rec["max_abs_logit"] = r.max_abs_logit;
        rec["mean_logit_error"] = r.mean_logit_error;
        rec["mean_abs_logit"] = r.mean_abs_logit;
        rec["argmax_agreement"] = r.argmax_agreement;
      }
      write_report(a->json, j.dump(2) + "\n");
      if (!is_stream_output(a->json)) out << "json: " << a->json << "\n";
    }
    return 0;
  };
}

}  // namespace aim::cli
