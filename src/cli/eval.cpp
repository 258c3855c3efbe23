// `aim eval --samples S --ref R`: Inception Score, FID, sFID, precision and recall as ADM's
// evaluator computes them.
#include <algorithm>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "aim/cli/commands.h"
#include "aim/core/env.h"
#include "aim/core/error.h"
#include "aim/core/fileio.h"
#include "aim/eval/evaluator.h"
#include "aim/sample/npz.h"

namespace aim::cli {

namespace {

/// The sampling settings `aim sample --npz` stored beside the images (member `aim_settings`,
/// JSON text), or an empty object for other inputs.
nlohmann::ordered_json sampling_settings(const std::string& samples) {
  const bool npz = samples.size() > 4 && samples.compare(samples.size() - 4, 4, ".npz") == 0;
  if (!npz) return nlohmann::ordered_json::object();
  NpzReader reader(samples);
  if (!reader.contains("aim_settings")) return nlohmann::ordered_json::object();
  const auto bytes = reader.read("aim_settings").contiguous();
  const std::string text(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()), static_cast<size_t>(bytes.numel()));
  try {
    return nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(str_cat(samples, ": member aim_settings is not JSON: ", e.what()));
  }
}

/// What of `settings` differs from the published FIDs' sampling (temperature 1, no top-k, top-p
/// or cfg top-p filtering), as "top-k 600, top-p 0.98"; "" when nothing does.
std::string unlike_the_published(const nlohmann::ordered_json& settings) {
  std::string out;
  auto check = [&](const char* key, const char* name, double published) {
    if (!settings.contains(key)) return;
    const std::string text = settings[key].get<std::string>();
    const double value = std::strtod(text.c_str(), nullptr);
    if (value != published) out += str_cat(out.empty() ? "" : ", ", name, " ", value);
  };
  check("temperature", "temperature", 1.0);
  check("top_k", "top-k", 0.0);
  check("top_p", "top-p", 1.0);
  check("cfg_top_p", "cfg top-p", 1.0);
  return out;
}

}  // namespace

Runner add_eval_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "eval", "IS, FID, sFID, precision and recall of samples against a reference batch (ADM's evaluator)");
  struct Args {
    std::string samples, ref, inception, device = "auto", preprocess = "adm", json;
    int64_t batch_size = 100, split_size = 5000, k = 3, pr_block = 10000;
    bool bf16 = false, no_cache = false, allow_size_mismatch = false, quiet = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--samples", a->samples, "samples: ADM .npz (arr_0 uint8 [N, H, W, 3]) or a folder of images")
      ->required();
  cmd->add_option("--ref", a->ref, "reference batch, e.g. VIRTUAL_imagenet256_labeled.npz (or a folder)")->required();
  cmd->add_option("--inception", a->inception,
                  "FID Inception-v3 .safetensors (default $AIM_INCEPTION_WEIGHTS; convert pytorch-fid's "
                  "pt_inception-2015-12-05 with tools/convert_checkpoint.py --kind inception)");
  cmd->add_option("--device", a->device, kDeviceHelp)->capture_default_str();
  cmd->add_option("--batch-size", a->batch_size, "images per Inception forward")->capture_default_str();
  cmd->add_option("--preprocess", a->preprocess,
                  "adm (TF1 bilinear resize, (x-128)/128: the published numbers) | pytorch-fid")
      ->capture_default_str();
  cmd->add_flag("--bf16", a->bf16, "run the Inception in bf16 (CUDA only; moves FID by ~0.01-0.1)");
  cmd->add_flag("--no-cache", a->no_cache, "neither read nor write <input>.inception.safetensors");
  cmd->add_option("--split-size", a->split_size, "Inception Score split size")->capture_default_str();
  cmd->add_option("--k", a->k, "precision/recall neighbourhood size")->capture_default_str();
  cmd->add_option("--pr-block", a->pr_block, "rows/columns of one precision/recall distance block")
      ->capture_default_str();
  cmd->add_flag("--allow-size-mismatch", a->allow_size_mismatch,
                "evaluate samples and reference of different image sizes");
  cmd->add_option("--json", a->json, "write the results here (default <samples>.eval.json; - for standard output)");
  cmd->add_flag("--quiet", a->quiet, "no progress lines");
  return [cmd, a]() -> int {
    if (!cmd->parsed()) return -1;
    refuse_launcher("eval");
    refuse_output_over_input("--json", a->json, {{"--samples", a->samples}, {"--ref", a->ref}, {"--inception", a->inception}});
    check_report_path("--json", a->json);
    eval::EvalOptions o;
    o.inception_weights = a->inception;
    if (o.inception_weights.empty())
      if (const char* env = std::getenv("AIM_INCEPTION_WEIGHTS")) o.inception_weights = env;
    o.device = parse_device(a->device, 0);
    o.batch_size = a->batch_size;
    if (a->preprocess == "adm" || a->preprocess == "adm_tf1")
      o.preprocess = eval::InceptionPreprocess::kAdmTf1;
    else if (a->preprocess == "pytorch-fid" || a->preprocess == "pytorch_fid")
      o.preprocess = eval::InceptionPreprocess::kPytorchFid;
    else
      throw Error(str_cat("--preprocess: expected adm or pytorch-fid, found '", a->preprocess, "'"));
    AIM_CHECK(!a->bf16 || o.device.is_cuda(), "--bf16: the bf16 Inception runs on CUDA only (found --device ",
              a->device, ", the ", o.device.str(), ")");
    o.bf16 = a->bf16;
    o.use_cache = !a->no_cache;
    o.is_split_size = a->split_size;
    o.k = a->k;
    o.pr_block = a->pr_block;
    o.allow_size_mismatch = a->allow_size_mismatch;
    o.progress = !a->quiet;

    const auto sampling = sampling_settings(a->samples);
    const eval::EvalResult r = eval::evaluate(a->samples, a->ref, o);
    const bool adm = o.preprocess == eval::InceptionPreprocess::kAdmTf1 && !o.bf16 && o.k == 3 &&
                     o.is_split_size == 5000;
    auto origin = [](bool stored) { return stored ? "stored statistics" : "images"; };

    std::ostringstream out;
    out << "samples    " << a->samples << ": " << r.num_samples << " images " << r.sample_width << "x"
        << r.sample_height << (r.sample_features_cached ? " (cached features)" : "") << "\n"
        << "reference  " << a->ref << ": " << r.num_ref << " images " << r.ref_width << "x" << r.ref_height
        << (r.ref_features_cached ? " (cached features)" : "")
        << (r.ref_stats_stored ? ", FID against its stored mu/sigma" : "")
        << (r.ref_spatial_stored ? ", sFID against its stored mu_s/sigma_s" : "") << "\n";
    if (!sampling.empty()) {
      auto get = [&](const char* key) { return sampling.contains(key) ? sampling[key].get<std::string>() : "?"; };
      out << "sampled    by aim sample: " << get("checkpoint") << ", preset " << get("preset") << ", cfg "
          << std::strtod(get("cfg").c_str(), nullptr) << ", seed " << get("seed") << ", " << get("dtype") << "\n";
      const std::string unlike = unlike_the_published(sampling);
      if (!unlike.empty()) {
        out << "note: sampled with " << unlike << "; the published FIDs sampled without filtering (--preset fid)\n";
      }
    }
    out << std::fixed << "  Inception Score  " << std::setprecision(4) << r.inception_score << "\n"
        << "  FID              " << std::setprecision(5) << r.fid << "\n"
        << "  sFID             " << std::setprecision(5) << r.sfid << "\n"
        << "  Precision        " << std::setprecision(4) << r.precision << "\n"
        << "  Recall           " << std::setprecision(4) << r.recall << "\n"
        << "protocol: " << (adm ? "ADM evaluator" : "NOT the ADM evaluator's settings") << " (preprocess "
        << eval::to_string(o.preprocess) << ", Inception " << (o.bf16 ? "bf16" : "fp32") << ", IS splits of "
        << o.is_split_size << ", k = " << o.k << "); " << std::setprecision(1) << r.seconds << " s\n";
    if (r.is_splits > 1 && 2 * r.predicted_classes_min_split < std::min(r.predicted_classes, o.is_split_size))
      out << "note: the samples look sorted by class: their most likely Inception classes take "
          << r.predicted_classes << " values over all samples but " << r.predicted_classes_min_split
          << " in one IS split of " << o.is_split_size << "; the IS (over consecutive splits, as ADM's) is then "
             "far below that of the same samples shuffled, as published samples were\n---> HINT: shuffle "
             "them (aim sample --labels balanced does)\n";
    if (r.fid_info.eps_used || r.sfid_info.eps_used)
      out << "note: a covariance product was singular; the eps = 1e-6 offset was used ("
          << (r.fid_info.eps_used ? "FID" : "") << (r.fid_info.eps_used && r.sfid_info.eps_used ? ", " : "")
          << (r.sfid_info.eps_used ? "sFID" : "") << ")\n";
    // On standard error where the JSON takes standard output (--json -).
    (process_stream_fd(a->json) == 1 ? std::cerr : std::cout) << out.str() << std::flush;

    nlohmann::ordered_json j;
    j["samples"] = a->samples;
    j["reference"] = a->ref;
    j["num_samples"] = r.num_samples;
    j["num_reference"] = r.num_ref;
    j["sample_size"] = {r.sample_height, r.sample_width};
    j["reference_size"] = {r.ref_height, r.ref_width};
    j["inception_score"] = r.inception_score;
    j["fid"] = r.fid;
    j["sfid"] = r.sfid;
    j["precision"] = r.precision;
    j["recall"] = r.recall;
    j["statistics"] = {{"sample_fid", origin(r.sample_stats_stored)},
                       {"reference_fid", origin(r.ref_stats_stored)},
                       {"sample_sfid", origin(r.sample_spatial_stored)},
                       {"reference_sfid", origin(r.ref_spatial_stored)},
                       {"fid_eps_used", r.fid_info.eps_used},
                       {"sfid_eps_used", r.sfid_info.eps_used}};
    j["features"] = {{"samples_cached", r.sample_features_cached},
                     {"reference_cached", r.ref_features_cached},
                     {"samples_cache", r.sample_cache},
                     {"reference_cache", r.ref_cache}};
    j["settings"] = {{"adm_protocol", adm},
                     {"inception_weights", o.inception_weights},
                     {"preprocess", eval::to_string(o.preprocess)},
                     {"inception_dtype", o.bf16 ? "bfloat16" : "float32"},
                     {"device", o.device.str()},
                     {"is_split_size", o.is_split_size},
                     {"k", o.k}};
    if (!sampling.empty()) j["sampling"] = sampling;
    j["inception_classes"] = {{"predicted", r.predicted_classes},
                              {"fewest_in_a_split", r.predicted_classes_min_split},
                              {"splits", r.is_splits}};
    j["seconds"] = r.seconds;
    std::string json_path = a->json;
    if (json_path.empty()) {
      json_path = a->samples;
      while (json_path.size() > 1 && json_path.back() == '/') json_path.pop_back();
      json_path += ".eval.json";
    }
    write_report(json_path, j.dump(2) + "\n");
    if (!a->quiet && !is_stream_output(json_path)) std::cerr << "wrote " << json_path << "\n";
    return 0;
  };
}

}  // namespace aim::cli
