#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <future>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <set>
#include <thread>
#include <vector>

#include "aim/cli/commands.h"
#include "aim/core/checkpoint.h"
#include "aim/core/config.h"
#include "aim/core/env.h"
#include "aim/core/error.h"
#include "aim/core/fileio.h"
#include "aim/core/liveness.h"
#include "aim/core/progress.h"
#include "aim/core/safetensors.h"
#include "aim/data/image.h"
#include "aim/model/loader.h"
#include "aim/sample/generate.h"
#include "aim/sample/npz.h"
#include "aim/sample/plan.h"
#include "aim/train/run_dir.h"

#ifdef AIM_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace aim::cli {

namespace fs = std::filesystem;

namespace {

struct SampleArgs {
  std::string ckpt, config, vq, vq_config, classes = "", class_names, labels_mode = "balanced";
  std::string out, outdir, npz, tokens, from_tokens, work_dir, preset, dtype = "fp32", vq_dtype = "fp32", ssm_state = "fp32",
              device = "auto";
  std::vector<std::string> prompt;
  std::string prompt_encoding = "image";
  int64_t num = 1, num_samples = 0, batch_size = 16, top_k = -1, nrow = 0, position_offset = 0, prompt_rows = 0;
  double cfg = -1, temperature = -1, top_p = -1, cfg_top_p = -1;
  uint64_t seed = 0;
  bool use_ema = false, captions = true, no_cuda_graph = false;
};

std::string part_name(int64_t start, int64_t count) { return str_cat("part-", start, "-", count, ".safetensors"); }

/// Several ranks meet only in the work folder. A rank that stops with an error leaves
/// rank-<r>.failed there (as its stack unwinds); rank 0, waiting for that rank's batches, stops
/// too instead of waiting for ever (a launcher that does not end the job when one rank fails,
/// e.g. srun without --kill-on-bad-exit). Each rank removes its own earlier marker first thing,
/// and rank 0 believes a marker once it has stayed kFailedGraceS while rank 0 waited, so an
/// earlier run's does not stop this one. (Not file times: a rank may fail before rank 0 starts.)
std::string failed_marker(int rank) { return str_cat("rank-", rank, ".failed"); }
/// A rank's heartbeat (aim/core/liveness.h): rank 0 also stops when the rank whose batch it
/// waits for has gone quiet, killed without a word (SIGKILL leaves no failure marker).
std::string alive_file(int rank) { return str_cat("rank-", rank, ".alive"); }

/// The files a checkpoint or tokenizer argument reads: its weights, config and EMA, a run
/// directory's through `latest` (one that cannot be resolved adds nothing: loading reports it).
std::vector<std::string> files_read_from(const std::string& path, const std::string& config) {
  std::vector<std::string> out;
  try {
    const auto r = find_checkpoint(path, config);
    out = {r.weights_path, r.config_path, r.ema_path};
  } catch (const Error&) {
  }
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return out;
  fs::path dir(path);
  try {
    if (const auto latest = train::RunDir(path).latest()) dir = *latest;  // a tokenizer's run (train-vq)
  } catch (const Error&) {
  }
  for (const char* f : {"model.safetensors", "ema.safetensors", "config.json", "config.yaml"})
    out.push_back((dir / f).string());
  return out;
}

/// Whether `name` is a file this command writes in its work folder: finished batches, their
/// temporary files, the ranks' failure markers and heartbeats.
bool is_work_file(const std::string& name) {
  auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
  return (name.rfind("part-", 0) == 0 && has(".safetensors")) ||
         (name.rfind("rank-", 0) == 0 && (has(".failed") || has(".alive")));
}

/// The work folder is removed once the output is written: one holding anything else (a folder
/// given to --work-dir by mistake) is refused before it is used.
void check_work_folder(const fs::path& work) {
  std::error_code ec;
  if (!fs::exists(work, ec)) return;
  AIM_CHECK(fs::is_directory(work, ec), "--work-dir ", work.string(), ": exists and is not a folder");
  for (const auto& e : fs::directory_iterator(work, ec)) {
    const std::string name = e.path().filename().string();
    AIM_CHECK(e.is_regular_file(ec) && is_work_file(name), "--work-dir ", work.string(), ": holds ", name,
              ", which is not a finished batch of aim sample; the folder is emptied and removed once the output "
              "is written\n---> HINT: give a new or empty folder to --work-dir (default: <output>.parts)");
  }
}

/// Removes what this command wrote in `work`, then the folder if nothing else is left in it.
void remove_work_folder(const fs::path& work) {
  // A few passes: another rank's last heartbeat may land between the removals and the folder's.
  for (int pass = 0; pass < 5; ++pass) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(work, ec))
      if (is_work_file(e.path().filename().string())) fs::remove(e.path(), ec);
    if (fs::remove(work, ec) || !fs::exists(work, ec)) return;  // only when empty
    bool only_ours = true;
    for (const auto& e : fs::directory_iterator(work, ec)) only_ours &= is_work_file(e.path().filename().string());
    if (!only_ours) return;  // something else: left there
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}
constexpr double kFailedGraceS = 10;

class FailureMarker {
 public:
  explicit FailureMarker(fs::path path) : path_(std::move(path)), exceptions_(std::uncaught_exceptions()) {}
  ~FailureMarker() {
    if (std::uncaught_exceptions() <= exceptions_) return;
    try {
      write_text_atomic(path_.string(), "this rank stopped with an error: see its output\n");
    } catch (...) {
    }
  }

 private:
  fs::path path_;
  int exceptions_;
};

/// Rank 0, while it waits: throws when another rank's failure marker has stayed kFailedGraceS.
/// `seen[r]`: when rank 0 first saw rank r's marker (reset when it is gone).
void check_failed_ranks(const fs::path& work, std::vector<std::optional<std::chrono::steady_clock::time_point>>& seen) {
  const auto now = std::chrono::steady_clock::now();
  for (size_t r = 1; r < seen.size(); ++r) {
    if (!fs::exists(work / failed_marker(static_cast<int>(r)))) {
      seen[r].reset();
      continue;
    }
    if (!seen[r]) seen[r] = now;
    if (std::chrono::duration<double>(now - *seen[r]).count() >= kFailedGraceS)
      throw Error(str_cat("rank ", r, " stopped with an error (its output says which); the finished batches in ",
                          work.string(), " are kept\n---> HINT: fix what it reports and re-run the same command"));
  }
}

/// Finished batches in `work` cut for another --batch-size would be neither reused nor kept
/// (the work folder goes once the output is assembled): refused, naming the size they have.
void check_part_layout(const fs::path& work, int64_t batch_size, int64_t total) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(work, ec)) {
    long long start = 0, count = 0;
    char tail = 0;
    const std::string name = e.path().filename().string();
    if (std::sscanf(name.c_str(), "part-%lld-%lld.safetensors%c", &start, &count, &tail) != 2) continue;
    const bool fits = start % batch_size == 0 && start < total && count == std::min<int64_t>(batch_size, total - start);
    AIM_CHECK(fits, work.string(), " holds finished batches of another --batch-size or number of samples (", name,
              ": ", count, " samples from ", start, "), which this run would not reuse\n---> HINT: re-run with "
              "the --batch-size they were made with (", count, " unless it is a last, shorter batch) and the same "
              "--num-samples (or --class, --num and --prompt), or remove ", work.string());
  }
}

/// A finished batch of an earlier run is reused only when that run used the same settings and
/// labels; anything else would mix two sampling setups in one output. The checkpoint counts by
/// what was loaded ("weights", "vq": name, size, digest), not by the path as typed: the same
/// weights named by another path (a trailing slash, an absolute path) are the same.
void check_resumed_part(const fs::path& part, const std::map<std::string, std::string>& settings,
                        const torch::Tensor& labels) {
  SafetensorsFile f(part.string());
  const auto& meta = f.metadata();
  const std::string hint = str_cat("\n---> HINT: run with the same settings, or remove ", part.parent_path().string(),
                                   " (or give another --work-dir) to sample afresh");
  for (const auto& [key, value] : settings) {
    if (key == "checkpoint") continue;
    const auto it = meta.find(key);
    // Batches written before prompts existed continued none.
    const std::string found = it != meta.end() ? it->second : key == "prompt" ? std::string("none")
                                                                              : std::string("(not recorded)");
    if (found != value)
      throw Error(str_cat(part.string(), ": this finished batch was sampled with ", key, " ", found,
                          ", but this run has ", key, " ", value, hint));
  }
  if (!torch::equal(f.get("labels").to(torch::kLong), labels))
    throw Error(str_cat(part.string(), ": this finished batch has other class labels than this run's samples ",
                        "at the same indices", hint));
}

/// uint8 [H, W, 3] -> Image.
Image image_from_hwc(const torch::Tensor& hwc_in) {
  auto hwc = hwc_in.contiguous();
  return Image(static_cast<int>(hwc.size(1)), static_cast<int>(hwc.size(0)),
               std::vector<uint8_t>(hwc.data_ptr<uint8_t>(), hwc.data_ptr<uint8_t>() + hwc.numel()));
}

/// The images a --prompt run continues, as the tokenizer saw them (center-cropped to the model's
/// resolution), and what the samples keep of them.
struct Prompts {
  std::vector<std::string> files;
  std::vector<Image> images;
  torch::Tensor tokens;  ///< [files, rows * side] int64: the top `rows` token rows of each image
  int64_t rows = 0, side = 0, per_prompt = 0;  ///< per_prompt: the samples of each prompt (--num)
  bool empty() const { return files.empty(); }
  /// The grid's tile for prompt j: the cropped image with the part to be generated in grey.
  Image tile(size_t j) const {
    Image im = images[j];
    const int keep = static_cast<int>(im.height * rows / side);
    std::fill(im.pixel(0, keep), im.rgb.data() + im.rgb.size(), uint8_t{128});
    return im;
  }
};

/// Writes every requested output from the assembled tokens, labels and uint8 images. With
/// prompts, the grid leads each prompt's samples with the prompt's tile (one row each unless
/// --nrow says otherwise); the other outputs hold the samples only.
/// The file --outdir gives sample `index` of class `label`.
std::string sample_png_name(int64_t index, int64_t label) {
  const std::string digits = std::to_string(index);
  return str_cat(std::string(6 - std::min<size_t>(6, digits.size()), '0'), digits, "_class", label, ".png");
}

/// --outdir, before the work (rank 0, which writes it): a folder that can be written, holding no
/// sample PNGs of an earlier run that this one would not replace. aim eval --samples reads every
/// PNG under a folder, so an earlier run's leftovers (another seed, more samples) would be scored
/// with this run's as one set.
void check_outdir(const std::string& outdir, const std::vector<int64_t>& labels) {
  if (outdir.empty()) return;
  std::error_code ec;
  AIM_CHECK(!fs::exists(outdir, ec) || fs::is_directory(outdir, ec), "--outdir ", outdir,
            ": exists and is not a folder");
  check_output_path("--outdir", (fs::path(outdir) / sample_png_name(0, labels.empty() ? 0 : labels[0])).string());
  std::set<std::string> ours;
  for (size_t i = 0; i < labels.size(); ++i) ours.insert(sample_png_name(static_cast<int64_t>(i), labels[i]));
  static const std::regex sample_png(R"([0-9]{6,}_class-?[0-9]+\.png)");
  std::vector<std::string> stale;
  for (const auto& e : fs::directory_iterator(outdir, ec)) {
    const std::string name = e.path().filename().string();
    if (std::regex_match(name, sample_png) && !ours.count(name)) stale.push_back(name);
  }
  if (stale.empty()) return;
  std::sort(stale.begin(), stale.end());
  std::string listed;
  for (size_t k = 0; k < std::min<size_t>(3, stale.size()); ++k) listed += str_cat(k ? ", " : "", stale[k]);
  throw Error(str_cat("--outdir ", outdir, ": holds ", stale.size(), " sample PNG", stale.size() == 1 ? "" : "s",
                      " that this run would not replace (", listed, stale.size() > 3 ? ", ..." : "",
                      "): an earlier run's, which aim eval --samples would score with this run's as one set\n"
                      "---> HINT: remove them, or choose another --outdir"));
}

void write_outputs(const SampleArgs& a, const torch::Tensor& tokens, const torch::Tensor& labels,
                   const std::function<torch::Tensor(int64_t, int64_t)>& images_of, int64_t count,
                   const std::vector<std::string>& names, const std::map<std::string, std::string>& settings,
                   const Prompts& prompts = {}) {
  if (!a.tokens.empty()) {
    save_safetensors(a.tokens, {{"tokens", tokens}, {"labels", labels}}, settings);
    std::cout << "tokens: " << a.tokens << "\n";
  }
  if (!a.npz.empty()) {
    auto first = images_of(0, std::min<int64_t>(count, 1));
    NpzWriter npz(a.npz);
    npz.begin_array("arr_0", torch::kUInt8, {count, first.size(1), first.size(2), 3});
    constexpr int64_t kChunk = 256;
    for (int64_t s = 0; s < count; s += kChunk) npz.append(images_of(s, std::min(kChunk, count - s)));
    npz.end_array();
    npz.add_array("arr_1", labels);
    if (!settings.empty()) {
      // The sampling settings as JSON text, so evaluation can report what it scored.
      nlohmann::json j(settings);
      const std::string text = j.dump();
      npz.add_array("aim_settings", torch::from_blob(const_cast<char*>(text.data()), {static_cast<int64_t>(text.size())},
                                                     torch::kUInt8).clone());
    }
    npz.close();
    std::cout << "npz: " << a.npz << " (arr_0 uint8 [" << count << ", " << first.size(1) << ", "
              << first.size(2) << ", 3], arr_1 labels)\n";
  }
  auto caption = [&](int64_t label) {
    return label >= 0 && label < static_cast<int64_t>(names.size()) ? str_cat(label, " ", names[label])
                                                                     : std::to_string(label);
  };
  if (!a.outdir.empty()) {
    fs::create_directories(a.outdir);
    for (int64_t s = 0; s < count; s += 64) {
      const int64_t n = std::min<int64_t>(64, count - s);
      auto rows = images_of(s, n);
      for (int64_t k = 0; k < n; ++k) {
        write_png((fs::path(a.outdir) / sample_png_name(s + k, labels[s + k].item<int64_t>())).string(),
                  image_from_hwc(rows[k]));
      }
    }
    std::cout << "images: " << (fs::path(a.outdir) / "").string() << " (" << count << " PNGs)\n";
  }
  if (!a.out.empty()) {
    auto uint8 = images_of(0, count);
    std::vector<Image> tiles;
    std::vector<std::string> caps;
    for (int64_t k = 0; k < count; ++k) {
      if (!prompts.empty() && k % prompts.per_prompt == 0) {
        tiles.push_back(prompts.tile(static_cast<size_t>(k / prompts.per_prompt)));
        caps.push_back("prompt");
      }
      tiles.push_back(image_from_hwc(uint8[k]));
      caps.push_back(caption(labels[k].item<int64_t>()));
    }
    const int nrow = a.nrow > 0          ? static_cast<int>(a.nrow)
                     : !prompts.empty() ? static_cast<int>(prompts.per_prompt + 1)
                                        : static_cast<int>(std::ceil(std::sqrt(static_cast<double>(count))));
    write_png(a.out, make_grid(tiles, nrow, 2, {255, 255, 255}, a.captions ? caps : std::vector<std::string>{}));
    std::cout << "grid: " << a.out << "\n";
  }
}

/// A grid is at most 1024 images: checked before anything is sampled or decoded.
void check_grid_size(const SampleArgs& a, int64_t count) {
  AIM_CHECK(a.out.empty() || count <= 1024, "--out ", a.out, ": a grid of ", count,
            " images is too large (at most 1024)\n---> HINT: use --outdir or --npz for many samples");
}

/// --prompt's images cropped as extract-codes crops them (ADM's center crop) to the model's
/// resolution and encoded `batch` at a time on the tokenizer's device; the top `rows` token rows
/// kept. `encoding` "image": the codes of the whole image, as training saw codes (its encoder's
/// convolutions and attention see the whole image, so the top codes also carry what lies below
/// them); "strip": the codes of the top rows x downsample pixel rows encoded alone (nothing from
/// below, but the strip's last rows are encoded against an edge no training image had there).
Prompts encode_prompts(const std::vector<std::string>& files, int64_t rows, int64_t per_prompt, VqModel& vq,
                       int64_t tokens, int64_t batch, const std::string& encoding) {
  Prompts p;
  p.files = files;
  p.side = VqModel::Impl::side_of(tokens);
  p.rows = rows;
  p.per_prompt = per_prompt;
  const int size = static_cast<int>(p.side * vq->config.downsample());
  for (const auto& f : files) {
    try {
      p.images.push_back(center_crop_arr(decode_image(f), size));
    } catch (const std::exception& e) {
      throw Error(str_cat("--prompt: ", e.what()));
    }
  }
  const auto device = vq->post_quant_conv->weight.device();
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> codes;
  const int64_t kept = rows * vq->config.downsample();
  for (size_t s = 0; s < p.images.size(); s += static_cast<size_t>(batch)) {
    const std::vector<Image> chunk(p.images.begin() + static_cast<std::ptrdiff_t>(s),
                                   p.images.begin() + static_cast<std::ptrdiff_t>(std::min(s + batch, p.images.size())));
    auto x = to_tensor(chunk);
    if (encoding == "strip") x = x.narrow(2, 0, kept).contiguous();
    codes.push_back(vq->encode(x.to(device)).narrow(1, 0, rows * p.side).to(torch::kCPU));
  }
  p.tokens = torch::cat(codes).contiguous();  // [files, rows * side]: row-major codes of the top rows
  AIM_CHECK(p.tokens.size(1) == rows * p.side, "--prompt: the tokenizer gave ", p.tokens.size(1), " codes for the top ",
            rows, " rows, expected ", rows * p.side);
  return p;
}

torch::ScalarType dtype_flag(const char* name, const std::string& flag) {
  AIM_CHECK(flag == "fp32" || flag == "bf16", name, ": expected fp32 or bf16, found '", flag, "'");
  return flag == "bf16" ? torch::kBFloat16 : torch::kFloat;
}

torch::ScalarType vq_dtype_of(const std::string& flag) { return dtype_flag("--vq-dtype", flag); }

/// Where the tokenizer comes from, and what named it (for errors).
struct VqSource {
  std::string path, named_by;
};

/// --vq, else an aim train run's vq.weights, else the checkpoint itself (an official snapshot's
/// vqvae.* tensors, or a tokenizer given to --from-tokens as --ckpt: its weights file or its
/// aim train-vq run).
VqSource tokenizer_source(const SampleArgs& a) {
  if (!a.vq.empty()) return {a.vq, "--vq"};
  std::error_code ec;
  const fs::path dir(a.ckpt);
  if (!fs::is_directory(dir, ec) || !(fs::exists(dir / "config.yaml") || fs::exists(dir / "latest")))
    return {a.ckpt, "--ckpt"};
  const auto ref = find_checkpoint(a.ckpt);
  if (ref.kind != CheckpointKind::kRunDir) return {a.ckpt, "--ckpt"};
  // A language model's run (its weights hold the Mamba stack), not a tokenizer's.
  if (!holds_language_model(SafetensorsFile(ref.weights_path))) return {a.ckpt, "--ckpt"};
  const std::string w = load_config(ref.config_path).vq.weights;
  AIM_CHECK(!w.empty(), "--ckpt ", a.ckpt, ": an aim train run without vq.weights, so nothing says which ",
            "tokenizer decodes its codes\n---> HINT: give the tokenizer its codes were made with: --vq TOKENIZER ",
            "(an aim train-vq run, a .safetensors with --vq-config, or an official snapshot)");
  AIM_CHECK(fs::exists(w, ec), ref.config_path, ": vq.weights ", w, " does not exist (relative paths are taken ",
            "from the current directory)\n---> HINT: pass the tokenizer with --vq");
  return {w, ref.config_path + ": vq.weights"};
}

}  // namespace

Runner add_sample_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("sample", "Class-conditional sampling with classifier-free guidance");
  auto a = std::make_shared<SampleArgs>();
  cmd->add_option("--ckpt", a->ckpt, "official HF snapshot dir, aim run dir, or .safetensors with --config");
  cmd->add_option("--config", a->config, "model config for a bare weights file (YAML or config.json)");
  cmd->add_option("--vq", a->vq, "tokenizer: weights, aim train-vq run (default: the run's vq.weights, else the checkpoint's vqvae.*)");
  cmd->add_option("--vq-config", a->vq_config,
                  "tokenizer config JSON (default: NAME.json or config.json beside the weights, a run's config.yaml, "
                  "else the full VQ-16)");
  cmd->add_option("--class", a->classes, "class ids or names, comma-separated, or 'random'");
  cmd->add_option("--class-names", a->class_names, "class names, one per line (ImageNet index), for --class and captions");
  cmd->add_option("--num", a->num, "images per listed class (or random images with --class random)")->capture_default_str();
  cmd->add_option("--num-samples", a->num_samples, "FID mode: total samples, labels from --labels");
  cmd->add_option("--labels", a->labels_mode,
                  "--num-samples' labels: balanced (N / classes each) | random (uniform draws; the default with "
                  "--preset fid, the published protocol)")->capture_default_str();
  cmd->add_option("--preset", a->preset, "fid (the published FIDs' settings) | demo (the official README's showcase)");
  cmd->add_option("--cfg", a->cfg, "guidance scale (0 to 100; 1 = no guidance)");
  cmd->add_option("--temperature", a->temperature, "softmax temperature (1e-4 to 1e4)");
  cmd->add_option("--top-k", a->top_k, "keep the k most likely tokens (0 = all, 1 = greedy)");
  cmd->add_option("--top-p", a->top_p, "nucleus mass in (0, 1]");
  cmd->add_option("--cfg-top-p", a->cfg_top_p,
                  "guide only among the conditional model's top-p tokens at this mass, in (0, 1] (1 = off, the official sampler)");
  cmd->add_option("--seed", a->seed, "randomness of sample i comes from (seed, i)")
      ->capture_default_str()
      ->check(seed_validator());
  cmd->add_option("--batch-size", a->batch_size, "sequences per batch")->capture_default_str();
  cmd->add_option("--dtype", a->dtype, "fp32 | bf16")->capture_default_str();
  cmd->add_option("--vq-dtype", a->vq_dtype, "tokenizer decode: fp32 | bf16 (faster on GPUs; images within a few levels)")
      ->capture_default_str();
  cmd->add_option("--ssm-state", a->ssm_state,
                  "the Mamba layers' recurrent state: fp32 | bf16 (half the state traffic per token; logit cost in docs/perf.md)")
      ->capture_default_str();
  cmd->add_option("--device", a->device, kDeviceHelp)->capture_default_str();
  cmd->add_option("--decode-position-offset", a->position_offset,
                  "image token j at position j + this (0: as training; 1: the official decoder) instead of the "
                  "checkpoint's setting");
  cmd->add_flag("--ema", a->use_ema, "use the run directory's EMA weights");
  cmd->add_flag("--no-cuda-graph", a->no_cuda_graph, "step eagerly on CUDA instead of replaying one captured step");
  cmd->add_option("--out", a->out, "grid PNG");
  cmd->add_option("--nrow", a->nrow, "grid: images per row (default: square)")->check(CLI::NonNegativeNumber);
  cmd->add_flag("!--no-captions", a->captions, "grid without class captions");
  cmd->add_option("--outdir", a->outdir, "one PNG per sample: <index>_class<label>.png");
  cmd->add_option("--npz", a->npz, "ADM evaluator batch: arr_0 uint8 [N, H, W, 3], arr_1 labels");
  cmd->add_option("--tokens", a->tokens, "save the tokens and labels (.safetensors)");
  cmd->add_option("--from-tokens", a->from_tokens, "decode a saved tokens file instead of sampling");
  cmd->add_option("--prompt", a->prompt,
                  "continue these images (comma-separated files): each cropped to the model's resolution and "
                  "tokenized; --num samples of each keep its top --prompt-rows token rows")
      ->delimiter(',');
  cmd->add_option("--prompt-rows", a->prompt_rows, "--prompt: token rows kept from the top (default: half)");
  cmd->add_option("--prompt-encoding", a->prompt_encoding,
                  "--prompt: image (the top codes of the whole image, as training saw codes; they carry some of "
                  "what lies below) | strip (the kept pixel rows encoded alone)")
      ->capture_default_str();
  cmd->add_option("--work-dir", a->work_dir, "finished batches (resume); default <output>.parts");
  return [cmd, a]() -> int {
    if (!cmd->parsed()) return -1;
    const auto env = detect_launch_env();
    AIM_CHECK(!a->out.empty() || !a->outdir.empty() || !a->npz.empty() || !a->tokens.empty(),
              "sample: no output requested\n---> HINT: --out grid.png, --outdir DIR, --npz FILE or --tokens FILE");
    AIM_CHECK(a->batch_size >= 1, "--batch-size: expected >= 1, found ", a->batch_size);
    for (const char* flag : {"--nrow", "--no-captions"})
      AIM_CHECK(!a->out.empty() || cmd->count(flag) == 0, flag, " shapes the --out grid, and no --out is given\n",
                "---> HINT: leave it out, or add --out grid.png");
    AIM_CHECK(cmd->count("--num-samples") == 0 || a->num_samples >= 1, "--num-samples: expected >= 1, found ",
              a->num_samples);
    AIM_CHECK(a->dtype == "fp32" || a->dtype == "bf16", "--dtype: expected fp32 or bf16, found '", a->dtype, "'");
    const auto device = parse_device(a->device, env.local_rank);
    std::vector<std::string> names = a->class_names.empty() ? std::vector<std::string>{} : read_class_names(a->class_names);
    std::map<std::string, std::string> settings;
    {
      // No output may land on a file this command reads (the weights, the tokens, a prompt).
      std::vector<std::pair<std::string, std::string>> inputs = {
          {"--ckpt", a->ckpt}, {"--config", a->config}, {"--vq", a->vq}, {"--vq-config", a->vq_config},
          {"--from-tokens", a->from_tokens}, {"--class-names", a->class_names}};
      for (const auto& p : a->prompt) inputs.emplace_back("--prompt", p);
      if (!a->ckpt.empty())
        for (const auto& f : files_read_from(a->ckpt, a->config)) inputs.emplace_back("--ckpt", f);
      if (!a->vq.empty())
        for (const auto& f : files_read_from(a->vq, "")) inputs.emplace_back("--vq", f);
      for (const auto& [flag, out] : {std::pair<std::string, std::string>{"--out", a->out}, {"--npz", a->npz},
                                      {"--tokens", a->tokens}}) {
        refuse_output_over_input(flag, out, inputs);
        // Before the sampling, not after it; rank 0 writes the outputs.
        if (env.is_main()) check_output_path(flag, out);
      }
    }

    if (!a->from_tokens.empty()) {
      // Decoding only: a flag that would change what is sampled does nothing here, so it is refused
      // rather than silently ignored.
      for (const char* flag : {"--class", "--num", "--num-samples", "--labels", "--preset", "--cfg", "--temperature",
                               "--top-k", "--top-p", "--cfg-top-p", "--seed", "--dtype", "--ssm-state",
                               "--decode-position-offset", "--ema", "--no-cuda-graph", "--config", "--work-dir",
                               "--prompt", "--prompt-rows", "--prompt-encoding"}) {
        AIM_CHECK(cmd->count(flag) == 0, "--from-tokens decodes saved tokens: ", flag,
                  " has no effect there\n---> HINT: leave it out (the tokens file records how they were sampled)");
      }
      // One process decodes: under a launcher, the other ranks have nothing to do (they would
      // each write the same outputs to the same files).
      if (!env.is_main()) return 0;
      if (env.world_size > 1)
        std::cerr << "[sample] --from-tokens: rank 0 decodes alone; the other " << env.world_size - 1
                  << " rank(s) have exited\n";
      SafetensorsFile saved_file(a->from_tokens);
      auto saved = saved_file.load_all();
      AIM_CHECK(saved.count("tokens") && saved.count("labels"), "--from-tokens ", a->from_tokens,
                ": expected tensors 'tokens' and 'labels'");
      // The sampling settings the tokens were made with travel on to the outputs.
      settings = saved_file.metadata();
      settings.erase("format");
      for (const char* key : {"tokens", "labels"})
        AIM_CHECK(!torch::isFloatingType(saved[key].scalar_type()) && saved[key].scalar_type() != torch::kBool,
                  "--from-tokens ", a->from_tokens, ": '", key, "' holds ", saved[key].scalar_type(),
                  " values, expected integers (as aim sample --tokens writes them)");
      auto tokens = saved["tokens"].to(torch::kLong), labels = saved["labels"].to(torch::kLong);
      AIM_CHECK(tokens.dim() == 2 && labels.dim() == 1 && labels.size(0) == tokens.size(0), "--from-tokens ",
                a->from_tokens, ": expected tokens [N, L] and labels [N], found ", tokens.sizes(), " and ",
                labels.sizes());
      AIM_CHECK(labels.numel() == 0 || labels.min().item<int64_t>() >= 0, "--from-tokens ", a->from_tokens,
                ": expected class labels >= 0, found ", labels.numel() ? labels.min().item<int64_t>() : 0);
      check_grid_size(*a, tokens.size(0));
      {
        const auto l = labels.contiguous();
        check_outdir(a->outdir, std::vector<int64_t>(l.data_ptr<int64_t>(), l.data_ptr<int64_t>() + l.numel()));
      }
      AIM_CHECK(!a->vq.empty() || !a->ckpt.empty(), "--from-tokens: give --vq (or --ckpt) for the tokenizer");
      const VqSource source = tokenizer_source(*a);
      auto loaded_vq = load_vq_model(source.path, a->vq_config, source.named_by);
      auto vq = loaded_vq.model;
      const int64_t codes = vq->config.codebook_size;
      AIM_CHECK(tokens.numel() == 0 || (tokens.min().item<int64_t>() >= 0 && tokens.max().item<int64_t>() < codes),
                "--from-tokens ", a->from_tokens, ": tokens from ", tokens.numel() ? tokens.min().item<int64_t>() : 0,
                " to ", tokens.numel() ? tokens.max().item<int64_t>() : 0, ", outside the tokenizer's codebook [0, ",
                codes, ") (", source.named_by, " ", source.path, ")");
      prepare_vq_for_decoding(vq, device, vq_dtype_of(a->vq_dtype));
      // The outputs record the tokenizer that decoded them (the tokens file may name none).
      settings["vq"] = loaded_vq.identity;
      settings["vq_dtype"] = a->vq_dtype;
      // Decoded as the outputs ask for them: 50,000 decoded images would not fit in memory at once.
      write_outputs(*a, tokens, labels,
                    [&](int64_t s, int64_t n) {
                      return to_uint8_hwc(decode_tokens(vq, tokens.narrow(0, s, n), a->batch_size));
                    },
                    tokens.size(0), names, settings);
      return 0;
    }

    AIM_CHECK(!a->ckpt.empty(), "sample: --ckpt is required (or --from-tokens)");
    const std::string primary = !a->npz.empty() ? a->npz : !a->out.empty() ? a->out : !a->outdir.empty() ? a->outdir : a->tokens;
    const fs::path work = a->work_dir.empty() ? fs::path(primary + ".parts") : fs::path(a->work_dir);
    check_work_folder(work);
    // (The heartbeat stops after the failure marker is written: destroyed in reverse order.)
    std::optional<Heartbeat> heartbeat;
    std::optional<FailureMarker> failure_marker;
    const double silence_limit = rank_silence_limit_s();
    if (env.world_size > 1) {
      fs::create_directories(work);
      fs::remove(work / failed_marker(env.rank));
      if (!env.is_main()) {
        failure_marker.emplace(work / failed_marker(env.rank));
        heartbeat.emplace((work / alive_file(env.rank)).string());
      }
    }
    auto ref = find_checkpoint(a->ckpt, a->config);
    auto model = load_aim_model(ref, a->use_ema);
    const std::string weights_used = a->use_ema ? ref.ema_path : ref.weights_path;
    if (cmd->count("--decode-position-offset")) {
      set_decode_position_offset(model, a->position_offset, "--decode-position-offset");
    }
    const auto& mc = model->config;
    // Defaults: a run directory's own `sample:` settings (what its training grids showed), else
    // the official generate()'s; a preset over them; explicit flags over everything.
    SampleConfig defaults;
    std::string defaults_from = "the official generate()";
    if (ref.kind == CheckpointKind::kRunDir) {
      defaults = load_config(ref.config_path).sample;
      defaults_from = ref.config_path;
    }
    SamplingOptions o;
    o.cfg = defaults.cfg_scale;
    o.temperature = defaults.temperature;
    o.top_k = defaults.top_k;
    o.top_p = defaults.top_p;
    o.cfg_top_p = defaults.cfg_top_p;
    if (!a->preset.empty()) {
      o.temperature = 1.0;
      o.top_k = 0;
      o.top_p = 1.0;
      o.cfg_top_p = 1.0;
      defaults_from = "preset " + a->preset;
    }
    if (a->preset == "fid") {
      o.cfg = mc.adaln_group ? 1.75 : 2.0;
    } else if (a->preset == "demo") {
      o.cfg = 5.0;
      o.top_k = 600;
      o.top_p = 0.98;
    } else if (!a->preset.empty()) {
      throw Error(str_cat("--preset: expected fid or demo, found '", a->preset, "'"));
    }
    if (cmd->count("--cfg")) o.cfg = a->cfg;
    if (cmd->count("--temperature")) o.temperature = a->temperature;
    if (cmd->count("--top-k")) o.top_k = a->top_k;
    if (cmd->count("--top-p")) o.top_p = a->top_p;
    if (cmd->count("--cfg-top-p")) o.cfg_top_p = a->cfg_top_p;
    o.seed = a->seed;
    o.cuda_graph = !a->no_cuda_graph;
    o.ssm_state_dtype = dtype_flag("--ssm-state", a->ssm_state);
    o.validate();
    // Confining guidance means nothing without guidance: refused when asked for explicitly, and
    // recorded as off (1) when a run's or preset's default would not apply.
    AIM_CHECK(o.cfg != 1.0 || cmd->count("--cfg-top-p") == 0 || o.cfg_top_p == 1.0, "--cfg-top-p ", o.cfg_top_p,
              ": guidance is off (cfg 1), so there is nothing to confine\n---> HINT: leave it out, or give "
              "--cfg above 1");
    if (o.cfg == 1.0) o.cfg_top_p = 1.0;
    // The unconditional half of guidance is the null class, which only class dropout trains.
    if (o.cfg != 1.0 && mc.class_dropout == 0 && env.is_main())
      std::cerr << "warning: cfg " << o.cfg << " guides with the null class, but " << ref.config_path
                << " trained with model.class_dropout 0, which leaves it untrained (cfg 1 samples "
                   "without it)\n";
    const bool prompting = !a->prompt.empty();
    for (const char* flag : {"--prompt-rows", "--prompt-encoding"})
      AIM_CHECK(prompting || cmd->count(flag) == 0, flag, ": no --prompt images to keep rows of",
                "\n---> HINT: leave it out, or give --prompt IMAGE[,IMAGE...]");
    AIM_CHECK(a->prompt_encoding == "image" || a->prompt_encoding == "strip",
              "--prompt-encoding: expected image or strip, found '", a->prompt_encoding, "'");
    std::vector<int64_t> labels;
    int64_t prompt_rows = 0;
    if (prompting) {
      const int64_t side = VqModel::Impl::side_of(mc.num_tokens);
      prompt_rows = cmd->count("--prompt-rows") ? a->prompt_rows : side / 2;
      AIM_CHECK(cmd->count("--num-samples") == 0, "--prompt: the samples are --num continuations of each image; ",
                "--num-samples has no effect there\n---> HINT: use --num");
      AIM_CHECK(cmd->count("--labels") == 0, "--labels chooses the classes of --num-samples; with --prompt it has ",
                "no effect\n---> HINT: leave out --labels");
      AIM_CHECK(prompt_rows >= 1 && prompt_rows < side, "--prompt-rows: expected 1 to ", side - 1, " (the model's ",
                "images are ", side, " x ", side, " tokens), found ", prompt_rows);
      AIM_CHECK(!a->classes.empty(), "--prompt: give the class to continue in with --class (one for every image, ",
                "one per image, or 'random')");
      AIM_CHECK(a->num >= 1, "--num: expected >= 1, found ", a->num);
      const auto images = static_cast<int64_t>(a->prompt.size());
      const bool random = a->classes == "random";
      const auto classes = parse_class_flag(a->classes, random ? images : 1, mc.num_classes, names, a->seed);
      AIM_CHECK(classes.size() == 1 || static_cast<int64_t>(classes.size()) == images, "--class: ", classes.size(),
                " classes for ", images, " --prompt images; expected one for all of them or one per image");
      for (int64_t j = 0; j < images; ++j)
        for (int64_t k = 0; k < a->num; ++k) labels.push_back(classes[classes.size() == 1 ? 0 : j]);
    } else if (cmd->count("--num-samples")) {
      AIM_CHECK(a->classes.empty(), "sample: give --class or --num-samples, not both");
      AIM_CHECK(cmd->count("--num") == 0, "--num is the images per --class; with --num-samples ", a->num_samples,
                " it has no effect\n---> HINT: leave out --num");
      // The published FIDs drew labels uniformly (LlamaGen's evaluation script): the fid preset's.
      const std::string mode = cmd->count("--labels") || a->preset != "fid" ? a->labels_mode : "random";
      labels = plan_labels(mode, a->num_samples, mc.num_classes, a->seed);
    } else {
      AIM_CHECK(!a->classes.empty(), "sample: give --class (ids, names or 'random') or --num-samples");
      AIM_CHECK(cmd->count("--labels") == 0, "--labels chooses the classes of --num-samples; with --class it has ",
                "no effect\n---> HINT: leave out --labels");
      labels = parse_class_flag(a->classes, a->num, mc.num_classes, names, a->seed);
    }
    check_grid_size(*a, static_cast<int64_t>(labels.size()) + (prompting ? static_cast<int64_t>(a->prompt.size()) : 0));
    if (env.is_main()) check_outdir(a->outdir, labels);
    // The tokenizer: --vq, else the run's vq.weights (an aim train run), else the checkpoint's
    // own vqvae.* tensors (official snapshots). Not needed when only tokens are asked for (they
    // can be decoded later with --from-tokens).
    const bool decode = !a->out.empty() || !a->outdir.empty() || !a->npz.empty();
    AIM_CHECK(decode || cmd->count("--vq-dtype") == 0, "--vq-dtype: only --tokens is asked for, so nothing is ",
              "decoded\n---> HINT: leave it out, or give it to the --from-tokens run that decodes them");
    VqModel vq{nullptr};
    std::string vq_identity = "none (tokens only)";
    Prompts prompts;
    if (decode || prompting) {
      VqSource source = tokenizer_source(*a);
      if (source.named_by == "--ckpt" && !fs::is_directory(a->ckpt)) source.path = ref.weights_path;
      auto loaded_vq = load_vq_model(source.path, a->vq_config, source.named_by);
      vq = loaded_vq.model;
      vq_identity = loaded_vq.identity;
      AIM_CHECK(vq->config.codebook_size == mc.vocab_size, source.named_by, " ", source.path, ": a codebook of ",
                vq->config.codebook_size, " codes, but the model's vocabulary is ", mc.vocab_size);
      if (prompting) {
        // Encoded in fp32 whatever --vq-dtype decodes in.
        vq->to(device, torch::kFloat);
        vq->eval();
        prompts = encode_prompts(a->prompt, prompt_rows, a->num, vq, mc.num_tokens, a->batch_size,
                                 a->prompt_encoding);
        if (a->out.empty()) prompts.images.clear();  // only the grid shows them
      }
      if (decode)
        prepare_vq_for_decoding(vq, device, vq_dtype_of(a->vq_dtype));
      else
        vq = VqModel{nullptr};  // it only encoded the prompts: its memory goes back before sampling
    }
    model->to(device, a->dtype == "bf16" ? torch::kBFloat16 : torch::kFloat);
    settings = {{"cfg", std::to_string(o.cfg)}, {"temperature", std::to_string(o.temperature)},
                {"top_k", std::to_string(o.top_k)}, {"top_p", std::to_string(o.top_p)},
                {"cfg_top_p", std::to_string(o.cfg_top_p)}, {"seed", std::to_string(o.seed)}, {"checkpoint", a->ckpt},
                {"preset", a->preset.empty() ? "none" : a->preset},
                {"decode_position_offset", std::to_string(mc.decode_position_offset)},
                {"dtype", a->dtype}, {"vq_dtype", decode ? a->vq_dtype : "none"}, {"ssm_state", a->ssm_state},
                // What was loaded, not only what was named: a run's `latest` moves, --ema picks
                // other weights, and the tokenizer may come from elsewhere.
                // (By content: the same checkpoint named by another path is the same.)
                {"weights", file_identity(weights_used)},
                {"vq", vq_identity}, {"prompt", "none"}};
    if (prompting) {
      // The prompts by content, as the weights: a finished batch continues the same images.
      std::string ids;
      for (const auto& f : prompts.files) ids += (ids.empty() ? "" : "; ") + file_identity(f);
      settings["prompt"] = ids;
      settings["prompt_rows"] = std::to_string(prompts.rows);
      settings["prompt_encoding"] = a->prompt_encoding;
      // Sample i continues prompt i / --num: the same labels under another --num would pair a
      // finished batch with another image.
      settings["prompt_num"] = std::to_string(prompts.per_prompt);
    }
    const int64_t total = static_cast<int64_t>(labels.size());
    if (env.is_main()) {
      std::cerr << "[sample] " << total << " samples, cfg " << o.cfg << ", temperature " << o.temperature
                << ", top-k " << o.top_k << ", top-p " << o.top_p << ", cfg top-p " << o.cfg_top_p << ", seed "
                << o.seed << " (defaults from " << defaults_from << "); " << a->dtype << " on " << device << ", "
                << env.world_size << " rank(s)\n";
      if (prompting)
        std::cerr << "[sample] continuing " << prompts.files.size() << " prompt image(s), " << a->num
                  << " sample(s) each, from their top " << prompts.rows << " of " << prompts.side << " token rows ("
                  << prompts.tokens.size(1) << " of " << mc.num_tokens << " tokens given)\n";
    }
    fs::create_directories(work);
    check_part_layout(work, a->batch_size, total);
    const int64_t batches = (total + a->batch_size - 1) / a->batch_size;
    int64_t mine = 0;
    for (int64_t k = env.rank; k < batches; k += env.world_size) mine += std::min(a->batch_size, total - k * a->batch_size);
    Progress progress(env.world_size > 1 ? str_cat("sample rank ", env.rank) : "sample", mine, "img", true);
    double step_s = 0, decode_s = 0;
    int64_t made = 0;
    // Decoding and saving batch k overlaps generating batch k + 1 on CUDA: the tokenizer runs on
    // its own stream in a worker thread (at most one batch in flight). On the CPU both would
    // share the same cores, so they run one after the other.
    const bool overlap = device.is_cuda();
#ifdef AIM_WITH_CUDA
    // One stream for all batches: the caching allocator reuses a freed block only on the stream
    // it was freed on, so a new pool stream per batch would cache each decode's memory anew.
    std::optional<c10::cuda::CUDAStream> decode_stream;
    if (overlap) decode_stream = c10::cuda::getStreamFromPool(false, device.index());
#endif
    auto finish_batch = [&, overlap](torch::Tensor tokens, torch::Tensor lab, fs::path part, int64_t n) {
#ifdef AIM_WITH_CUDA
      std::optional<c10::cuda::CUDAStreamGuard> on_stream;
      if (overlap) on_stream.emplace(*decode_stream);
#endif
      std::vector<std::pair<std::string, torch::Tensor>> tensors = {{"tokens", tokens}, {"labels", lab}};
      if (decode) {
        const auto t1 = std::chrono::steady_clock::now();
        tensors.emplace_back("images", to_uint8_hwc(decode_tokens(vq, tokens, a->batch_size)));
        decode_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
      }
      made += n;
      save_safetensors(part.string(), tensors, settings);
      progress.update(n);
    };
    auto labels_of = [&](int64_t start, int64_t n) {
      return torch::tensor(std::vector<int64_t>(labels.begin() + start, labels.begin() + start + n), torch::kLong);
    };
    // Every finished batch this rank would reuse is checked before anything new is written; they
    // count toward the total, not the rate. Only the decode worker updates the progress after this.
    int64_t resumed = 0;
    for (int64_t k = env.rank; k < batches; k += env.world_size) {
      const int64_t start = k * a->batch_size, n = std::min(a->batch_size, total - start);
      const auto part = work / part_name(start, n);
      if (fs::exists(part)) {
        check_resumed_part(part, settings, labels_of(start, n));
        resumed += n;
      }
    }
    progress.resume_at(resumed);
    std::future<void> pending;
    for (int64_t k = env.rank; k < batches; k += env.world_size) {
      const int64_t start = k * a->batch_size, n = std::min(a->batch_size, total - start);
      const auto part = work / part_name(start, n);
      if (fs::exists(part)) continue;  // checked above
      std::vector<int64_t> ids(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) ids[i] = start + i;
      auto lab = labels_of(start, n);
      auto t0 = std::chrono::steady_clock::now();
      torch::Tensor prompt;
      if (prompting) prompt = prompts.tokens.index_select(0, torch::arange(start, start + n, torch::kLong).div(a->num, "floor"));
      auto tokens = generate_tokens(model, lab, ids, o, nullptr, prompt);
      step_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (pending.valid()) pending.get();
      if (overlap)
        pending = std::async(std::launch::async, finish_batch, tokens, lab, part, n);
      else
        finish_batch(tokens, lab, part, n);
    }
    if (pending.valid()) pending.get();
    // Tokens drawn: a prompt's are read in one parallel pass, not stepped.
    const int64_t drawn = mc.num_tokens - (prompting ? prompts.tokens.size(1) : 0);
    const double tok_rate = step_s > 0 ? made * drawn / step_s : 0;
    progress.finish(str_cat(made, " new: ", static_cast<int64_t>(tok_rate), " tokens/s in model steps",
                            decode ? str_cat(", ", decode_s > 0 ? made / decode_s : 0.0, " images/s in VQ decode")
                                   : std::string()));
    if (!env.is_main()) return 0;
    // Rank 0 assembles once every batch is there.
    const auto wait_start = std::chrono::steady_clock::now();
    auto last_note = wait_start;
    std::vector<std::optional<std::chrono::steady_clock::time_point>> failure_seen(
        static_cast<size_t>(env.world_size));
    HeartbeatWatch heartbeats;
    for (int64_t k = 0; k < batches; ++k) {
      const int64_t start = k * a->batch_size, n = std::min(a->batch_size, total - start);
      while (!fs::exists(work / part_name(start, n))) {
        check_failed_ranks(work, failure_seen);
        // (A rank that failed leaves its marker, which check_failed_ranks believes after a grace.)
        const int owner = static_cast<int>(k % env.world_size);
        const fs::path alive = work / alive_file(owner);
        const double quiet = heartbeats.quiet_s(alive.string());
        if (quiet >= silence_limit && !fs::exists(work / failed_marker(owner)) &&
            !fs::exists(work / part_name(start, n)))
          throw Error(str_cat("rank ", owner, " has not been heard from for ", format_duration(quiet), " (",
                              fs::exists(alive)                      ? "its heartbeat " + alive.string() + " has not changed"
                              : heartbeats.appeared(alive.string()) ? "its heartbeat " + alive.string() + " went away"
                                                                     : "no heartbeat " + alive.string() + " appeared",
                              ") while batch ", k, " of ", batches, " is missing: it was killed (out of memory? the "
                              "scheduler?) or never started; the finished batches in ", work.string(), " are kept",
                              "\n---> HINT: re-run the same command; AIM_RANK_SILENCE_S sets how long a rank may "
                              "be silent (now ", silence_limit, " s)"));
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        const auto now = std::chrono::steady_clock::now();
        if (std::chrono::duration<double>(now - last_note).count() >= 60) {
          last_note = now;
          std::cerr << "[sample] rank 0 waiting for batch " << k << " of " << batches << " from rank "
                    << k % env.world_size << " for "
                    << format_duration(std::chrono::duration<double>(now - wait_start).count())
                    << " (if that rank died, re-run the same command: finished batches in " << work.string()
                    << " are kept)\n";
        }
      }
    }
    std::vector<torch::Tensor> all_tokens, all_labels;
    for (int64_t k = 0; k < batches; ++k) {
      const int64_t start = k * a->batch_size, n = std::min(a->batch_size, total - start);
      // Every rank checked the finished batches it reused; a batch another rank left from an
      // earlier run with other settings is caught here, before it is mixed into the output.
      check_resumed_part(work / part_name(start, n), settings, labels_of(start, n));
      SafetensorsFile f((work / part_name(start, n)).string());
      all_tokens.push_back(f.get("tokens").clone());
      all_labels.push_back(f.get("labels").clone());
    }
    auto images_of = [&](int64_t s, int64_t n) {
      std::vector<torch::Tensor> rows;
      for (int64_t i = s; i < s + n;) {
        const int64_t k = i / a->batch_size, start = k * a->batch_size;
        const int64_t count = std::min(a->batch_size, total - start);
        SafetensorsFile f((work / part_name(start, count)).string());
        const int64_t take = std::min(s + n - i, start + count - i);
        rows.push_back(f.get("images").narrow(0, i - start, take).clone());
        i += take;
      }
      return torch::cat(rows);
    };
    write_outputs(*a, torch::cat(all_tokens), torch::cat(all_labels), images_of, total, names, settings, prompts);
    remove_work_folder(work);
    std::cout << "settings: cfg " << o.cfg << ", temperature " << o.temperature << ", top-k " << o.top_k
              << ", top-p " << o.top_p << ", cfg top-p " << o.cfg_top_p << ", seed " << o.seed << ", preset "
              << settings["preset"] << "\n";
    return 0;
  };
}

}  // namespace aim::cli
