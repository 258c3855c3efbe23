#include <cmath>
#include <iostream>
#include <thread>

#include "aim/cli/commands.h"
#include "aim/core/env.h"
#include "aim/core/error.h"
#include "aim/data/extract.h"
#include "aim/data/image_folder.h"
#include "aim/model/loader.h"

namespace aim::cli {

Runner add_extract_codes_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("extract-codes", "Tokenize an image collection into a code dataset");
  struct Args {
    std::string data, list, classes, vq, vq_config, out, aug = "tencrop", device = "auto";
    int64_t image_size = 256, batch_size = 32, threads = 0, max_chunks = 0;
    double crop_range = 1.1;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--data", a->data, "ImageFolder tree: <data>/<class>/<images>");
  cmd->add_option("--list", a->list, "file list: '<path> <label>' per line (instead of --data)");
  cmd->add_option("--classes", a->classes, "class names, one per line (with --list)");
  cmd->add_option("--vq", a->vq, "tokenizer: .safetensors, official AiM snapshot or aim run directory")->required();
  cmd->add_option("--vq-config", a->vq_config, "tokenizer config JSON (default: next to the weights)");
  cmd->add_option("--out", a->out, "code dataset file to write")->required();
  cmd->add_option("--aug", a->aug, "none | flip (2 views) | tencrop (10 views, LlamaGen)")->capture_default_str();
  cmd->add_option("--image-size", a->image_size, "crop size in pixels")->capture_default_str();
  cmd->add_option("--crop-range", a->crop_range, "tencrop: center crop at image-size x this first")->capture_default_str();
  cmd->add_option("--batch-size", a->batch_size, "images per chunk")->capture_default_str();
  cmd->add_option("--threads", a->threads, "decode threads (default: all cores of this rank)");
  cmd->add_option("--device", a->device, kDeviceHelp)->capture_default_str();
  cmd->add_option("--max-chunks", a->max_chunks, "stop after this many chunks (resume later)");
  return [cmd, a]() -> int {
    if (!cmd->parsed()) return -1;
    if (a->data.empty() == a->list.empty()) throw Error("extract-codes: give exactly one of --data and --list");
    // Flags that would do nothing here are refused, not ignored.
    AIM_CHECK(a->classes.empty() || !a->list.empty(), "--classes ", a->classes, ": names the classes of a --list; ",
              "--data takes its class names from its folders\n---> HINT: leave it out");
    AIM_CHECK(cmd->count("--crop-range") == 0 || a->aug == "tencrop", "--crop-range ", a->crop_range,
              ": the tencrop view's first crop; --aug ", a->aug, " takes the ADM center crop\n---> HINT: leave it out");
    views_per_image(a->aug);  // throws naming --aug and the choices
    AIM_CHECK(a->batch_size >= 1, "--batch-size: expected >= 1, found ", a->batch_size);
    AIM_CHECK(a->image_size >= 1, "--image-size: expected a positive multiple of the tokenizer's downsampling, found ",
              a->image_size);
    // LlamaGen's is 1.1; past 2 every image would be resized to more than four times the pixels for nothing.
    AIM_CHECK(std::isfinite(a->crop_range) && a->crop_range >= 1.0 && a->crop_range <= 2.0,
              "--crop-range: expected a number in [1, 2] (LlamaGen: 1.1), found ", a->crop_range);
    AIM_CHECK(a->max_chunks >= 0, "--max-chunks: expected >= 0 (0 = all), found ", a->max_chunks);
    AIM_CHECK(a->threads >= 0, "--threads: expected >= 0 (0 = all cores of this rank), found ", a->threads);
    const auto env = detect_launch_env();
    // Before the slow steps (listing, loading): see begin_extraction.
    const auto heartbeat = begin_extraction(a->out, env.rank, env.world_size);
    auto vq = load_vq_model(a->vq, a->vq_config);
    check_tokenizer_image_size("--image-size", a->image_size, vq.model->config);
    ImageList list = a->data.empty() ? read_image_list(a->list, a->classes) : list_image_folder(a->data);
    ExtractOptions o;
    o.out = a->out;
    o.aug = a->aug;
    o.image_size = a->image_size;
    o.crop_range = a->crop_range;
    o.batch_size = a->batch_size;
    o.max_chunks = a->max_chunks;
    const int64_t cores = std::max(1u, std::thread::hardware_concurrency());
    o.threads = a->threads > 0 ? a->threads : std::max<int64_t>(1, cores / env.local_world_size);
    o.device = parse_device(a->device, env.local_rank);
    o.rank = env.rank;
    o.world_size = env.world_size;
    o.tokenizer_id = vq.identity;
    o.began = true;
    vq.model->to(o.device);
    if (env.is_main()) {
      std::cerr << "[extract] " << list.entries.size() << " images in " << list.classes.size()
                << " classes from " << list.source << "; tokenizer " << vq.identity << "; aug "
                << o.aug << " (" << views_per_image(o.aug) << (views_per_image(o.aug) == 1 ? " view" : " views")
                << ") at " << o.image_size << " px; " << env.world_size << " rank(s), device " << o.device << "\n";
    }
    auto report = extract_codes(vq.model, list, o);
    std::cout << "rank " << env.rank << ": " << report.images << " images (" << report.resumed
              << " already done), " << report.skipped << " unreadable skipped";
    if (!report.finished) std::cout << "; stopped early, re-run to resume";
    std::cout << "\n";
    for (const auto& f : report.skipped_files) std::cout << "  skipped: " << f << "\n";
    return 0;
  };
}

}  // namespace aim::cli
