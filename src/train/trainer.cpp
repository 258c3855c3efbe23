#include "aim/train/trainer.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "aim/core/checkpoint.h"
#include "aim/core/env.h"
#include "aim/core/error.h"
#include "aim/core/fileio.h"
#include "aim/core/progress.h"
#include "aim/core/safetensors.h"
#include "aim/data/code_dataset.h"
#include "aim/data/code_loader.h"
#include "aim/data/image.h"
#include "aim/data/image_folder.h"
#include "aim/data/image_loader.h"
#include "aim/data/sampler.h"
#include "aim/model/aim.h"
#include "aim/model/loader.h"
#include "aim/ops/dispatch.h"
#include "aim/sample/generate.h"
#include "aim/train/dist.h"
#include "aim/train/ema.h"
#include "aim/train/flops.h"
#include "aim/train/optim.h"
#include "aim/train/precision.h"
#include "aim/train/run_dir.h"
#include "fid_monitor.h"
#include "train_util.h"

namespace aim::train {

#ifdef AIM_WITH_CUDA
int64_t cuda_peak_memory_bytes(int index);  // flops_cuda.cpp
void cuda_reset_peak_memory(int index);
#endif

namespace fs = std::filesystem;

namespace {

// ------------------------------------------------------------------------------------ helpers

class BatchStream {
 public:
  virtual ~BatchStream() = default;
  virtual std::optional<CodeBatch> next() = 0;
};

template <class Loader>
class LoaderStream : public BatchStream {
 public:
  explicit LoaderStream(std::unique_ptr<Loader> loader) : loader_(std::move(loader)) {}
  std::optional<CodeBatch> next() override { return loader_->next(); }

 private:
  std::unique_ptr<Loader> loader_;
};

/// Where micro-batches come from: a code dataset (pre-extracted, the fast path) or an image
/// folder encoded on the fly by the tokenizer (as the official trainer does).
struct DataSource {
  std::string description;
  int64_t num_samples = 0;
  int64_t batches_per_epoch = 0;  // micro-batches per rank
  std::function<std::unique_ptr<BatchStream>(int64_t epoch, int64_t start_batch)> open;
  // Keep-alive for what the loaders reference.
  std::shared_ptr<const CodeDataset> codes;
  std::shared_ptr<ImageList> images;
  std::string tokenizer;  // identity of the tokenizer on the image path (file, size, digest)
};

/// A sampler's share check, naming the data key and file (the sampler's own message names
/// neither).
void check_enough_for_ranks(int64_t samples, int64_t world, const std::string& key, const std::string& path) {
  AIM_CHECK(samples >= world, key, " ", path, ": ", samples, " labelled image", samples == 1 ? "" : "s",
            " cannot be shared by ", world, " ranks\n---> HINT: more data, or fewer ranks");
}

LoadedVq load_tokenizer(const std::string& path) {
  return load_vq_model(path, "", "vq.weights");
}

/// Opens the code dataset of config key `key` and checks that it fits `model`.
std::shared_ptr<const CodeDataset> open_codes(const std::string& path, const std::string& key,
                                              const ModelConfig& model) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error(str_cat(key, " ", path, ": no such file"));
  auto ds = std::make_shared<const CodeDataset>(path);
  const auto& info = ds->info();
  if (info.tokens != model.num_tokens)
    throw Error(str_cat(key, " ", path, ": holds ", info.tokens, " codes per image, but "
                        "model.num_tokens is ", model.num_tokens));
  if (info.vocab_size != model.vocab_size)
    throw Error(str_cat(key, " ", path, ": codes from a ", info.vocab_size, "-entry codebook, but "
                        "model.vocab_size is ", model.vocab_size));
  if (static_cast<int64_t>(info.classes.size()) > model.num_classes)
    throw Error(str_cat(key, " ", path, ": ", info.classes.size(), " classes, but "
                        "model.num_classes is ", model.num_classes));
  if (ds->valid_indices().empty()) throw Error(str_cat(key, " ", path, ": no labelled image"));
  // The reader checks labels against the classes a header lists; one listing none (written
  // without class names) is checked here: label num_classes would train as the null class.
  for (const int64_t i : ds->valid_indices())
    if (ds->label(i) >= model.num_classes)
      throw Error(str_cat(key, " ", path, ": image ", i, " has label ", ds->label(i), ", but the model has ",
                          model.num_classes, " classes (model.num_classes)"));
  return ds;
}

DataSource code_source(const std::string& path, const ModelConfig& model, int64_t rank, int64_t world,
                       int64_t micro, bool shuffle, uint64_t seed) {
  auto ds = open_codes(path, "data.codes", model);
  const auto& info = ds->info();
  DataSource src;
  src.codes = ds;
  src.num_samples = static_cast<int64_t>(ds->valid_indices().size());
  check_enough_for_ranks(src.num_samples, world, "data.codes", path);
  DistributedSampler sampler(src.num_samples, rank, world, shuffle, seed);
  src.batches_per_epoch = sampler.per_rank() / micro;
  src.description = str_cat(path, ": ", src.num_samples, " images x ", info.num_aug, " augmentations (",
                            info.aug, "), ", info.classes.size(), " classes");
  src.open = [ds, sampler, micro](int64_t epoch, int64_t start) -> std::unique_ptr<BatchStream> {
    return std::make_unique<LoaderStream<CodeLoader>>(
        std::make_unique<CodeLoader>(ds, sampler, micro, epoch, start));
  };
  return src;
}

DataSource image_source(const Config& c, int64_t rank, int64_t world, torch::Device device) {
  if (c.vq.weights.empty())
    throw Error("data.images is set, so training encodes images on the fly and needs the "
                "tokenizer: set vq.weights\n---> HINT: or pre-extract codes with aim extract-codes "
                "and set data.codes (much faster)");
  auto list = std::make_shared<ImageList>(list_image_folder(c.data.images, "data.images"));
  if (static_cast<int64_t>(list->classes.size()) > c.model.num_classes)
    throw Error(str_cat("data.images ", c.data.images, ": ", list->classes.size(),
                        " class folders, but model.num_classes is ", c.model.num_classes));
  auto loaded = load_tokenizer(c.vq.weights);
  auto vq = loaded.model;
  // (The config's vq section describes the tokenizer too, but the weights say what it is.)
  if (vq->config.codebook_size != c.model.vocab_size)
    throw Error(str_cat("vq.weights ", c.vq.weights, ": a codebook of ", vq->config.codebook_size,
                        " codes, but model.vocab_size is ", c.model.vocab_size));
  vq->to(device);
  const int64_t side = c.data.image_size / vq->config.downsample();
  if (side * side != c.model.num_tokens)
    throw Error(str_cat("data.image_size ", c.data.image_size, " gives ", side * side,
                        " codes per image with this tokenizer, but model.num_tokens is ",
                        c.model.num_tokens));
  DataSource src;
  src.images = list;
  src.tokenizer = loaded.identity;
  src.num_samples = static_cast<int64_t>(list->entries.size());
  check_enough_for_ranks(src.num_samples, world, "data.images", c.data.images);
  DistributedSampler sampler(src.num_samples, rank, world, c.data.shuffle,
                             static_cast<uint64_t>(c.train.seed));
  src.batches_per_epoch = sampler.per_rank() / c.train.micro_batch;
  src.description = str_cat(c.data.images, ": ", src.num_samples, " images, ", list->classes.size(),
                            " classes, random crops", c.data.aug == "flip" ? " and flips" : "",
                            ", encoded on the fly by ", c.vq.weights);
  if (c.data.aug == "tencrop")
    throw Error("data.aug: 'tencrop' is a set of views extracted once (aim extract-codes --aug tencrop, "
                "then data.codes); images read on the fly take a random crop each epoch\n---> HINT: "
                "--set data.aug=none (the official trainer: no flip) or data.aug=flip (random flips)");
  ImageLoaderOptions o;
  o.batch_size = c.train.micro_batch;
  o.image_size = c.data.image_size;
  o.mid_ratio = c.data.crop_ratio;
  o.hflip = c.data.aug == "flip";
  o.threads = c.data.num_workers;
  o.seed = static_cast<uint64_t>(c.train.seed);
  src.open = [list, vq, device, sampler, o](int64_t epoch, int64_t start) -> std::unique_ptr<BatchStream> {
    return std::make_unique<LoaderStream<ImageLoader>>(
        std::make_unique<ImageLoader>(*list, vq, device, sampler, epoch, start, o));
  };
  return src;
}

/// Loads `init` weights for fine-tuning. A class table of another size is re-initialised.
void init_from_checkpoint(AimModel& model, const TrainOptions& options, bool main) {
  const auto ref = find_checkpoint(options.init, options.init_config, "--init", "--init-config");
  const auto other = checkpoint_model_config(ref);
  SafetensorsFile file(ref.weights_path);
  auto sd = file.load_all();
  std::string note;
  if (other.num_classes != model->config.num_classes) {
    const auto current = official_state_dict(model);
    for (auto& [name, tensor] : sd) {
      const std::string suffix = "cls_embed.embedding_table.weight";
      if (name.size() >= suffix.size() &&
          name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
        for (const auto& [cname, ctensor] : current) {
          if (cname.size() >= suffix.size() &&
              cname.compare(cname.size() - suffix.size(), suffix.size(), suffix) == 0)
            tensor = ctensor.detach().to(torch::kCPU).clone();
        }
      }
    }
    note = str_cat("; class table re-initialised (checkpoint: ", other.num_classes,
                   " classes + null, this run: ", model->config.num_classes, " + null)");
  }
  load_official_state_dict(model, sd, ref.weights_path);
  if (main) std::cerr << "init: weights from " << ref.weights_path << note << "\n";
}

}  // namespace

// ------------------------------------------------------------------------------------ training

TrainResult run_training(const Config& config_in, const TrainOptions& options) {
  Config config = config_in;
  const LaunchEnv env = detect_launch_env();
  const torch::Device device = options.device;
  DistContext dist = init_distributed(config.dist, env, device);
  const int64_t rank = dist.rank(), world = dist.world_size();
  const bool main = dist.is_main();
  const bool verbose = main && !options.quiet;
  auto say = [&](const std::string& line) {
    if (verbose) std::cerr << line << "\n";
  };

  // ---- resume: the checkpoint's configuration rules the model.
  std::string resume_dir;
  TrainerState state;
  bool saved_ema = false;  // whether the checkpoint's run kept an EMA
  agree_on_resume(dist, [&] {
    resume_dir = resume_dir_for(options.resume, config.train.out_dir);
    if (resume_dir.empty()) return;
    const auto saved = load_config((fs::path(resume_dir) / "config.yaml").string());
    saved_ema = saved.train.ema;
    if (saved.model != config.model)
      throw Error(str_cat("--resume ", resume_dir, ": the checkpoint's model section differs from "
                          "this run's config: ", section_changes(saved, config, "model."),
                          " (checkpoint -> this run)\n---> HINT: resume with the run's own config.yaml"));
    report_changed_settings(saved, config, resume_dir, say);
    const std::string state_path = (fs::path(resume_dir) / "trainer_state.json").string();
    state = TrainerState::from_json(read_text(state_path), state_path);
    // The tensors are read later; their headers here, so that a file one rank cannot open stops
    // every rank at once rather than that rank alone.
    for (const char* f : {"model.safetensors", "optimizer.safetensors"})
      SafetensorsFile((fs::path(resume_dir) / f).string());
  }, resume_dir, state.step);
  refuse_existing_run(dist, config.train.out_dir, resume_dir);

  const int64_t micro = config.train.micro_batch;
  const int64_t accum = accumulation_steps(config.train, world);

  // ---- data
  DataSource data;
  // One source: the other would be ignored without a word.
  if (!config.data.codes.empty() && !config.data.images.empty())
    throw Error(str_cat("data.codes (", config.data.codes, ") and data.images (", config.data.images,
                        ") are both set: aim train reads one of them\n---> HINT: --set data.codes= to encode the "
                        "images on the fly, or --set data.images= to train on the codes"));
  // Every rank opens its copy (a node-local one may be missing or differ): they agree first.
  on_every_rank_or_none(dist, [&] {
    if (!config.data.codes.empty()) {
      data = code_source(config.data.codes, config.model, rank, world, micro, config.data.shuffle,
                         static_cast<uint64_t>(config.train.seed));
      // data.aug declares the recipe (the run's config.yaml records it): codes made otherwise would
      // train another one under its name.
      const std::string& made = data.codes->info().aug;
      if (!config.data.aug.empty() && made != config.data.aug)
        throw Error(str_cat("data.aug: expected '", config.data.aug, "' (the config), but data.codes ",
                            config.data.codes, " holds '", made, "' views\n---> HINT: extract with aim "
                            "extract-codes --aug ", config.data.aug, ", or --set data.aug=", made,
                            " (or data.aug= to take the codes as they are)"));
    } else if (!config.data.images.empty()) {
      data = image_source(config, rank, world, device);
    } else {
      throw Error("no training data: set data.codes (from aim extract-codes) or data.images (an "
                  "image folder, encoded on the fly with vq.weights)");
    }
  }, "opening the training data");
  agree_on_count(dist, data.num_samples, config.data.codes.empty() ? "data.images " + config.data.images
                                                                   : "data.codes " + config.data.codes);
  const int64_t steps_per_epoch = data.batches_per_epoch / accum;
  if (steps_per_epoch < 1)
    throw Error(str_cat("the training data has ", data.num_samples, " images, fewer than one global "
                        "batch (train.global_batch ", config.train.global_batch, ")"));
  continue_data_position(state, data.num_samples, micro, world, say);
  if (state.step > 0 && state.global_batch != config.train.global_batch)
    say(str_cat("warning: train.global_batch changed from ", state.global_batch, " to ",
                config.train.global_batch, " since the checkpoint"));
  int64_t total_steps =
      config.train.max_steps > 0 ? config.train.max_steps : config.train.epochs * steps_per_epoch;
  if (config.train.max_steps <= 0 && state.step > 0) {
    // train.epochs ends where the data does: from the checkpoint's epoch and micro-batch, not
    // from its step count, which was taken at another batch size or data size if they changed.
    const int64_t left_in_epoch =
        state.epoch < config.train.epochs ? std::max<int64_t>(0, (data.batches_per_epoch - state.batch) / accum) : 0;
    const int64_t later_epochs = std::max<int64_t>(0, config.train.epochs - 1 - state.epoch) * steps_per_epoch;
    const int64_t by_data = state.step + left_in_epoch + later_epochs;
    if (by_data != total_steps) {
      say(str_cat("note: train.epochs ", config.train.epochs, ": the checkpoint is in epoch ", state.epoch + 1,
                  " at step ", state.step, "; at ", steps_per_epoch, " steps/epoch now the run ends at step ", by_data,
                  " (not ", total_steps, ": the batch or the data changed since), and the schedule spans that"));
      total_steps = by_data;
    }
  }

  // ---- model, optimizer, EMA
  torch::manual_seed(static_cast<uint64_t>(config.train.seed));
  AimModel model(config.model);
  if (!options.init.empty() && !resume_dir.empty())
    say(str_cat("note: --init ", options.init, " is not used: resuming from ", resume_dir, " (its weights)"));
  on_every_rank_or_none(dist, [&] {
    if (!options.init.empty() && resume_dir.empty()) init_from_checkpoint(model, options, verbose);
    if (!resume_dir.empty()) {
      const std::string w = (fs::path(resume_dir) / "model.safetensors").string();
      load_official_state_dict(model, SafetensorsFile(w).load_all(), w);
    }
  }, "loading the starting weights");
  model->to(device);
  model->train();
  model->backbone->recompute_every = config.train.recompute_every;
  auto params = unique_parameters(*model);
  const auto param_tensors = tensors_of(params);
  {
    auto all = param_tensors;
    dist.broadcast_(all);  // every rank starts from rank 0's weights
  }
  AdamW optimizer(params, config.optim, /*fused=*/true);
  std::unique_ptr<Ema> ema;
  on_every_rank_or_none(dist, [&] {
    if (config.train.ema) {
      ema = std::make_unique<Ema>(model, config.train.ema_decay);
      const std::string e = (fs::path(resume_dir) / "ema.safetensors").string();
      if (!resume_dir.empty() && fs::exists(e)) {
        load_official_state_dict(ema->model(), SafetensorsFile(e).load_all(), e);
        ema->model()->to(device);
      } else if (!resume_dir.empty()) {
        // A run that kept an EMA lost it; one that did not starts it now (said).
        AIM_CHECK(!saved_ema, e, ": missing, but the checkpoint's run keeps an EMA (train.ema true)\n"
                  "---> HINT: resume from an earlier checkpoint that has it, or --set train.ema=false");
        say(str_cat("EMA: starts at step ", state.step, " from the current weights (the checkpoint's run had none)"));
      }
    }
    if (!resume_dir.empty()) {
      const std::string o = (fs::path(resume_dir) / "optimizer.safetensors").string();
      SafetensorsFile f(o);
      optimizer.load_state(f.load_all(), f.metadata(), o);
      check_optimizer_steps(optimizer.steps(), state, o);
    }
  }, "loading the checkpoint's EMA and optimizer state");
  GradSync grad_sync(param_tensors, dist);

  // ---- validation data, tokenizer for sample grids
  std::shared_ptr<const CodeDataset> val;
  on_every_rank_or_none(dist, [&] {
    if (!config.data.val_codes.empty()) val = open_codes(config.data.val_codes, "data.val_codes", config.model);
  }, "opening data.val_codes");
  if (val && data.codes) {
    // Held-out codes of another tokenizer or image size would give a loss that measures nothing.
    const auto &t = data.codes->info(), &v = val->info();
    AIM_CHECK(v.tokenizer == t.tokenizer && v.image_size == t.image_size, "data.val_codes ",
              config.data.val_codes, ": codes of ", v.image_size, " px images by tokenizer ", v.tokenizer,
              ", but data.codes ", config.data.codes, " holds codes of ", t.image_size, " px images by ",
              t.tokenizer, "\n---> HINT: extract both with the same --vq and --image-size");
  }
  if (val && data.images) {
    const auto& v = val->info();
    AIM_CHECK(v.tokenizer == data.tokenizer && v.image_size == config.data.image_size, "data.val_codes ",
              config.data.val_codes, ": codes of ", v.image_size, " px images by tokenizer ", v.tokenizer,
              ", but training encodes ", config.data.image_size, " px images of data.images with vq.weights ",
              data.tokenizer, "\n---> HINT: extract the held-out codes with --vq ", config.vq.weights,
              " --image-size ", config.data.image_size);
  }
  if (val) {
    // Labels index class names: held-out codes listing other classes, or the same in another
    // order, would score every image under another class.
    const auto& train_classes = data.codes ? data.codes->info().classes : data.images->classes;
    const std::string difference = class_order_difference(
        val->info().classes, train_classes,
        str_cat("the training data (", data.codes ? "data.codes " + config.data.codes : "data.images " + config.data.images,
                ")"));
    AIM_CHECK(difference.empty(), "data.val_codes ", config.data.val_codes, ": ", difference,
              "\n---> HINT: extract the held-out images with the training data's classes (extract-codes --list ... "
              "--classes <the training classes>)");
  }
  if (val && config.train.eval_every <= 0) {
    say(str_cat("warning: data.val_codes is set but train.eval_every is 0: no held-out loss is computed\n"
                "---> HINT: --set train.eval_every=N"));
    val.reset();
  }
  if (!val && config.train.eval_every > 0 && config.data.val_codes.empty())
    say(str_cat("warning: train.eval_every is ", config.train.eval_every, " but data.val_codes is not set: no held-out "
                "loss is computed\n---> HINT: --set data.val_codes=<held-out codes from aim extract-codes>"));
  // The tokenizer decodes rank 0's sample grids and every rank's FID samples.
  VqModel grid_vq{nullptr};
  const bool fid = config.train.fid_every > 0;  // vq.weights is set then (Config::validate)
  const bool wants_vq = (main && config.train.sample_every > 0) || fid;
  if (wants_vq && config.vq.weights.empty())
    say("sample grids: skipped, vq.weights is not set (the tokenizer decodes the samples)");
  LoadedVq loaded;
  // (A collective on every rank, also where only rank 0 loads it: one that cannot read the file
  // must not leave the others waiting in their first step.)
  if ((config.train.sample_every > 0 || fid) && !config.vq.weights.empty())
    on_every_rank_or_none(dist, [&] {
      if (!wants_vq) return;
      loaded = load_tokenizer(config.vq.weights);
      // Codes it cannot decode would only drop every grid with a warning (and fail the FIDs).
      if (loaded.model->config.codebook_size != config.model.vocab_size)
        throw Error(str_cat("vq.weights ", config.vq.weights, ": a codebook of ", loaded.model->config.codebook_size,
                            " codes, but model.vocab_size is ", config.model.vocab_size,
                            ": it cannot decode this model's samples\n---> HINT: set vq.weights to the tokenizer the "
                            "codes were made with, or train.sample_every=0 and train.fid_every=0"));
    }, "loading vq.weights for the sample grids and FIDs");
  if (loaded.model) {
    if (data.codes && loaded.identity != data.codes->info().tokenizer) {
      say(str_cat("warning: data.codes were made by tokenizer ", data.codes->info().tokenizer,
                  ", the sample grids and FIDs are decoded by vq.weights ", loaded.identity,
                  ": unless that is the same tokenizer in another file, they show noise"));
    }
    grid_vq = loaded.model;
    // As aim sample decodes (fp32; channels-last convolutions on CUDA).
    prepare_vq_for_decoding(grid_vq, device, torch::kFloat);
  }

  // ---- run directory
  RunDir run(config.train.out_dir);
  std::optional<MetricsLog> metrics;  // rank 0 writes, every rank agrees it could
  on_every_rank_or_none(dist, [&] {
    if (main) write_text_atomic((fs::path(run.path()) / "config.yaml").string(), config_to_yaml(config));
    metrics.emplace(run, main, resume_dir.empty() ? 0 : state.step, config.train.tensorboard, "samples",
                    state.fid_due && fid);
  }, "writing the run directory");
  if (!resume_dir.empty()) report_later_checkpoints(run, state.step, say);

  const Precision precision = resolve_precision(config.train.precision, device);
  const bool bf16 = precision.bf16;
  const double peak_lr = config.lr();
  std::string device_name;
  const double peak_tflops = device_peak_tflops(device, config.train.peak_tflops, &device_name);
  const double flops_per_image = training_flops_per_image(config.model);
  const int64_t tokens_per_image = config.model.num_tokens;

  {
    std::ostringstream s;
    s << "aim train: " << config.name << "\n"
      << "  model      " << config.model.ssm.layer << ", d_model " << config.model.d_model << ", "
      << config.model.n_layer << " layers, " << fmt_count(static_cast<double>(model->num_parameters()))
      << " parameters (" << model->num_parameters() << ")\n"
      << "  data       " << data.description << "\n"
      << "  batch      global " << config.train.global_batch << " = " << world << " rank(s) x micro "
      << micro << " x " << accum << " accumulation step(s); " << steps_per_epoch << " steps/epoch\n"
      << "  schedule   " << total_steps << " steps (" << fmt(static_cast<double>(total_steps) / steps_per_epoch, 3)
      << " epochs), peak lr " << fmt(peak_lr) << ", " << config.schedule.type << ", warm-up "
      << warmup_steps(config.schedule, total_steps) << " steps; AdamW betas (" << config.optim.betas[0]
      << ", " << config.optim.betas[1] << "), wd " << config.optim.weight_decay << ", clip "
      << config.optim.grad_clip << "\n"
      << "  precision  " << precision.summary
      << (config.train.ema ? str_cat(", EMA ", config.train.ema_decay) : std::string())
      << (config.train.recompute_every == 1   ? ", activations recomputed in the backward (every block)"
          : config.train.recompute_every > 1 ? str_cat(", activations recomputed in the backward (every ",
                                                       config.train.recompute_every, " blocks)")
                                              : std::string())
      << "\n"
      << "  device     " << device_name << " (" << device.str() << "), world size " << world << " ("
      << env.launcher << ", " << dist.backend() << ")"
      << (peak_tflops > 0 ? str_cat(", peak ", peak_tflops, " TFLOP/s for MFU") : std::string())
      << (device.is_cpu() ? str_cat(", CPU kernels ", ops::cpu_kernels_enabled() ? ops::cpu_kernel_isa() : "off")
                          : std::string())
      << "\n"
      << "  run dir    " << run.path()
      << (resume_dir.empty() ? std::string() : str_cat("\n  resumed    ", resume_dir, " at step ", state.step));
    say(s.str());
    if (!precision.warning.empty()) say("warning: " + precision.warning);
  }

  // ---- checkpointing
  TrainResult result;
  result.total_steps = total_steps;
  int64_t last_saved = resume_dir.empty() ? -1 : state.step;
  auto save = [&]() {
    result.checkpoint = save_checkpoint(dist, run, config, state, param_tensors, [&](const std::string& dir) {
      save_aim_model(model, (fs::path(dir) / "model.safetensors").string());
      if (ema) save_aim_model(ema->model(), (fs::path(dir) / "ema.safetensors").string());
      save_safetensors((fs::path(dir) / "optimizer.safetensors").string(), optimizer.state_tensors(),
                       optimizer.state_metadata());
    }, say);
    last_saved = state.step;
  };

  // Rank 0's picture; anything that fails in it (a full disk, a removed folder, out of memory while
  // sampling) is reported and the run, with the other ranks waiting on rank 0, goes on.
  auto draw_sample_grid = [&]() {
    AimModel& m = ema ? ema->model() : model;
    const bool was_training = m->is_training();
    m->eval();
    struct Restore {
      AimModel& m;
      bool training;
      ~Restore() {
        if (training) m->train();
      }
    } restore{m, was_training};
    const int64_t n_cls = std::min<int64_t>(config.model.num_classes, 10), per_class = 4;
    std::vector<int64_t> labels, ids;
    std::vector<std::string> captions;
    for (int64_t k = 0; k < n_cls; ++k) {
      const int64_t cls = k * config.model.num_classes / n_cls;
      for (int64_t j = 0; j < per_class; ++j) {
        labels.push_back(cls);
        ids.push_back(static_cast<int64_t>(ids.size()));
        captions.push_back(str_cat("class ", cls));
      }
    }
    SamplingOptions so;
    so.cfg = config.sample.cfg_scale;
    so.temperature = config.sample.temperature;
    so.top_k = config.sample.top_k;
    so.top_p = config.sample.top_p;
    so.cfg_top_p = config.sample.cfg_top_p;
    so.seed = static_cast<uint64_t>(config.sample.seed);
    torch::Tensor tokens;
    {
      torch::NoGradGuard ng;
      tokens = generate_tokens(m, torch::tensor(labels).to(device), ids, so);
    }
    const auto images = decode_tokens(grid_vq, tokens, 8);
    const auto grid = make_grid(from_tensor_batch(images), static_cast<int>(per_class), 2, {255, 255, 255}, captions);
    const std::string path = step_image_path(run, state.step);
    write_png(path, grid);
    say(str_cat("samples: ", path, " (", ema ? "EMA" : "model", ", cfg ", so.cfg, ")"));
    metrics->image(state.step, path);
  };
  auto sample_grid = [&]() {
    if (!main || !grid_vq) return;
    try {
      draw_sample_grid();
    } catch (const std::exception& e) {
      say(str_cat("warning: samples not written, training goes on: ", e.what()));
    }
  };

  // The mean token loss over every labelled held-out image (view 0, as aim eval-loss takes by
  // default), ranks taking every world-th image; train.eval_batches > 0 takes only
  // eval_batches x train.global_batch of them, spread over the set, the same images whatever the
  // number of ranks.
  // Abandoned (nullopt) when a stop is asked for: a scheduler's grace period (Slurm's KillWait is
  // 30 s) belongs to the checkpoint, and 50,000 validation images take longer than that.
  auto held_out_loss = [&]() -> std::optional<double> {
    model->eval();
    const auto& valid = val->valid_indices();
    size_t count = valid.size();
    if (config.train.eval_batches > 0)
      count = std::min<size_t>(count, static_cast<size_t>(config.train.eval_batches * config.train.global_batch));
    // A subset spread over the set as aim eval-loss --max-images takes it (an ImageFolder's codes
    // are in class order: the first images would be the first classes only).
    auto pick = [&](size_t i) {
      return valid[count == valid.size() ? i : static_cast<size_t>(static_cast<int64_t>(i) *
                                                                   static_cast<int64_t>(valid.size()) /
                                                                   static_cast<int64_t>(count))];
    };
    std::vector<int64_t> mine;
    for (size_t k = static_cast<size_t>(rank); k < count; k += static_cast<size_t>(world)) mine.push_back(pick(k));
    // Every rank walks as many batches as the rank with the most images (an empty one computes
    // nothing), so the stop check is a collective each rank reaches equally often.
    const size_t most = (count + static_cast<size_t>(world) - 1) / static_cast<size_t>(world);
    const size_t batches = (most + static_cast<size_t>(micro) - 1) / static_cast<size_t>(micro);
    double sum = 0.0;
    bool stopped = false;
    size_t reported = 0;  // images the progress line has counted
    // A line every 10 s where it takes that long (ImageNet's 50,000 validation images).
    Progress progress(str_cat("held-out loss, step ", state.step), static_cast<int64_t>(count), "img", verbose, 10.0);
    {
      torch::NoGradGuard ng;
      torch::Tensor codes, labels;
      for (size_t b = 0; b < batches; ++b) {
        if (dist.any_true(stop_signal() != 0)) {
          stopped = true;
          break;
        }
        const size_t done = std::min(count, b * static_cast<size_t>(micro * world));  // over all ranks
        progress.update(static_cast<int64_t>(done - reported));
        reported = done;
        const size_t first = std::min(mine.size(), b * static_cast<size_t>(micro));
        const size_t last = std::min(mine.size(), first + static_cast<size_t>(micro));
        if (first == last) continue;
        const std::vector<int64_t> idx(mine.begin() + static_cast<std::ptrdiff_t>(first),
                                       mine.begin() + static_cast<std::ptrdiff_t>(last));
        val->gather(idx, std::vector<int64_t>(idx.size(), 0), codes, labels);
        AutocastScope ac(bf16, device.type());
        sum += model->loss(codes.to(device), labels.to(device)).item<double>() * static_cast<double>(idx.size());
      }
    }
    model->train();
    if (stopped) return std::nullopt;
    const double images = dist.all_reduce(static_cast<double>(mine.size()));
    return dist.all_reduce(sum) / images;
  };

  // FIDs of the EMA when one is kept (as the grids), else of the model, in the metrics as
  // {"kind": "fid"}.
  std::unique_ptr<FidMonitor> fid_monitor;
  // (Not for a resume with no step left and no FID due: nothing would be scored.)
  if (fid && (state.step < total_steps || state.fid_due))
    fid_monitor = std::make_unique<FidMonitor>(config, dist, device, grid_vq, say);
  auto fid_eval = [&]() {
    for (auto& p : params) p.tensor.mutable_grad() = torch::Tensor();  // the step's are spent: memory for sampling
    say(str_cat("FID at step ", state.step, ": drawing ", config.train.fid_samples, " images from the ",
                ema ? "EMA" : "model", " weights"));
    const auto r = fid_monitor->evaluate(ema ? ema->model() : model, verbose);
    if (r.abandoned) {
      // Written into the checkpoint of this step, which the stop saves next.
      state.fid_due = true;
      result.interrupted = true;
      say(str_cat("FID at step ", state.step, ": abandoned after ", r.samples, " of ", config.train.fid_samples,
                  " images (stop requested); a resume computes it first"));
      return;
    }
    state.fid_due = false;
    say(str_cat("FID at step ", state.step, ": ", fmt(r.fid, 4), " (", r.samples, " images, cfg ", r.cfg, ", ",
                ema ? "EMA" : "model", " weights in ", r.dtype, ", ", format_duration(r.seconds), ")"));
    metrics->write({{"kind", "fid"}, {"step", state.step}, {"fid", r.fid}, {"samples", r.samples}, {"cfg", r.cfg},
                   {"weights", ema ? "ema" : "model"}, {"dtype", r.dtype}, {"seconds", r.seconds}});
#ifdef AIM_WITH_CUDA
    // The training records' peak memory is training's, not the sampling's.
    if (device.is_cuda()) cuda_reset_peak_memory(device.index());
#endif
  };

  // ---- the loop
  std::unique_ptr<BatchStream> stream;
  auto next_batch = [&]() -> CodeBatch {
    if (!stream) stream = data.open(state.epoch, state.batch);
    auto b = stream->next();
    AIM_CHECK(b.has_value(), str_cat("data ended early at epoch ", state.epoch, " batch ", state.batch));
    ++state.batch;
    return std::move(*b);
  };
  state.world_size = world;
  state.global_batch = config.train.global_batch;
  state.micro_batch = micro;
  state.seed = config.train.seed;
  state.data_samples = data.num_samples;
  if (state.log_sums.size() != 1) {  // a new run, or a checkpoint from before the sums were kept
    state.log_sums.assign(1, 0.0);
    state.log_count = 0;
  }

  const auto t_start = std::chrono::steady_clock::now();
  const double elapsed_before = state.elapsed_s;
  auto window_start = std::chrono::steady_clock::now();
  int64_t window_steps = 0;
  if (device.is_cuda()) {
#ifdef AIM_WITH_CUDA
    cuda_reset_peak_memory(device.index());
#endif
  }

  const int64_t session_start = state.step;
  if (state.step >= total_steps && state.step > 0)
    say(str_cat("the checkpoint is at step ", state.step, ", the run's end is step ", total_steps,
                ": no step to take\n---> HINT: raise train.max_steps or train.epochs to train on"));
  // The FID a stop abandoned in the last session, of the weights it saved.
  if (state.fid_due && fid_monitor) {
    say(str_cat("FID at step ", state.step, ": abandoned by the stop that ended the last session, computed now"));
    fid_eval();
    // Its checkpoint still says it is due: written again if this session ends at this step.
    if (!state.fid_due) last_saved = -1;
  } else if (state.fid_due) {
    say(str_cat("note: the FID of step ", state.step, " was abandoned by a stop and is not computed: train.fid_every is 0"));
    state.fid_due = false;
  }
  // The rate, the ETA and the first window's images/s count from here, after a resumed FID.
  Progress progress("train", total_steps, "step", verbose, 0.0);
  progress.resume_at(state.step);
  window_start = std::chrono::steady_clock::now();
  while (state.step < total_steps) {
    if (stop_before_step(dist, options, state.step - session_start, result)) break;
    // An epoch's leftover micro-batches (fewer than one accumulation) are skipped.
    if (state.batch + accum > data.batches_per_epoch) {
      ++state.epoch;
      state.batch = 0;
      stream.reset();
    }
    for (auto& p : params) p.tensor.mutable_grad() = torch::Tensor();
    torch::Tensor loss_sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat).device(device));
    for (int64_t k = 0; k < accum; ++k) {
      CodeBatch b = next_batch();
      torch::manual_seed(micro_seed(config.train.seed, state.step, k, rank));
      const auto codes = b.codes.to(device, /*non_blocking=*/true);
      const auto labels = b.labels.to(device, /*non_blocking=*/true);
      torch::Tensor loss;
      {
        AutocastScope ac(bf16, device.type());
        loss = model->loss(codes, labels);
      }
      grad_sync.prepare_for_backward(/*sync=*/k == accum - 1);
      (loss / static_cast<double>(accum)).backward();
      loss_sum += loss.detach().to(torch::kFloat);
    }
    state.samples_seen += config.train.global_batch;
    const double loss_value = dist.all_reduce(loss_sum.item<double>() / static_cast<double>(accum), ReduceOp::kMean);
    const double gnorm = grad_norm(params);
    const double lr = peak_lr * lr_factor(config.schedule, state.step, total_steps);
    // A skipped step leaves the weights, the optimizer and the EMA as they are, but counts as a
    // step (the schedule and the data move on) and is logged, evaluated and saved like any other.
    if (!skip_nonfinite_step(loss_value, gnorm, lr, config.train, run, state, say)) {
      clip_gradients(params, gnorm, config.optim.grad_clip);
      optimizer.step(lr);
      if (ema) ema->update(model);
      state.loss = loss_value;
      state.log_sums[0] += loss_value;
      ++state.log_count;
    }
    ++state.step;
    ++window_steps;

    const bool last = state.step == total_steps;
    if (state.step % config.train.log_every == 0 || last) {
      const auto now = std::chrono::steady_clock::now();
      const double dt = std::chrono::duration<double>(now - window_start).count();
      const double img_s = dt > 0 ? static_cast<double>(window_steps * config.train.global_batch) / dt : 0.0;
      const double tok_s = img_s * static_cast<double>(tokens_per_image);
      const double mfu = peak_tflops > 0 ? img_s * flops_per_image / (peak_tflops * 1e12 * world) : 0.0;
      // Where the data is (the same as step / steps-per-epoch unless the batch changed on resume).
      const double epoch_f = static_cast<double>(state.epoch) +
                             static_cast<double>(state.batch) / static_cast<double>(steps_per_epoch * accum);
      // Over the steps since the last log line, a resume's before the stop included.
      const double mean_loss = state.log_count > 0
                                   ? state.log_sums[0] / static_cast<double>(state.log_count)
                                   : std::numeric_limits<double>::quiet_NaN();
      state.elapsed_s = elapsed_before + std::chrono::duration<double>(now - t_start).count();
      int64_t peak_mem = 0;
#ifdef AIM_WITH_CUDA
      if (device.is_cuda()) peak_mem = cuda_peak_memory_bytes(device.index());
#endif
      {
        nlohmann::ordered_json j;
        j["kind"] = "train";
        j["step"] = state.step;
        j["epoch"] = epoch_f;
        j["loss"] = mean_loss;
        j["lr"] = lr;
        j["grad_norm"] = gnorm;
        j["images_per_s"] = img_s;
        j["tokens_per_s"] = tok_s;
        if (peak_tflops > 0) j["mfu"] = mfu;
        if (peak_mem > 0) j["peak_memory_gb"] = static_cast<double>(peak_mem) / 1e9;
        j["elapsed_s"] = state.elapsed_s;
        j["world_size"] = world;
        if (state.skipped_steps > 0) j["skipped_steps"] = state.skipped_steps;
        metrics->write(j);
      }
      std::ostringstream extra;
      extra << "ep " << std::fixed << std::setprecision(2) << epoch_f << " | loss " << std::setprecision(4)
            << mean_loss << " | lr " << std::scientific << std::setprecision(2) << lr << std::fixed
            << " | gnorm " << std::setprecision(3) << gnorm << " | " << fmt_count(img_s) << " img/s "
            << fmt_count(tok_s) << " tok/s";
      if (peak_tflops > 0) extra << " | MFU " << std::setprecision(1) << 100.0 * mfu << "%";
      if (peak_mem > 0) extra << " | mem " << std::setprecision(1) << static_cast<double>(peak_mem) / 1e9 << " GB";
      progress.update(window_steps, extra.str());
      window_start = now;
      window_steps = 0;
      state.log_sums.assign(1, 0.0);
      state.log_count = 0;
    }
    const auto others_start = std::chrono::steady_clock::now();
    if (val && (state.step % config.train.eval_every == 0 || last)) {
      if (const auto vl = held_out_loss()) {
        say(str_cat("held-out loss at step ", state.step, ": ", fmt(*vl, 5)));
        metrics->write({{"kind", "eval"}, {"step", state.step}, {"val_loss", *vl}});
      } else {
        say(str_cat("held-out loss at step ", state.step, ": abandoned (stop requested)\n---> HINT: aim eval-loss ",
                    "--ckpt ", config.train.out_dir, " --codes ", config.data.val_codes,
                    " gives the checkpoint's held-out loss (over every image, in fp32 unless --dtype bf16)"));
      }
    }
    if (fid_monitor && (state.step % config.train.fid_every == 0 || last)) fid_eval();
    // (Not once a stop is asked for: the grace period is the checkpoint's. Rank 0 alone draws it.)
    if (config.train.sample_every > 0 && (state.step % config.train.sample_every == 0 || last) && stop_signal() == 0)
      sample_grid();
    if (config.train.ckpt_every > 0 && state.step % config.train.ckpt_every == 0 && !last) save();
    // Held-out losses, FIDs, grids and checkpoints do not count toward the training throughput.
    const auto others_end = std::chrono::steady_clock::now();
    window_start = window_steps == 0 ? others_end : window_start + (others_end - others_start);
  }
  state.elapsed_s = elapsed_before +
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  if (state.step != last_saved) save();
  end_session(dist, run, state, progress, say, result);
  return result;
}

}  // namespace aim::train
