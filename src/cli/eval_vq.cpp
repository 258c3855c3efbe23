// `aim eval-vq --vq TOKENIZER --data DIR`: reconstruction PSNR, SSIM, LPIPS and codebook usage.
#include <torch/torch.h>

#include <cmath>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>

#include "aim/cli/commands.h"
#include "aim/core/env.h"
#include "aim/core/error.h"
#include "aim/core/fileio.h"
#include "aim/data/image_folder.h"
#include "aim/eval/vq_eval.h"
#include "aim/model/loader.h"

namespace aim::cli {

Runner add_eval_vq_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval-vq", "Reconstruction PSNR, SSIM, LPIPS and codebook usage of a tokenizer on images");
  struct Args {
    std::string vq, vq_config, data, json, recon, lpips, device = "auto";
    int64_t image_size = 256, batch_size = 32, max_images = 0;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--vq", a->vq, "tokenizer: .safetensors, aim train-vq run, official AiM snapshot")->required();
  cmd->add_option("--vq-config", a->vq_config, "tokenizer config JSON (default: next to the weights)");
  cmd->add_option("--data", a->data, "ImageFolder tree of images")->required();
  cmd->add_option("--image-size", a->image_size, "center crop size in pixels")->capture_default_str();
  cmd->add_option("--batch-size", a->batch_size, "images per batch")->capture_default_str();
  cmd->add_option("--max-images", a->max_images, "evaluate this many images, spread over the set (0 = all)")
      ->capture_default_str();
  cmd->add_option("--device", a->device, kDeviceHelp)->capture_default_str();
  cmd->add_option("--json", a->json, "also write the figures as JSON (- for standard output)");
  cmd->add_option("--lpips", a->lpips, "LPIPS weights (convert_checkpoint.py --kind lpips): also report LPIPS");
  cmd->add_option("--save-recon", a->recon, "write the reconstructions here: same class folders and file names (as PNG)");
  return [cmd, a]() -> int {
    if (!cmd->parsed()) return -1;
    refuse_launcher("eval-vq");
    refuse_output_over_input("--save-recon", a->recon, {{"--data", a->data}, {"--vq", a->vq}});
    refuse_output_over_input("--json", a->json, {{"--data", a->data}, {"--vq", a->vq}, {"--vq-config", a->vq_config}});
    check_report_path("--json", a->json);
    auto vq = load_vq_model(a->vq, a->vq_config);
    check_tokenizer_image_size("--image-size", a->image_size, vq.model->config);
    const auto list = list_image_folder(a->data);
    TokenizerEvalOptions o;
    o.image_size = a->image_size;
    o.batch_size = a->batch_size;
    AIM_CHECK(a->max_images >= 0, "--max-images: expected >= 0 (0 = all), found ", a->max_images);
    o.max_images = a->max_images;
    o.device = parse_device(a->device, 0);
    o.recon_dir = a->recon;
    o.lpips_weights = a->lpips;
    vq.model->to(o.device);
    const auto r = evaluate_tokenizer(vq.model, list, o);
    // On standard error where the JSON takes standard output (--json -).
    std::ostream& out = process_stream_fd(a->json) == 1 ? std::cerr : std::cout;
    out << std::fixed << std::setprecision(2) << "tokenizer " << vq.identity << " on " << r.images
              << " images of " << a->data << " at " << a->image_size << " px\n"
              << "  PSNR            " << r.psnr << " dB (worst image " << r.psnr_min << " dB)\n";
    if (std::isfinite(r.ssim)) out << std::setprecision(4) << "  SSIM            " << r.ssim << "\n";
    if (std::isfinite(r.ssim_llamagen))
      out << std::setprecision(4) << "  SSIM (LlamaGen) " << r.ssim_llamagen
                << " (skimage, 7x7 window, data_range 2 on [0, 1]: comparable with LlamaGen's tables)\n";
    if (std::isfinite(r.lpips)) out << std::setprecision(4) << "  LPIPS           " << r.lpips << " (VGG16, v0.1)\n";
    out << std::setprecision(2)
              << "  codebook usage  " << r.codes_used << " / " << vq.model->config.codebook_size << " codes ("
              << 100.0 * r.usage << "%), perplexity " << r.perplexity << "\n";
    if (r.skipped > 0) {
      out << "note: " << r.skipped << " unreadable image" << (r.skipped == 1 ? "" : "s") << " skipped (not scored):";
      for (const auto& e : r.skipped_examples) out << "\n  " << e;
      out << (r.skipped > static_cast<int64_t>(r.skipped_examples.size()) ? "\n  ..." : "") << "\n";
    }
    if (r.upscaled > 0) {
      out << "note: " << r.upscaled << " of " << r.images << " images are smaller than --image-size "
                << a->image_size << " and were enlarged before encoding: smooth enlarged images reconstruct "
                   "better than images at their own size\n---> HINT: --image-size of the images' size\n";
    }
    if (!a->json.empty()) {
      nlohmann::ordered_json j;
      j["tokenizer"] = vq.identity;
      j["data"] = a->data;
      j["image_size"] = a->image_size;
      j["max_images"] = a->max_images;
      j["images"] = r.images;
      j["skipped"] = r.skipped;
      j["upscaled"] = r.upscaled;
      j["psnr"] = r.psnr;
      j["psnr_min"] = r.psnr_min;
      j["mse"] = r.mse;
      if (std::isfinite(r.ssim)) j["ssim"] = r.ssim;
      if (std::isfinite(r.ssim_llamagen)) j["ssim_llamagen"] = r.ssim_llamagen;
      if (std::isfinite(r.lpips)) j["lpips"] = r.lpips;
      j["codes_used"] = r.codes_used;
      j["codebook_size"] = vq.model->config.codebook_size;
      j["usage"] = r.usage;
      j["perplexity"] = r.perplexity;
      write_report(a->json, j.dump(2) + "\n");
    }
    return 0;
  };
}

}  // namespace aim::cli
