// Training from images: batches independent of thread count, fresh crops per epoch, resume from
// a batch index, unreadable images replaced within their batch and counted.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "aim/data/image.h"
#include "aim/data/image_folder.h"
#include "aim/data/image_loader.h"
#include "aim/model/loader.h"
#include "test_util.h"

namespace aim {
namespace {

namespace fs = std::filesystem;

class ImageLoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("aim_imgloader_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    for (int c = 0; c < 2; ++c) {
      fs::create_directories(dir_ / ("class" + std::to_string(c)));
      for (int k = 0; k < 5; ++k) {
        Image img(90 + 3 * k, 80 + 2 * c);
        for (int y = 0; y < img.height; ++y) {
          for (int x = 0; x < img.width; ++x) {
            auto* p = img.pixel(x, y);
            p[0] = static_cast<uint8_t>((x * 7 + k * 30) % 256);
            p[1] = static_cast<uint8_t>((y * 5 + c * 80) % 256);
            p[2] = static_cast<uint8_t>(((x ^ y) * 3) % 256);
          }
        }
        write_png((dir_ / ("class" + std::to_string(c)) / ("img" + std::to_string(k) + ".png")).string(), img);
      }
    }
    std::ofstream(dir_ / "class1" / "zz_broken.png") << "not a png";
    list_ = list_image_folder(dir_.string());
    const auto vq_dir = test::fixtures_dir() / "vq" / "vq16_tiny";
    vq_ = load_vq_model((vq_dir / "model.safetensors").string(), (vq_dir / "config.json").string()).model;
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::vector<CodeBatch> epoch(int64_t e, int64_t threads, int64_t start = 0) {
    ImageLoaderOptions o;
    o.batch_size = 4;
    o.image_size = 64;
    o.threads = threads;
    o.seed = 3;
    DistributedSampler sampler(static_cast<int64_t>(list_.entries.size()), 0, 1, true, 3);
    ImageLoader loader(list_, vq_, torch::kCPU, sampler, e, start, o);
    std::vector<CodeBatch> out;
    while (auto b = loader.next()) out.push_back(*b);
    skipped_ = loader.skipped();
    return out;
  }
  fs::path dir_;
  ImageList list_;
  VqModel vq_{nullptr};
  int64_t skipped_ = 0;
};

TEST_F(ImageLoaderTest, DeterministicFreshCropsAndResumable) {
  ASSERT_EQ(list_.entries.size(), 11u);
  auto a = epoch(0, 1), b = epoch(0, 3);
  ASSERT_EQ(a.size(), 2u);  // 11 images, batches of 4, last partial dropped
  for (size_t k = 0; k < a.size(); ++k) {
    EXPECT_TRUE(torch::equal(a[k].codes, b[k].codes));
    EXPECT_TRUE(torch::equal(a[k].labels, b[k].labels));
    EXPECT_EQ(a[k].codes.size(1), 16);
    // Every batch keeps its size: the broken file, when drawn, is replaced by another image of
    // its batch, which then appears twice with its label.
    EXPECT_EQ(a[k].codes.size(0), 4);
  }
  int64_t drawn_broken = 0;
  for (int64_t e = 0; e < 6; ++e) {
    const auto batches = epoch(e, 2);
    if (skipped_ == 0) continue;
    ++drawn_broken;
    EXPECT_EQ(skipped_, 1) << "epoch " << e;
    bool duplicate = false;
    for (const auto& batch : batches) {
      EXPECT_EQ(batch.codes.size(0), 4);
      for (int64_t i = 0; i < 4; ++i)
        for (int64_t j = i + 1; j < 4; ++j)
          duplicate |= torch::equal(batch.codes[i], batch.codes[j]) && torch::equal(batch.labels[i], batch.labels[j]);
    }
    EXPECT_TRUE(duplicate) << "epoch " << e << ": the replacement is a copy of a readable image of the batch";
  }
  EXPECT_GT(drawn_broken, 0) << "no epoch of six drew the broken file (8 of 11 images each)";
  auto again = epoch(1, 2);
  bool differs = false;
  for (size_t k = 0; k < again.size(); ++k) differs |= !torch::equal(again[k].codes, a[k].codes);
  EXPECT_TRUE(differs) << "epoch 1 should draw other crops and another order";
  auto resumed = epoch(0, 2, 1);
  ASSERT_EQ(resumed.size(), 1u);
  EXPECT_EQ(resumed[0].batch, 1);
  EXPECT_TRUE(torch::equal(resumed[0].codes, a[1].codes));
}

// A batch none of whose images can be read is an error naming them, not an empty batch.
TEST_F(ImageLoaderTest, ABatchWithNoReadableImageIsAnError) {
  const auto bad = dir_ / "bad";
  for (int c = 0; c < 2; ++c) {
    fs::create_directories(bad / ("c" + std::to_string(c)));
    for (int k = 0; k < 2; ++k) std::ofstream(bad / ("c" + std::to_string(c)) / ("x" + std::to_string(k) + ".png")) << "no";
  }
  const auto list = list_image_folder(bad.string());
  ImageLoaderOptions o;
  o.batch_size = 4;
  o.image_size = 64;
  DistributedSampler sampler(static_cast<int64_t>(list.entries.size()), 0, 1, true, 3);
  ImageLoader loader(list, vq_, torch::kCPU, sampler, 0, 0, o);
  const std::string msg = test::error_of([&] { loader.next(); });
  EXPECT_NE(msg.find("none of the 4 images of batch 0 (epoch 0) could be read"), std::string::npos) << msg;
  EXPECT_NE(msg.find((bad / "c").string()), std::string::npos) << msg;
}

}  // namespace
}  // namespace aim
