// The memory-mapped code dataset, its writer (including resume), the distributed sampler's
// invariants and the prefetching loader.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <utility>

#include "aim/core/error.h"
#include "aim/data/code_dataset.h"
#include "aim/data/code_loader.h"
#include "aim/data/sampler.h"
#include "test_util.h"

#include <nlohmann/json.hpp>

namespace aim {
namespace {

namespace fs = std::filesystem;

class CodeDatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("aim_codes_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  static CodeDatasetInfo info(int64_t n, int64_t a, int64_t t) {
    CodeDatasetInfo i;
    i.num_samples = n;
    i.num_aug = a;
    i.tokens = t;
    i.vocab_size = 512;
    i.image_size = 64;
    i.aug = a == 1 ? "none" : "flip";
    i.classes = {"cat", "dog", "owl"};
    i.tokenizer = "vq.safetensors 1234 bytes";
    i.source = "test";
    return i;
  }
  fs::path dir_;
};


TEST_F(CodeDatasetTest, RoundTripAndGather) {
  torch::manual_seed(0);
  const int64_t n = 37, a = 3, t = 16;
  auto codes = torch::randint(512, {n, a, t}, torch::kLong);
  auto labels = torch::randint(3, {n}, torch::kLong);
  {
    auto w = CodeDatasetWriter::create(path("d.codes"), info(n, a, t));
    w->write(20, codes.narrow(0, 20, 17), labels.narrow(0, 20, 17));  // any order
    w->write(0, codes.narrow(0, 0, 20), labels.narrow(0, 0, 20));
    w->sync();
  }
  EXPECT_NE(test::error_of([&] { CodeDataset d(path("d.codes")); }).find("unfinished"), std::string::npos);
  code_dataset_mark_finished(path("d.codes"));
  CodeDataset d(path("d.codes"));
  EXPECT_EQ(d.size(), n);
  EXPECT_EQ(d.info().classes, (std::vector<std::string>{"cat", "dog", "owl"}));
  EXPECT_EQ(d.info().codes_offset % 64, 0);
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_EQ(d.label(i), labels[i].item<int64_t>());
    for (int64_t k = 0; k < a; ++k) {
      const uint16_t* c = d.codes(i, k);
      for (int64_t j = 0; j < t; ++j) ASSERT_EQ(c[j], codes[i][k][j].item<int64_t>());
    }
  }
  torch::Tensor bc, bl;
  d.gather({5, 0, 36}, {2, 0, 1}, bc, bl);
  EXPECT_TRUE(torch::equal(bc[0], codes[5][2]));
  EXPECT_TRUE(torch::equal(bc[2], codes[36][1]));
  EXPECT_EQ(bl[1].item<int64_t>(), labels[0].item<int64_t>());
}

TEST_F(CodeDatasetTest, ResumeContinuesTheSameFile) {
  const int64_t n = 10, a = 2, t = 8;
  auto codes = torch::randint(512, {n, a, t}, torch::kLong);
  auto labels = torch::randint(3, {n}, torch::kLong);
  CodeDatasetWriter::create(path("r.codes"), info(n, a, t))->write(0, codes.narrow(0, 0, 4), labels.narrow(0, 0, 4));
  EXPECT_TRUE(code_dataset_unfinished(path("r.codes")));
  auto other = info(n, a, t);
  other.aug = "tencrop";
  EXPECT_NE(test::error_of([&] { CodeDatasetWriter::resume(path("r.codes"), other); })
                .find("started with other settings: aug flip in the file, tencrop in this run"),
            std::string::npos);
  // A copy taken now, without its progress sidecar (copied alone to a node's disk, or linked),
  // once read its six unwritten images as class 0 with zero codes: its header refuses it.
  fs::copy_file(path("r.codes"), path("copy.codes"));
  const std::string copied = test::error_of([&] { CodeDataset d(path("copy.codes")); });
  EXPECT_NE(copied.find("copy.codes: an unfinished extraction (its header says so)"), std::string::npos) << copied;
  EXPECT_NE(copied.find("copy.codes.progress is not beside it"), std::string::npos) << copied;
  EXPECT_EQ(CodeDataset(path("copy.codes"), /*allow_unfinished=*/true).size(), n);
  CodeDatasetWriter::resume(path("r.codes"), info(n, a, t))->write(4, codes.narrow(0, 4, 6), labels.narrow(0, 4, 6));
  code_dataset_mark_finished(path("r.codes"));
  EXPECT_FALSE(code_dataset_unfinished(path("r.codes")));
  fs::copy_file(path("r.codes"), path("copy.codes"), fs::copy_options::overwrite_existing);
  EXPECT_EQ(CodeDataset(path("copy.codes")).size(), n);  // the finished file's copy reads
  code_dataset_mark_finished(path("r.codes"));          // (again: nothing changes)
  EXPECT_EQ(test::read_bytes(path("r.codes")), test::read_bytes(path("copy.codes")));
  CodeDataset d(path("r.codes"));
  torch::Tensor bc, bl;
  d.gather({0, 9}, {1, 1}, bc, bl);
  EXPECT_TRUE(torch::equal(bc[0], codes[0][1]));
  EXPECT_TRUE(torch::equal(bc[1], codes[9][1]));
}

TEST_F(CodeDatasetTest, CorruptFilesAreClearErrors) {
  const int64_t n = 4, a = 1, t = 8;
  CodeDatasetWriter::create(path("ok.codes"), info(n, a, t))->write(0, torch::zeros({n, a, t}), torch::zeros({n}));
  code_dataset_mark_finished(path("ok.codes"));
  std::ifstream in(path("ok.codes"), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  auto write = [&](const std::string& name, const std::string& data) {
    std::ofstream(path(name), std::ios::binary) << data;
    return path(name);
  };
  auto msg = test::error_of([&] { CodeDataset d(write("trunc.codes", bytes.substr(0, bytes.size() - 3))); });
  EXPECT_NE(msg.find("trunc.codes"), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  msg = test::error_of([&] { CodeDataset d(write("magic.codes", "NOTCODES" + bytes.substr(8))); });
  EXPECT_NE(msg.find("magic"), std::string::npos) << msg;
  std::string huge = bytes;
  for (int b = 8; b < 16; ++b) huge[b] = '\xff';
  msg = test::error_of([&] { CodeDataset d(write("huge.codes", huge)); });
  EXPECT_NE(msg.find("header length"), std::string::npos) << msg;
  msg = test::error_of([&] { CodeDataset d(write("empty.codes", "")); });
  EXPECT_NE(msg.find("empty"), std::string::npos) << msg;
  std::string badjson = bytes;
  badjson[16] = '[';
  msg = test::error_of([&] { CodeDataset d(write("json.codes", badjson)); });
  EXPECT_NE(msg.find("json.codes"), std::string::npos) << msg;
  msg = test::error_of([&] {
    CodeDatasetWriter::create(path("v.codes"), info(n, a, t))->write(0, torch::full({n, a, t}, 600), torch::zeros({n}));
  });
  EXPECT_NE(msg.find("codes outside [0, 512)"), std::string::npos) << msg;
  // A label beyond the header's three classes (the message once read the label after unmapping
  // the file, and crashed).
  CodeDatasetWriter::create(path("label.codes"), info(n, a, t))
      ->write(0, torch::zeros({n, a, t}), torch::tensor({0, 1, 3, 2}));
  code_dataset_mark_finished(path("label.codes"));
  msg = test::error_of([&] { CodeDataset d(path("label.codes")); });
  EXPECT_NE(msg.find("label.codes: sample 2 has label 3, expected < 3"), std::string::npos) << msg;
  // A code beyond the header's codebook (a damaged file) is named when read, not left to index
  // past the model's embedding: codes of 300 written under a 512-entry codebook, the header's
  // size then changed to 256 (same width, so the layout holds).
  auto oov = torch::zeros({n, a, t});
  oov[2][0][5] = 300;
  CodeDatasetWriter::create(path("oov.codes"), info(n, a, t))->write(0, oov, torch::zeros({n}));
  code_dataset_mark_finished(path("oov.codes"));
  std::ifstream oov_in(path("oov.codes"), std::ios::binary);
  std::string oov_bytes((std::istreambuf_iterator<char>(oov_in)), {});
  const auto at = oov_bytes.find("\"vocab_size\":512");
  ASSERT_NE(at, std::string::npos);
  oov_bytes.replace(at, 16, "\"vocab_size\":256");
  const CodeDataset damaged(write("oov.codes", oov_bytes));
  torch::Tensor codes, labels;
  damaged.gather({0, 1}, {0, 0}, codes, labels);  // clean images read as before
  msg = test::error_of([&] { damaged.gather({1, 2}, {0, 0}, codes, labels); });
  EXPECT_NE(msg.find("oov.codes: image 2 (view 0) holds code 300 at token 5, outside the file's codebook [0, 256)"),
            std::string::npos) << msg;
  // Header values whose sums or products overflow int64 passed the checks and were read far
  // outside the mapping; each is named as the file's inconsistency instead.
  auto with_header = [&](const std::string& name, const std::function<void(nlohmann::json&)>& edit) {
    uint64_t len = 0;
    for (int b = 0; b < 8; ++b) len |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[8 + b])) << (8 * b);
    auto header = nlohmann::json::parse(bytes.substr(16, len));
    edit(header);
    std::string text = header.dump();
    EXPECT_LE(text.size(), len);
    text.resize(len, ' ');
    return write(name, bytes.substr(0, 16) + text + bytes.substr(16 + len));
  };
  const std::vector<std::pair<std::string, std::function<void(nlohmann::json&)>>> overflowing{
      {"labels_far.codes", [](nlohmann::json& h) { h["labels_offset"] = INT64_MAX - 1; }},
      {"codes_far.codes", [](nlohmann::json& h) { h["codes_offset"] = INT64_MAX - 63; }},
      {"codes_product.codes",
       [](nlohmann::json& h) {
         h["num_samples"] = int64_t{1} << 40;
         h["num_aug"] = 4096;
         h["tokens"] = 65536;
       }},
      {"labels_before.codes", [](nlohmann::json& h) { h["labels_offset"] = 16; }},
  };
  for (const auto& [name, edit] : overflowing) {
    msg = test::error_of([&] { CodeDataset d(with_header(name, edit)); });
    EXPECT_NE(msg.find(name + ": inconsistent offsets"), std::string::npos) << name << ": " << msg;
  }
  msg = test::error_of([&] { CodeDataset d(with_header("vocab0.codes", [](nlohmann::json& h) { h["vocab_size"] = 0; })); });
  EXPECT_NE(msg.find("vocab0.codes: vocab_size 0 does not fit"), std::string::npos) << msg;
}

TEST_F(CodeDatasetTest, ImageNetSizedFileLoadsInConstantMemory) {
  // 1.28M images x 10 crops x 256 codes: 6.5 GB, sparse on disk.
  auto i = info(1281167, 10, 256);
  i.vocab_size = 16384;
  CodeDatasetWriter::create(path("big.codes"), i)->write(1281166, torch::ones({1, 10, 256}), torch::ones({1}));
  code_dataset_mark_finished(path("big.codes"));
  auto rss = [] {
    std::ifstream statm("/proc/self/statm");
    int64_t size = 0, resident = 0;
    statm >> size >> resident;
    return resident * ::sysconf(_SC_PAGESIZE);
  };
  const int64_t before = rss();
  CodeDataset d(path("big.codes"));
  EXPECT_EQ(d.size(), 1281167);
  DistributedSampler sampler(d.size(), 0, 1, true, 1);
  auto order = sampler.indices(0);
  torch::Tensor bc, bl;
  for (int step = 0; step < 20; ++step) {
    std::vector<int64_t> idx(order.begin() + step * 256, order.begin() + (step + 1) * 256);
    d.gather(idx, std::vector<int64_t>(idx.size(), step % 10), bc, bl);
  }
  d.gather({1281166}, {9}, bc, bl);
  EXPECT_EQ(bc[0][255].item<int64_t>(), 1);
  const int64_t grown = rss() - before;
  std::printf("    6.5 GB dataset opened, 5121 samples read: resident memory grew by %.1f MB\n", grown / 1e6);
  EXPECT_LT(grown, 200ll << 20);
}

TEST(DistributedSampler, EverySampleOncePerEpochAcrossRanks) {
  for (int64_t n : {12, 103}) {
    for (int64_t world : {1, 2, 3, 4}) {
      std::multiset<int64_t> seen;
      for (int64_t r = 0; r < world; ++r) {
        DistributedSampler s(n, r, world, true, 42);
        auto idx = s.indices(3);
        EXPECT_EQ(static_cast<int64_t>(idx.size()), n / world);
        EXPECT_EQ(idx, s.indices(3));  // deterministic
        seen.insert(idx.begin(), idx.end());
      }
      std::set<int64_t> unique(seen.begin(), seen.end());
      EXPECT_EQ(unique.size(), seen.size()) << "duplicate across ranks, n " << n << " world " << world;
      EXPECT_EQ(static_cast<int64_t>(seen.size()), n / world * world);
      if (n % world == 0) EXPECT_EQ(static_cast<int64_t>(unique.size()), n);
    }
  }
  DistributedSampler s(103, 0, 1, true, 42);
  EXPECT_NE(s.indices(0), s.indices(1));
  DistributedSampler plain(10, 1, 2, false, 0);
  EXPECT_EQ(plain.indices(5), (std::vector<int64_t>{1, 3, 5, 7, 9}));
  // Augmentations depend on (seed, epoch, sample) only, and use every choice.
  DistributedSampler other(103, 1, 4, true, 42);
  std::set<int64_t> augs;
  for (int64_t i = 0; i < 103; ++i) {
    EXPECT_EQ(s.augmentation(i, 2, 10), other.augmentation(i, 2, 10));
    augs.insert(s.augmentation(i, 2, 10));
  }
  EXPECT_EQ(augs.size(), 10u);
}

TEST_F(CodeDatasetTest, LoaderServesTheRanksBatchesAndResumes) {
  const int64_t n = 50, a = 2, t = 4;
  auto codes = torch::randint(512, {n + 3, a, t}, torch::kLong);
  auto labels = torch::randint(3, {n + 3}, torch::kLong);
  // Three unreadable images, marked -1, are never served.
  labels[4] = -1;
  labels[17] = -1;
  labels[52] = -1;
  CodeDatasetWriter::create(path("l.codes"), info(n + 3, a, t))->write(0, codes, labels);
  code_dataset_mark_finished(path("l.codes"));
  auto d = std::make_shared<const CodeDataset>(path("l.codes"));
  ASSERT_EQ(static_cast<int64_t>(d->valid_indices().size()), n);
  DistributedSampler sampler(n, 1, 2, true, 7);
  CodeLoader loader(d, sampler, 4, 2);
  EXPECT_EQ(loader.batches_per_epoch(), 6);  // 25 per rank, last partial batch dropped
  auto order = sampler.indices(2);
  for (auto& i : order) i = d->valid_indices()[i];
  std::vector<CodeBatch> all;
  while (auto b = loader.next()) all.push_back(*b);
  ASSERT_EQ(all.size(), 6u);
  for (int64_t k = 0; k < 6; ++k) {
    EXPECT_EQ(all[k].batch, k);
    for (int64_t j = 0; j < 4; ++j) {
      const int64_t i = order[k * 4 + j];
      EXPECT_EQ(all[k].labels[j].item<int64_t>(), labels[i].item<int64_t>());
      EXPECT_TRUE(torch::equal(all[k].codes[j], codes[i][sampler.augmentation(i, 2, a)]));
    }
  }
  CodeLoader resumed(d, sampler, 4, 2, 4);
  auto b4 = resumed.next();
  ASSERT_TRUE(b4.has_value());
  EXPECT_EQ(b4->batch, 4);
  EXPECT_TRUE(torch::equal(b4->codes, all[4].codes));
}

}  // namespace
}  // namespace aim
