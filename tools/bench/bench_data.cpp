// Samples/s of the two training data modes on this machine: reading pre-extracted codes from a
// memory-mapped dataset, and decoding + transforming + VQ-encoding images on the fly (the
// official AiM trainer's mode). Both measured in the same run; the ratio is printed.
//
//   bench_data [--images N] [--batch B] [--threads T] [--full-vq] [--device cpu|cuda]
// --full-vq encodes with the full-size VQ-16 (random weights; the speed is what matters),
// otherwise with the fixture tokenizer (tests/fixtures/vq/vq16_tiny) at 64 px.
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>

#include "aim/data/code_dataset.h"
#include "aim/data/code_loader.h"
#include "aim/data/image.h"
#include "aim/data/image_folder.h"
#include "aim/data/image_loader.h"
#include "aim/model/loader.h"
#include "bench_flags.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  int64_t num_images = 64, batch = 16, threads = std::max(1u, std::thread::hardware_concurrency());
  bool full = false;
  std::string device = "cpu";
  constexpr const char* kUsage = "bench_data [--images N] [--batch B] [--threads T] [--full-vq] [--device cpu|cuda]";
  try {
    aim::bench::FlagReader flags("bench_data", kUsage, argc, argv);
    while (flags.next()) {
      if (flags.is("--images")) num_images = flags.integer(1);
      else if (flags.is("--batch")) batch = flags.integer(1);
      else if (flags.is("--threads")) threads = flags.integer(1);
      else if (flags.is("--full-vq")) full = true;
      else if (flags.is("--device")) device = flags.choice("cpu|cuda");
      else flags.unknown();
    }
  } catch (const aim::bench::FlagError& e) {
    return aim::bench::flags_failed(e, kUsage);
  }
  const torch::Device dev(device);
  const auto dir = fs::temp_directory_path() / ("aim_bench_data_" + std::to_string(::getpid()));
  fs::create_directories(dir / "c0");
  // Photos are not available: 500x375 images with texture, as PNG.
  torch::manual_seed(0);
  for (int64_t k = 0; k < num_images; ++k) {
    aim::Image img(500, 375);
    auto noise = torch::randint(0, 255, {375, 500, 3}, torch::kUInt8);
    std::memcpy(img.rgb.data(), noise.data_ptr<uint8_t>(), img.rgb.size());
    aim::write_png((dir / "c0" / ("img" + std::to_string(k) + ".png")).string(), img);
  }
  aim::VqModel vq{nullptr};
  int64_t size = 256;
  if (full) {
    vq = aim::VqModel(aim::VqConfig{});
  } else {
    const fs::path fx = fs::path(AIM_SOURCE_DIR) / "tests" / "fixtures" / "vq" / "vq16_tiny";
    vq = aim::load_vq_model((fx / "model.safetensors").string(), (fx / "config.json").string()).model;
    size = 64;
  }
  vq->to(dev);
  vq->eval();
  auto list = aim::list_image_folder(dir.string());
  aim::ImageLoaderOptions o;
  o.batch_size = batch;
  o.image_size = size;
  o.threads = threads;
  aim::DistributedSampler sampler(num_images, 0, 1, true, 0);
  // Warm-up batch, then one timed epoch.
  { aim::ImageLoader warm(list, vq, dev, sampler, 0, 0, o); warm.next(); }
  auto t0 = Clock::now();
  int64_t served = 0;
  {
    aim::ImageLoader loader(list, vq, dev, sampler, 1, 0, o);
    while (auto b = loader.next()) served += b->codes.size(0);
  }
  const double image_rate = served / std::chrono::duration<double>(Clock::now() - t0).count();

  // Code mode: an ImageNet-sized ten-crop dataset (sparse file) read in random order.
  aim::CodeDatasetInfo info;
  info.num_samples = 1281167;
  info.num_aug = 10;
  info.tokens = 256;
  info.vocab_size = 16384;
  info.classes = {"c0"};
  const std::string codes_path = (dir / "bench.codes").string();
  aim::CodeDatasetWriter::create(codes_path, info)->sync();
  aim::code_dataset_mark_finished(codes_path);
  auto ds = std::make_shared<const aim::CodeDataset>(codes_path);
  aim::DistributedSampler code_sampler(ds->size(), 0, 1, true, 0);
  const int64_t code_batch = 256, code_batches = 400;
  t0 = Clock::now();
  {
    aim::CodeLoader loader(ds, code_sampler, code_batch, 0);
    for (int64_t k = 0; k < code_batches; ++k) loader.next();
  }
  const double code_rate = code_batch * code_batches / std::chrono::duration<double>(Clock::now() - t0).count();
  fs::remove_all(dir);
  // A markdown table whose columns line up whatever the labels say.
  const std::string code_label = "codes (mmap, 1.28M x 10 crops, shuffled)";
  char image_label[160];
  std::snprintf(image_label, sizeof image_label, "images (decode+resize+crop+VQ %s %lldpx, %s, %lld threads)",
                full ? "VQ-16" : "tiny", (long long)size, device.c_str(), (long long)threads);
  const int w = static_cast<int>(std::max(code_label.size(), std::strlen(image_label)));
  std::printf("| %-*s | %11s |\n", w, "mode", "samples/s");
  std::printf("|%s|-------------|\n", std::string(w + 2, '-').c_str());
  std::printf("| %-*s | %11.0f |\n", w, code_label.c_str(), code_rate);
  std::printf("| %-*s | %11.1f |\n", w, image_label, image_rate);
  std::printf("codes / images: %.1fx\n", code_rate / image_rate);
  return 0;
}
