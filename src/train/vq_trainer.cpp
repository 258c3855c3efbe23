#include "aim/train/vq_trainer.h"

#include <algorithm>
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

#include "aim/core/env.h"
#include "aim/core/error.h"
#include "aim/core/fileio.h"
#include "aim/core/progress.h"
#include "aim/core/safetensors.h"
#include "aim/data/image.h"
#include "aim/data/image_folder.h"
#include "aim/data/image_loader.h"
#include "aim/data/sampler.h"
#include "aim/eval/lpips.h"
#include "aim/model/loader.h"
#include "aim/model/vq.h"
#include "aim/train/dist.h"
#include "aim/train/flops.h"
#include "aim/train/optim.h"
#include "aim/train/precision.h"
#include "aim/train/run_dir.h"
#include "aim/train/vq_losses.h"
#include "train_util.h"

namespace aim::train {

namespace fs = std::filesystem;

namespace {

std::vector<std::pair<std::string, torch::Tensor>> module_state(const torch::nn::Module& m) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : m.named_parameters(true)) out.emplace_back(p.key(), p.value().detach());
  for (const auto& b : m.named_buffers(true)) out.emplace_back(b.key(), b.value().detach());
  return out;
}

void load_module_state(torch::nn::Module& m, const std::string& path) {
  SafetensorsFile f(path);
  const auto sd = f.load_all();
  torch::NoGradGuard no_grad;
  auto copy = [&](const std::string& name, torch::Tensor& dst) {
    const auto it = sd.find(name);
    if (it == sd.end()) throw Error(str_cat(path, ": missing tensor '", name, "'"));
    if (it->second.sizes() != dst.sizes())
      throw Error(str_cat(path, ": tensor '", name, "' has shape ", it->second.sizes(), ", expected ", dst.sizes()));
    dst.copy_(it->second);
  };
  for (auto& p : m.named_parameters(true)) copy(p.key(), p.value());
  for (auto& b : m.named_buffers(true)) copy(b.key(), b.value());
}

/// `n` images spread evenly over the list (every class shows up), centre-cropped.
torch::Tensor grid_images(const ImageList& list, int64_t n, int64_t size, double mid_ratio) {
  const int64_t total = static_cast<int64_t>(list.entries.size());
  n = std::min(n, total);
  std::vector<torch::Tensor> views;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t idx = i * total / n;
    views.push_back(to_tensor(aim_eval_transform(decode_image(list.entries[static_cast<size_t>(idx)].path),
                                                 static_cast<int>(size), mid_ratio)));
  }
  return torch::stack(views);
}

}  // namespace

VqTrainResult run_vq_training(const Config& config_in, const TrainOptions& options) {
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
  const VqTrainConfig& vt = config.vq_train;
  if (config.train.ema) throw Error("train.ema: not supported by aim train-vq (expected false, found true)");
  if (!config.data.aug.empty())
    throw Error(str_cat("data.aug: not used by aim train-vq (expected empty, found '", config.data.aug,
                        "')\n---> HINT: the tokenizer's random flips are vq_train.hflip"));
  if (config.train.recompute_every != 0)
    throw Error(str_cat("train.recompute_every: not supported by aim train-vq (expected 0, found ",
                        config.train.recompute_every, ")"));

  // ---- resume
  std::string resume_dir;
  TrainerState state;
  agree_on_resume(dist, [&] {
    resume_dir = resume_dir_for(options.resume, config.train.out_dir);
    if (resume_dir.empty()) return;
    const auto saved = load_config((fs::path(resume_dir) / "config.yaml").string(), {}, ConfigUse::kTokenizer);
    Config a, b;
    a.vq = saved.vq;
    b.vq = config.vq;
    a.vq.weights = b.vq.weights = "";
    if (a != b)
      throw Error(str_cat("--resume ", resume_dir, ": the checkpoint's vq section differs from this run's "
                          "config: ", section_changes(a, b, "vq."),
                          " (checkpoint -> this run)\n---> HINT: resume with the run's own config.yaml"));
    // Only what the tokenizer reads: its run's config.yaml holds no model or sample section.
    report_changed_settings(tokenizer_config(saved), tokenizer_config(config), resume_dir, say);
    const std::string state_path = (fs::path(resume_dir) / "trainer_state.json").string();
    state = TrainerState::from_json(read_text(state_path), state_path);
    // The tensors are read later; their headers here, so that a file one rank cannot open stops
    // every rank at once rather than that rank alone.
    for (const char* f : {"model.safetensors", "optimizer.safetensors"})
      SafetensorsFile((fs::path(resume_dir) / f).string());
    // A discriminator (and its Adam) or code counts the checkpoint's run kept must be there: a
    // fresh discriminator in the middle of GAN training, or one rank's missing copy, would go
    // unnoticed. A run that adds them on resume starts them fresh, and says so.
    const bool disc_saved = saved.vq_train.disc_weight > 0, disc_now = config.vq_train.disc_weight > 0;
    auto required = [&](const char* f, const char* why) {
      try {
        SafetensorsFile((fs::path(resume_dir) / f).string());
      } catch (const Error& e) {
        throw Error(str_cat(e.what(), "\n---> HINT: the checkpoint's run kept it (", why, "): copy the whole "
                            "checkpoint folder, or resume from another"));
      }
    };
    if (disc_saved && disc_now) {
      required("discriminator.safetensors", "vq_train.disc_weight > 0");
      required("disc_optimizer.safetensors", "vq_train.disc_weight > 0");
    }
    if (saved.vq_train.restart_every > 0 && config.vq_train.restart_every > 0 && main)
      required("code_counts.safetensors", "vq_train.restart_every > 0");
    if (disc_now && !disc_saved)
      say(str_cat("note: the checkpoint's run trained without a discriminator (vq_train.disc_weight 0): the "
                  "PatchGAN and its optimizer start fresh at step ", state.step));
  }, resume_dir, state.step);
  refuse_existing_run(dist, config.train.out_dir, resume_dir);

  const int64_t micro = config.train.micro_batch;
  const int64_t accum = accumulation_steps(config.train, world);

  // ---- data
  if (config.data.images.empty())
    throw Error("data.images: expected an image folder (class sub-folders) to train the tokenizer on, found ''"
                "\n---> HINT: aim make-dataset shapes --out data/shapes, then --set data.images=data/shapes");
  // Keys of a stage-2 config that a tokenizer run does not read: said, not silently ignored.
  if (!config.vq.weights.empty())
    say(str_cat("note: vq.weights ", config.vq.weights, " is not read: train-vq trains the tokenizer (--init ",
                config.vq.weights, " starts it from those weights)"));
  if (!config.data.codes.empty())
    say(str_cat("note: data.codes ", config.data.codes, " is not read: train-vq trains on the images of data.images"));
  // Every rank lists its copy (a node-local one may be missing or differ): they agree first.
  std::shared_ptr<ImageList> list;
  on_every_rank_or_none(dist, [&] {
    list = std::make_shared<ImageList>(list_image_folder(config.data.images, "data.images"));
  }, "listing data.images");
  const int64_t num_samples = static_cast<int64_t>(list->entries.size());
  agree_on_count(dist, num_samples, "data.images " + config.data.images);
  DistributedSampler sampler(num_samples, rank, world, config.data.shuffle, static_cast<uint64_t>(config.train.seed));
  const int64_t batches_per_epoch = sampler.per_rank() / micro;
  const int64_t steps_per_epoch = batches_per_epoch / accum;
  if (steps_per_epoch < 1)
    throw Error(str_cat("data.images ", config.data.images, ": ", num_samples, " images, fewer than one "
                        "global batch (train.global_batch ", config.train.global_batch, ")"));
  const int64_t total_steps =
      config.train.max_steps > 0 ? config.train.max_steps : config.train.epochs * steps_per_epoch;
  ImageLoaderOptions lo;
  lo.batch_size = micro;
  lo.image_size = config.data.image_size;
  lo.mid_ratio = config.data.crop_ratio;
  lo.threads = std::max<int64_t>(1, config.data.num_workers);
  lo.seed = static_cast<uint64_t>(config.train.seed);
  lo.hflip = vt.hflip;
  lo.llamagen_crop = vt.crop == "llamagen";

  // The perceptual loss's network: fixed weights, on every rank, read before anything is written.
  eval::Lpips lpips{nullptr};
  if (vt.perceptual_weight > 0) {
    on_every_rank_or_none(dist, [&] {
      lpips = eval::Lpips();
      try {
        eval::load_lpips(lpips, vt.lpips);
      } catch (const Error& e) {
        throw Error(str_cat("vq_train.lpips: ", e.what()));
      }
    }, str_cat("train-vq: loading vq_train.lpips ", vt.lpips));
    lpips->to(device);
    lpips->eval();
  }

  // ---- models and optimizers
  torch::manual_seed(static_cast<uint64_t>(config.train.seed));
  VqModel model(config.vq);
  PatchDiscriminator disc{nullptr};
  const bool use_disc = vt.disc_weight > 0;
  if (use_disc) disc = PatchDiscriminator(vt.disc_channels, vt.disc_layers);
  if (!options.init.empty() && !resume_dir.empty())
    say(str_cat("note: --init ", options.init, " is not used: resuming from ", resume_dir, " (its weights)"));
  on_every_rank_or_none(dist, [&] {
    if (!options.init.empty() && resume_dir.empty()) {
      auto init = load_vq_model(options.init, options.init_config, "--init");
      const auto sd = vq_state_dict(init.model);
      load_vq_state_dict(model, std::map<std::string, torch::Tensor>(sd.begin(), sd.end()), options.init);
      say(str_cat("init: tokenizer weights from ", options.init));
    }
    if (!resume_dir.empty()) {
      const std::string w = (fs::path(resume_dir) / "model.safetensors").string();
      load_vq_state_dict(model, SafetensorsFile(w).load_all(), w);
      if (use_disc) {
        const std::string d = (fs::path(resume_dir) / "discriminator.safetensors").string();
        if (fs::exists(d)) load_module_state(*disc, d);
      }
    }
  }, "loading the starting weights");
  model->to(device);
  model->train();
  if (use_disc) {
    disc->to(device);
    disc->train();
  }
  auto params = unique_parameters(*model);
  std::vector<NamedParam> disc_params;
  if (use_disc) disc_params = unique_parameters(*disc);
  const auto param_tensors = tensors_of(params);
  {
    auto all = param_tensors;
    for (const auto& p : disc_params) all.push_back(p.tensor);
    dist.broadcast_(all);  // every rank starts from rank 0's weights
  }
  AdamW optimizer(params, config.optim, /*fused=*/true);
  std::unique_ptr<AdamW> disc_optimizer;
  if (use_disc) disc_optimizer = std::make_unique<AdamW>(disc_params, config.optim, /*fused=*/true);
  // Per-code use since the last dead-code restart (vq_train.restart_every), all ranks.
  auto code_counts = torch::zeros({config.vq.codebook_size}, torch::TensorOptions().dtype(torch::kLong).device(device));
  on_every_rank_or_none(dist, [&] {
    if (resume_dir.empty()) return;
    const std::string o = (fs::path(resume_dir) / "optimizer.safetensors").string();
    SafetensorsFile f(o);
    optimizer.load_state(f.load_all(), f.metadata(), o);
    check_optimizer_steps(optimizer.steps(), state, o);
    const std::string d = (fs::path(resume_dir) / "disc_optimizer.safetensors").string();
    if (use_disc && fs::exists(d)) {
      SafetensorsFile fd(d);
      disc_optimizer->load_state(fd.load_all(), fd.metadata(), d);
    }
    const std::string c = (fs::path(resume_dir) / "code_counts.safetensors").string();
    if (vt.restart_every > 0 && main && fs::exists(c)) code_counts.copy_(SafetensorsFile(c).get("code_counts"));
  }, "loading the checkpoint's optimizer state");
  GradSync grad_sync(param_tensors, dist);
  std::unique_ptr<GradSync> disc_sync;
  if (use_disc) disc_sync = std::make_unique<GradSync>(tensors_of(disc_params), dist);

  // ---- run directory
  RunDir run(config.train.out_dir);
  std::optional<MetricsLog> metrics;  // rank 0 writes, every rank agrees it could
  on_every_rank_or_none(dist, [&] {
    if (main)
      write_text_atomic((fs::path(run.path()) / "config.yaml").string(), config_to_yaml(config, ConfigUse::kTokenizer));
    metrics.emplace(run, main, resume_dir.empty() ? 0 : state.step, config.train.tensorboard, "reconstructions");
  }, "writing the run directory");
  if (!resume_dir.empty()) report_later_checkpoints(run, state.step, say);
  torch::Tensor fixed;
  on_every_rank_or_none(dist, [&] {
    if (main) fixed = grid_images(*list, vt.eval_images, config.data.image_size, config.data.crop_ratio);
  }, str_cat("train-vq: reading the ", vt.eval_images, " images of the reconstruction grids"));

  const Precision precision = resolve_precision(config.train.precision, device);
  const bool bf16 = precision.bf16;
  const double peak_lr = config.lr();
  const double disc_peak_lr = vt.disc_lr > 0 ? vt.disc_lr : peak_lr;
  const int64_t f = config.vq.downsample();
  // MFU counts the tokenizer's forward and backward and LPIPS's (include/aim/train/flops.h), not
  // the PatchGAN's.
  const double peak_tflops = device_peak_tflops(device, config.train.peak_tflops);
  const double flops_per_image = vq_training_flops_per_image(config.vq, vt, config.data.image_size);
  {
    int64_t n_params = 0, n_disc = 0;
    for (const auto& p : params) n_params += p.tensor.numel();
    for (const auto& p : disc_params) n_disc += p.tensor.numel();
    std::ostringstream s;
    s << "aim train-vq: " << config.name << "\n"
      << "  tokenizer  ch " << config.vq.ch << ", ch_mult [";
    for (size_t i = 0; i < config.vq.ch_mult.size(); ++i) s << (i ? ", " : "") << config.vq.ch_mult[i];
    s << "] (downsample " << f << "), codebook " << config.vq.codebook_size << " x " << config.vq.codebook_embed_dim
      << (config.vq.codebook_l2_norm ? " (l2-normalised)" : "") << ", " << fmt_count(static_cast<double>(n_params))
      << " parameters\n"
      << "  data       " << config.data.images << ": " << num_samples << " images, " << list->classes.size()
      << " classes, " << config.data.image_size << " px -> " << config.data.image_size / f << "x"
      << config.data.image_size / f << " codes, "
      << (vt.crop == "llamagen" ? "LlamaGen's random_crop_arr"
                              : str_cat("short side resized to ", config.data.crop_ratio, "x + random crop"))
      << (vt.hflip ? ", random flips" : "") << "\n"
      << "  losses     L1 x " << vt.l1_weight << " + L2 x " << vt.l2_weight << " + codebook x " << vt.codebook_weight
      << " (commitment beta " << vt.commit_beta << ", entropy " << vt.entropy_weight << ")";
    if (vt.ssim_weight > 0) s << " + (1 - SSIM) x " << vt.ssim_weight;
    if (lpips)
      s << " + LPIPS x " << vt.perceptual_weight << " (VGG16, " << vt.lpips << (vt.lpips_dropout ? ", dropout on" : "")
        << ")";
    else if (!vt.lpips.empty())
      s << " (vq_train.lpips " << vt.lpips << " unused: vq_train.perceptual_weight is 0)";
    if (use_disc)
      s << " + PatchGAN hinge x " << vt.disc_weight << " from step " << vt.disc_start << " ("
        << fmt_count(static_cast<double>(n_disc)) << " parameters, lr " << fmt(disc_peak_lr) << ")";
    s << "\n  batch      global " << config.train.global_batch << " = " << world << " rank(s) x micro " << micro
      << " x " << accum << " accumulation step(s); " << steps_per_epoch << " steps/epoch\n"
      << "  schedule   " << total_steps << " steps, peak lr " << fmt(peak_lr) << ", " << config.schedule.type
      << ", warm-up " << warmup_steps(config.schedule, total_steps) << " steps; precision " << precision.summary
      << "\n  device     " << device.str() << ", world size " << world << " (" << env.launcher << ", "
      << dist.backend() << ")"
      << (peak_tflops > 0 ? str_cat(", peak ", peak_tflops, " TFLOP/s for MFU") : std::string()) << "\n"
      << "  run dir    " << run.path()
      << (resume_dir.empty() ? std::string() : str_cat("\n  resumed    ", resume_dir, " at step ", state.step));
    say(s.str());
    if (!precision.warning.empty()) say("warning: " + precision.warning);
  }

  // ---- checkpointing
  VqTrainResult result;
  result.total_steps = total_steps;
  int64_t last_saved = resume_dir.empty() ? -1 : state.step;
  auto save = [&]() {
    // Each rank counts its own codes since the last restart; the checkpoint keeps their sum
    // (a resume gives it to rank 0), which is all a restart reads.
    torch::Tensor counts_total;
    if (vt.restart_every > 0) {
      counts_total = code_counts.clone();
      dist.all_reduce_(counts_total, ReduceOp::kSum);
    }
    result.checkpoint = save_checkpoint(dist, run, config, state, param_tensors, [&](const std::string& dir) {
      save_safetensors((fs::path(dir) / "model.safetensors").string(), vq_state_dict(model), {{"format", "pt"}});
      save_safetensors((fs::path(dir) / "optimizer.safetensors").string(), optimizer.state_tensors(),
                       optimizer.state_metadata());
      if (use_disc) {
        save_safetensors((fs::path(dir) / "discriminator.safetensors").string(), module_state(*disc),
                         {{"format", "pt"}});
        save_safetensors((fs::path(dir) / "disc_optimizer.safetensors").string(), disc_optimizer->state_tensors(),
                         disc_optimizer->state_metadata());
      }
      if (vt.restart_every > 0)
        save_safetensors((fs::path(dir) / "code_counts.safetensors").string(),
                         {{"code_counts", counts_total.to(torch::kCPU)}}, {});
    }, say, ConfigUse::kTokenizer);
    last_saved = state.step;
  };

  double usage = 0.0;
  // Reconstructions of the fixed images in eval mode: a grid (originals above reconstructions)
  // and their PSNR.
  auto draw_reconstructions = [&]() {
    model->eval();
    torch::Tensor rec;
    {
      torch::NoGradGuard ng;
      AutocastScope ac(bf16, device.type());
      std::vector<torch::Tensor> parts;
      for (int64_t i = 0; i < fixed.size(0); i += micro)
        parts.push_back(model->reconstruct(fixed.slice(0, i, std::min(fixed.size(0), i + micro)).to(device))
                            .to(torch::kCPU, torch::kFloat));
      rec = torch::cat(parts);
    }
    model->train();
    const double p = psnr(fixed, rec);
    result.psnr = p;
    const int64_t n = fixed.size(0), cols = std::min<int64_t>(8, n);
    std::vector<Image> tiles;
    const auto orig = from_tensor_batch(fixed), recs = from_tensor_batch(rec);
    for (int64_t r = 0; r * cols < n; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t i = r * cols + c;
        tiles.push_back(i < n ? orig[static_cast<size_t>(i)] : Image(orig[0].width, orig[0].height));
      }
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t i = r * cols + c;
        tiles.push_back(i < n ? recs[static_cast<size_t>(i)] : Image(orig[0].width, orig[0].height));
      }
    }
    metrics->write({{"kind", "eval"}, {"step", state.step}, {"psnr", p}, {"codebook_usage", usage}});
    const std::string path = step_image_path(run, state.step);
    write_png(path, make_grid(tiles, static_cast<int>(cols), 2, {255, 255, 255}));
    say(str_cat("reconstructions: ", path, " (PSNR ", fmt(p, 4), " dB over ", n, " images)"));
    metrics->image(state.step, path);
  };
  // As in the AiM trainer: a picture that fails (a full disk, out of memory) does not end the run
  // or leave the other ranks waiting on rank 0.
  auto reconstruction_grid = [&]() {
    if (!main) return;
    try {
      draw_reconstructions();
    } catch (const std::exception& e) {
      model->train();
      say(str_cat("warning: reconstructions not written, training goes on: ", e.what()));
    }
  };

  // ---- the loop
  std::unique_ptr<ImageLoader> loader;
  auto next_batch = [&]() -> ImageBatch {
    if (!loader)
      loader = std::make_unique<ImageLoader>(*list, VqModel{nullptr}, device, sampler, state.epoch, state.batch, lo);
    auto b = loader->next_images();
    AIM_CHECK(b.has_value(), str_cat("data ended early at epoch ", state.epoch, " batch ", state.batch));
    ++state.batch;
    return std::move(*b);
  };
  continue_data_position(state, num_samples, micro, world, say);
  state.world_size = world;
  state.global_batch = config.train.global_batch;
  state.micro_batch = micro;
  state.seed = config.train.seed;
  state.data_samples = num_samples;

  Progress progress("train-vq", total_steps, "step", verbose, 0.0);
  progress.resume_at(state.step);
  const auto t_start = std::chrono::steady_clock::now();
  const double elapsed_before = state.elapsed_s;
  auto window_start = t_start;
  int64_t window_steps = 0;
  // Sums since the last log line (state.log_sums, kept by checkpoints) of: loss, l1, l2,
  // codebook, commit, entropy, gen, disc, psnr, ssim, perceptual (means over the state.log_count
  // steps that were not skipped; gen and disc over the adversarial ones among them), then the
  // number of codes restarted (a count, logged as it is) and the number of adversarial steps.
  constexpr int kTerms = 11;
  constexpr int kRestarts = kTerms;
  constexpr int kAdversarialSteps = kTerms + 1;
  if (state.log_sums.size() != kTerms + 2) {
    state.log_sums.assign(kTerms + 2, 0.0);
    state.log_count = 0;
  }
  auto& window = state.log_sums;
  const int64_t session_start = state.step;
  if (state.step >= total_steps && state.step > 0)
    say(str_cat("the checkpoint is at step ", state.step, ", the run's end is step ", total_steps,
                ": no step to take\n---> HINT: raise train.max_steps or train.epochs to train on"));
  while (state.step < total_steps) {
    if (stop_before_step(dist, options, state.step - session_start, result)) break;
    if (state.batch + accum > batches_per_epoch) {
      ++state.epoch;
      state.batch = 0;
      loader.reset();
    }
    // LlamaGen's adopt_weight(global_step = steps done + 1, threshold = disc_start): the GAN's
    // first step is step disc_start (1-based).
    const bool adversarial = use_disc && state.step + 1 >= vt.disc_start;
    for (auto& p : params) p.tensor.mutable_grad() = torch::Tensor();
    for (auto& p : disc_params) p.tensor.mutable_grad() = torch::Tensor();
    auto opts = torch::TensorOptions().dtype(torch::kFloat).device(device);
    std::array<torch::Tensor, kTerms> sums;
    for (auto& t : sums) t = torch::zeros({}, opts);
    std::vector<std::pair<torch::Tensor, torch::Tensor>> pairs;  // (real, reconstruction) for D
    torch::Tensor last_z;
    for (int64_t k = 0; k < accum; ++k) {
      ImageBatch b = next_batch();
      torch::manual_seed(micro_seed(config.train.seed, state.step, k, rank));
      const auto x = b.images.to(device, /*non_blocking=*/true);
      torch::Tensor total, rec;
      QuantizeOutput q;
      torch::Tensor l1, l2, gen, structure, perceptual;
      {
        AutocastScope ac(bf16, device.type());
        const auto z = model->encode_latent(x);
        q = quantize_for_training(*model->quantize, z, vt.entropy_weight > 0 ? vt.entropy_temperature : 0.0);
        rec = model->decoder->forward(model->post_quant_conv->forward(q.z_q.to(z.scalar_type())));
        const auto diff = rec.to(torch::kFloat) - x;
        l1 = diff.abs().mean();
        l2 = diff.pow(2).mean();
        total = vt.l1_weight * l1 + vt.l2_weight * l2 +
                vt.codebook_weight * (q.codebook_loss + vt.commit_beta * q.commit_loss);
        if (vt.ssim_weight > 0) {
          structure = ssim(x, rec);
          total = total + vt.ssim_weight * (1.0 - structure);
        }
        if (lpips) {
          perceptual = lpips->forward(x, rec, vt.lpips_dropout).mean();
          total = total + vt.perceptual_weight * perceptual;
        }
        if (q.entropy_loss.defined()) total = total + vt.codebook_weight * vt.entropy_weight * q.entropy_loss;
        if (adversarial) {
          for (auto& p : disc_params) p.tensor.requires_grad_(false);
          gen = hinge_generator_loss(disc->forward(rec));
          for (auto& p : disc_params) p.tensor.requires_grad_(true);
          total = total + vt.disc_weight * gen;
        }
      }
      grad_sync.prepare_for_backward(/*sync=*/k == accum - 1);
      (total / static_cast<double>(accum)).backward();
      usage = record_codebook_usage(*model->quantize, q.codes);
      if (vt.restart_every > 0) {
        code_counts += torch::bincount(q.codes.reshape({-1}), {}, config.vq.codebook_size);
        last_z = q.z_flat;
      }
      if (adversarial) pairs.emplace_back(x, rec.detach());
      sums[0] += total.detach();
      sums[1] += l1.detach();
      sums[2] += l2.detach();
      sums[3] += q.codebook_loss.detach();
      sums[4] += q.commit_loss.detach();
      if (q.entropy_loss.defined()) sums[5] += q.entropy_loss.detach();
      if (gen.defined()) sums[6] += gen.detach();
      if (structure.defined()) sums[9] += structure.detach();
      if (perceptual.defined()) sums[10] += perceptual.detach();
    }
    // Discriminator: hinge loss on the same images and their (detached) reconstructions, times
    // disc_weight as in LlamaGen (which matters for the gradient clipping).
    if (adversarial) {
      for (size_t k = 0; k < pairs.size(); ++k) {
        torch::Tensor d_loss;
        {
          AutocastScope ac(bf16, device.type());
          d_loss = hinge_discriminator_loss(disc->forward(pairs[k].first), disc->forward(pairs[k].second));
        }
        disc_sync->prepare_for_backward(/*sync=*/k + 1 == pairs.size());
        (vt.disc_weight * d_loss / static_cast<double>(accum)).backward();
        sums[7] += d_loss.detach();  // logged without the weight, as gen_loss
      }
    }
    state.samples_seen += config.train.global_batch;
    auto stacked = torch::stack({sums[0], sums[1], sums[2], sums[3], sums[4], sums[5], sums[6], sums[7], sums[9],
                                 sums[10]}) /
                   static_cast<double>(accum);
    dist.all_reduce_(stacked, ReduceOp::kMean);  // one collective for all the loss terms
    stacked = stacked.to(torch::kCPU, torch::kDouble);
    std::array<double, kTerms> v{};
    for (int i = 0; i < 8; ++i) v[static_cast<size_t>(i)] = stacked[i].item<double>();
    v[9] = stacked[8].item<double>();
    v[10] = stacked[9].item<double>();
    v[8] = v[2] > 0 ? 10.0 * std::log10(4.0 / v[2]) : 99.0;  // PSNR of the mean squared error
    const double loss_value = v[0];
    const double gnorm = grad_norm(params);
    const double lr = peak_lr * lr_factor(config.schedule, state.step, total_steps);
    // A skipped step leaves the weights and optimizers as they are but counts as a step (logged,
    // saved, and the restart schedule goes on).
    if (!skip_nonfinite_step(loss_value, gnorm, lr, config.train, run, state, say)) {
      clip_gradients(params, gnorm, config.optim.grad_clip);
      optimizer.step(lr);
      if (adversarial) {
        const double dn = grad_norm(disc_params);
        clip_gradients(disc_params, dn, config.optim.grad_clip);
        // LlamaGen steps this Adam every step, with zero gradients before the GAN starts.
        if (disc_optimizer->steps() == 0) disc_optimizer->start_at(state.step);
        disc_optimizer->step(disc_peak_lr * lr_factor(config.schedule, state.step, total_steps));
      }
      state.loss = loss_value;
      for (size_t i = 0; i < kTerms; ++i) window[i] += v[i];
      ++state.log_count;
      if (adversarial) window[kAdversarialSteps] += 1.0;
    }
    ++state.step;
    ++window_steps;
    if (vt.restart_every > 0 && state.step % vt.restart_every == 0) {
      // Codes no rank used since the last restart take rank 0's current encoder vectors.
      dist.all_reduce_(code_counts, ReduceOp::kSum);
      torch::manual_seed(micro_seed(config.train.seed, state.step, accum, 0));
      const int64_t restarted = restart_unused_codes(*model->quantize, code_counts, last_z);
      dist.broadcast_({model->quantize->embedding->weight});
      code_counts.zero_();
      window[kRestarts] += static_cast<double>(restarted);
    }

    const bool last = state.step == total_steps;
    if (state.step % config.train.log_every == 0 || last) {
      const auto now = std::chrono::steady_clock::now();
      const double dt = std::chrono::duration<double>(now - window_start).count();
      const double img_s = dt > 0 ? static_cast<double>(window_steps * config.train.global_batch) / dt : 0.0;
      const double mfu = peak_tflops > 0 ? img_s * flops_per_image / (peak_tflops * 1e12 * world) : 0.0;
      const auto window_restarts = static_cast<int64_t>(window[kRestarts]);
      std::array<double, kTerms> m{};
      for (size_t i = 0; i < kTerms; ++i)
        m[i] = state.log_count > 0 ? window[i] / static_cast<double>(state.log_count)
                                   : std::numeric_limits<double>::quiet_NaN();
      // The GAN's losses over its own steps: the window where it starts began without it.
      const bool gan_logged = window[kAdversarialSteps] > 0;
      for (const size_t i : {size_t{6}, size_t{7}})
        m[i] = gan_logged ? window[i] / window[kAdversarialSteps] : std::numeric_limits<double>::quiet_NaN();
      state.elapsed_s = elapsed_before + std::chrono::duration<double>(now - t_start).count();
      const double epoch_f = static_cast<double>(state.step) / static_cast<double>(steps_per_epoch);
      {
        nlohmann::ordered_json j;
        j["kind"] = "train";
        j["step"] = state.step;
        j["epoch"] = epoch_f;
        j["loss"] = m[0];
        j["l1"] = m[1];
        j["l2"] = m[2];
        j["codebook_loss"] = m[3];
        j["commit_loss"] = m[4];
        if (vt.entropy_weight > 0) j["entropy_loss"] = m[5];
        if (gan_logged) {
          j["gen_loss"] = m[6];
          j["disc_loss"] = m[7];
        }
        j["psnr"] = m[8];
        if (vt.ssim_weight > 0) j["ssim"] = m[9];
        if (lpips) j["perceptual_loss"] = m[10];
        j["codebook_usage"] = usage;
        if (vt.restart_every > 0) j["codes_restarted"] = window_restarts;
        j["lr"] = lr;
        j["grad_norm"] = gnorm;
        j["images_per_s"] = img_s;
        if (peak_tflops > 0) j["mfu"] = mfu;
        j["elapsed_s"] = state.elapsed_s;
        j["world_size"] = world;
        if (state.skipped_steps > 0) j["skipped_steps"] = state.skipped_steps;
        metrics->write(j);
      }
      std::ostringstream extra;
      extra << "ep " << std::fixed << std::setprecision(2) << epoch_f << " | loss " << std::setprecision(4) << m[0]
            << (vt.l1_weight > 0 ? " | rec L1 " : " | rec L2 ") << (vt.l1_weight > 0 ? m[1] : m[2]) << " | PSNR " << std::setprecision(2) << m[8] << " dB | usage "
            << std::setprecision(1) << 100.0 * usage << "%";
      if (lpips) extra << std::setprecision(4) << " | LPIPS " << m[10];
      if (window_restarts > 0) extra << " (" << window_restarts << " restarted)";
      if (gan_logged) extra << std::setprecision(3) << " | G " << m[6] << " D " << m[7];
      extra << " | lr " << std::scientific << std::setprecision(2) << lr << std::fixed << " | " << fmt_count(img_s)
            << " img/s";
      if (peak_tflops > 0) extra << " | MFU " << std::setprecision(1) << 100.0 * mfu << "%";
      progress.update(window_steps, extra.str());
      window_start = now;
      window_steps = 0;
      state.log_count = 0;
      std::fill(window.begin(), window.end(), 0.0);
    }
    if (config.train.sample_every > 0 && (state.step % config.train.sample_every == 0 || last)) reconstruction_grid();
    if (config.train.ckpt_every > 0 && state.step % config.train.ckpt_every == 0 && !last) save();
    if (window_steps == 0) window_start = std::chrono::steady_clock::now();
  }
  state.elapsed_s = elapsed_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  if (state.step != last_saved) save();
  end_session(dist, run, state, progress, say, result);
  result.usage = usage;
  return result;
}

}  // namespace aim::train
