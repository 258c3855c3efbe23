// Code extraction end to end on a generated image tree that includes an unreadable file, a
// grayscale JPEG, a CMYK JPEG and a PNG with alpha: labels, codes, skipping, resume after an
// interruption, and sharding over ranks giving the same file as one process.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <thread>

#include "aim/core/error.h"
#include "aim/core/liveness.h"
#include "aim/data/code_dataset.h"
#include "aim/data/extract.h"
#include "aim/data/image.h"
#include "aim/data/image_folder.h"
#include "aim/model/loader.h"
#include "test_util.h"

namespace aim {
namespace {

namespace fs = std::filesystem;

const char* kMakeTree = R"PY(
import sys, os, numpy as np
from PIL import Image
root = sys.argv[1]
rng = np.random.default_rng(0)
def smooth(w, h, seed):
    r = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    chans = [np.sin(6.28 * (r.uniform(0.5, 2) * x + r.uniform(0.5, 2) * y) + r.uniform(0, 6)) for _ in range(3)]
    return ((np.stack(chans, -1) * 0.5 + 0.5) * 255).astype(np.uint8)
for c, name in enumerate(["ant", "bee", "cat"]):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    for k in range(4):
        arr = smooth(80 + 7 * k, 72 + 5 * c, 10 * c + k)
        p = os.path.join(d, f"img{k}")
        if c == 0 and k == 1:
            Image.fromarray(arr).convert("L").save(p + ".jpg", quality=95)
        elif c == 1 and k == 2:
            Image.fromarray(arr).convert("CMYK").save(p + ".jpg", quality=95)
        elif c == 2 and k == 0:
            rgba = np.concatenate([arr, rng.integers(0, 255, arr.shape[:2] + (1,), dtype=np.uint8)], -1)
            Image.fromarray(rgba).save(p + ".png")
        else:
            Image.fromarray(arr).save(p + ".png")
with open(os.path.join(root, "bee", "broken.jpg"), "wb") as f:
    f.write(b"\xff\xd8\xff\xe0 this is not a jpeg")
)PY";

class Extract : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("aim_extract_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "tree");
    const auto script = dir_ / "make_tree.py";
    std::ofstream(script) << kMakeTree;
    const std::string cmd = test::python() + " " + script.string() + " " + (dir_ / "tree").string();
    if (std::system(cmd.c_str()) != 0) GTEST_SKIP() << "python with numpy and PIL is needed to generate the images";
    const auto vq_dir = test::fixtures_dir() / "vq" / "vq16_tiny";
    vq_ = load_vq_model((vq_dir / "model.safetensors").string(), (vq_dir / "config.json").string());
    list_ = list_image_folder((dir_ / "tree").string());
  }
  void TearDown() override { fs::remove_all(dir_); }
  ExtractOptions options(const std::string& out, const std::string& aug) const {
    ExtractOptions o;
    o.out = (dir_ / out).string();
    o.aug = aug;
    o.image_size = 64;
    o.batch_size = 4;
    o.threads = 2;
    o.tokenizer_id = vq_.identity;
    o.quiet = true;
    return o;
  }
  static std::string bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), {});
  }
  fs::path dir_;
  LoadedVq vq_;
  ImageList list_;
};

TEST_F(Extract, CodesLabelsAndSkippedFiles) {
  ASSERT_EQ(list_.classes, (std::vector<std::string>{"ant", "bee", "cat"}));
  ASSERT_EQ(list_.entries.size(), 13u);
  auto report = extract_codes(vq_.model, list_, options("a.codes", "flip"));
  EXPECT_EQ(report.images, 13);
  ASSERT_EQ(report.skipped, 1);
  EXPECT_NE(report.skipped_files[0].find("broken.jpg"), std::string::npos);
  CodeDataset d((dir_ / "a.codes").string());
  EXPECT_EQ(d.info().num_aug, 2);
  EXPECT_EQ(d.info().tokens, 16);
  EXPECT_EQ(d.valid_indices().size(), 12u);
  torch::NoGradGuard no_grad;
  for (int64_t i = 0; i < d.size(); ++i) {
    const auto& e = list_.entries[i];
    if (e.path.find("broken") != std::string::npos) {
      EXPECT_EQ(d.label(i), -1);
      continue;
    }
    EXPECT_EQ(d.label(i), e.label) << e.path;
    auto expect = vq_.model->encode(extraction_views(decode_image(e.path), "flip", 64, 1.1));
    for (int64_t a = 0; a < 2; ++a) {
      const uint16_t* c = d.codes(i, a);
      for (int64_t t = 0; t < 16; ++t) ASSERT_EQ(c[t], expect[a][t].item<int64_t>()) << e.path;
    }
  }
  // The skipped file is listed next to the dataset.
  EXPECT_NE(bytes((dir_ / "a.codes.skipped.txt").string()).find("broken.jpg"), std::string::npos);
}

// Settings no image can be cropped with stop the run; they are not unreadable images to skip into
// a "finished" dataset of nothing. The CLI refuses such a --crop-range before loading anything.
TEST_F(Extract, SettingsNoImagePassesStopTheRun) {
  auto o = options("huge.codes", "tencrop");
  o.crop_range = 1e12;  // image_size x crop_range is not an int
  const auto e = test::error_of([&] { extract_codes(vq_.model, list_, o); });
  EXPECT_NE(e.find("decoded, but its views (--aug tencrop, --image-size 64) failed"), std::string::npos) << e;
  EXPECT_NE(e.find("crop_range"), std::string::npos) << e;
  for (const char* bad : {"inf", "nan", "0.5", "3"}) {
    const auto r = test::run_shell(test::aim_binary() + " extract-codes --data " + (dir_ / "tree").string() +
                                   " --vq " + (dir_ / "no_such_tokenizer").string() + " --out " +
                                   (dir_ / "c.codes").string() + " --crop-range " + bad);
    EXPECT_EQ(r.code, 1) << r.output;
    EXPECT_NE(r.output.find("--crop-range: expected a number in [1, 2] (LlamaGen: 1.1), found "), std::string::npos)
        << r.output;
    EXPECT_FALSE(fs::exists(dir_ / "c.codes")) << bad;
  }
  const auto aug = test::run_shell(test::aim_binary() + " extract-codes --data " + (dir_ / "tree").string() +
                                   " --vq " + (dir_ / "no_such_tokenizer").string() + " --out " +
                                   (dir_ / "c.codes").string() + " --aug bogus");
  EXPECT_EQ(aug.code, 1) << aug.output;
  EXPECT_EQ(aug.output.find("[extract]"), std::string::npos) << aug.output;
  EXPECT_NE(aug.output.find("--aug: expected none, flip or tencrop, found 'bogus'"), std::string::npos) << aug.output;
}

TEST_F(Extract, InterruptedRunResumesToTheSameFile) {
  extract_codes(vq_.model, list_, options("full.codes", "tencrop"));
  auto o = options("part.codes", "tencrop");
  o.max_chunks = 2;
  auto first = extract_codes(vq_.model, list_, o);
  EXPECT_FALSE(first.finished);
  EXPECT_TRUE(code_dataset_unfinished(o.out));
  o.max_chunks = 0;
  auto second = extract_codes(vq_.model, list_, o);
  EXPECT_TRUE(second.finished);
  EXPECT_EQ(second.resumed, 8);
  EXPECT_EQ(bytes(o.out), bytes((dir_ / "full.codes").string()));
  CodeDataset d(o.out);
  EXPECT_EQ(d.info().num_aug, 10);
  EXPECT_EQ(d.info().crop_range, 1.1);

  // Resumed with a larger --batch-size: a chunk only partly written before is redone, not
  // skipped (it once was, leaving images of label 0 and all-zero codes in the finished file).
  auto p = options("batch.codes", "tencrop");
  p.max_chunks = 1;  // images 0-3
  extract_codes(vq_.model, list_, p);
  p.max_chunks = 0;
  p.batch_size = 8;  // chunk 0-7 is not all done
  auto grown = extract_codes(vq_.model, list_, p);
  EXPECT_TRUE(grown.finished);
  EXPECT_EQ(grown.resumed, 0);
  EXPECT_EQ(bytes(p.out), bytes((dir_ / "full.codes").string()));

  // Another crop range or image size is refused, for an unfinished file and a finished one.
  auto q = options("crop.codes", "tencrop");
  q.max_chunks = 1;
  extract_codes(vq_.model, list_, q);
  q.max_chunks = 0;
  q.crop_range = 1.3;
  EXPECT_NE(test::error_of([&] { extract_codes(vq_.model, list_, q); })
                .find("started with other settings: crop range 1.1 in the file, 1.3 in this run"),
            std::string::npos);
  auto r = options("full.codes", "tencrop");
  r.image_size = 32;
  EXPECT_NE(test::error_of([&] { extract_codes(vq_.model, list_, r); })
                .find("full.codes: exists with other settings: image size 64 in the file, 32 in this run"),
            std::string::npos);
}

// A retrained tokenizer has the same file name and size as the old one; its weights' digest
// tells them apart, so the old tokenizer's codes are neither reused nor resumed.
TEST_F(Extract, ARetrainedTokenizerDoesNotReuseTheOldCodes) {
  extract_codes(vq_.model, list_, options("a.codes", "none"));
  const auto retrained = dir_ / "retrained";
  fs::create_directories(retrained);
  const auto vq_dir = test::fixtures_dir() / "vq" / "vq16_tiny";
  auto bytes_of = bytes((vq_dir / "model.safetensors").string());
  bytes_of[bytes_of.size() - 1] ^= 0x01;  // the last weight's lowest bits: same size
  std::ofstream((retrained / "model.safetensors").string(), std::ios::binary) << bytes_of;
  auto other = load_vq_model((retrained / "model.safetensors").string(), (vq_dir / "config.json").string());
  EXPECT_NE(other.identity, vq_.identity);
  EXPECT_NE(other.identity.find("fnv64 "), std::string::npos) << other.identity;
  auto o = options("a.codes", "none");
  o.tokenizer_id = other.identity;
  try {
    extract_codes(other.model, list_, o);
    FAIL() << "codes of another tokenizer were reused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("exists with other settings: tokenizer model.safetensors"), std::string::npos)
        << e.what();
  }
}

TEST_F(Extract, ShardsOverRanksMergeToTheSingleProcessFile) {
  extract_codes(vq_.model, list_, options("one.codes", "none"));
  auto o = options("two.codes", "none");
  o.world_size = 3;
  for (int r : {2, 1, 0}) {  // rank 0 merges once the others are finished
    o.rank = r;
    extract_codes(vq_.model, list_, o);
  }
  EXPECT_EQ(bytes(o.out), bytes((dir_ / "one.codes").string()));
  EXPECT_FALSE(fs::exists(o.out + ".shard-1-of-3"));
}

// Nor for a rank that was killed outright (no failure marker): its heartbeat beside its shard
// goes quiet. A rank that is slow but alive is waited for.
TEST_F(Extract, RankZeroStopsForAQuietRankAndWaitsForASlowOne) {
  struct ScopedSilence {
    ScopedSilence() { ::setenv("AIM_RANK_SILENCE_S", "0.5", 1); }
    ~ScopedSilence() { ::unsetenv("AIM_RANK_SILENCE_S"); }
  } silence;
  auto o = options("quiet.codes", "none");
  o.world_size = 2;
  o.rank = 0;
  // Rank 1 never started: no heartbeat appears.
  const auto never = test::error_of([&] { extract_codes(vq_.model, list_, o); });
  EXPECT_NE(never.find("quiet.codes: rank 1 has not been heard from for "), std::string::npos) << never;
  EXPECT_NE(never.find("(no heartbeat " + o.out + ".shard-1-of-2.alive appeared) and its shard "), std::string::npos)
      << never;
  // Rank 1 killed while encoding: its heartbeat stays as it last was.
  o.rank = 1;
  o.max_chunks = 1;
  extract_codes(vq_.model, list_, o);  // an unfinished shard, as a killed rank leaves it
  fs::remove(o.out + ".shard-1-of-2.stopped");
  {
    std::ofstream(o.out + ".shard-1-of-2.alive") << "7 node3 pid 4242\n";
  }
  o.rank = 0;
  o.max_chunks = 0;
  const auto killed = test::error_of([&] { extract_codes(vq_.model, list_, o); });
  EXPECT_NE(killed.find("rank 1 has not been heard from"), std::string::npos) << killed;
  EXPECT_NE(killed.find("(its heartbeat " + o.out + ".shard-1-of-2.alive has not changed)"), std::string::npos) << killed;
  EXPECT_FALSE(fs::exists(o.out));
  // Rank 1 alive: beating for three silence limits before it encodes the rest; rank 0 waits, merges.
  std::thread rank1([&] {
    auto o1 = o;
    o1.rank = 1;
    {
      Heartbeat beat(o.out + ".shard-1-of-2.alive");
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    }
    extract_codes(vq_.model, list_, o1);
  });
  bool merged = false;
  const auto waited = test::error_of([&] { merged = extract_codes(vq_.model, list_, o).finished; });
  rank1.join();
  EXPECT_TRUE(waited.empty()) << waited;
  EXPECT_TRUE(merged);
  EXPECT_TRUE(fs::exists(o.out));
  EXPECT_FALSE(fs::exists(o.out + ".shard-1-of-2.alive"));
}

// Rank 0 does not wait a day for a rank that stopped with an error: the rank leaves its message
// beside its shard and rank 0 names it. Nor does it merge shards made with other settings.
TEST_F(Extract, RankZeroNamesAFailedRankAndRefusesMixedShards) {
  auto o = options("failed.codes", "none");
  o.world_size = 2;
  o.stopped_grace_s = 0;
  o.rank = 1;
  o.max_chunks = 1;
  extract_codes(vq_.model, list_, o);  // rank 1 stops early: its shard is unfinished
  ImageList changed = list_;
  std::swap(changed.entries[7], changed.entries[8]);
  o.max_chunks = 0;
  const auto own = test::error_of([&] { extract_codes(vq_.model, changed, o); });
  EXPECT_NE(own.find("started on another image list"), std::string::npos) << own;
  EXPECT_TRUE(fs::exists(o.out + ".shard-1-of-2.failed"));
  o.rank = 0;
  const auto named = test::error_of([&] { extract_codes(vq_.model, list_, o); });
  EXPECT_NE(named.find("failed.codes: rank 1 stopped with an error, so its shard "), std::string::npos) << named;
  EXPECT_NE(named.find("started on another image list"), std::string::npos) << named;
  // Rank 1 starting again removes its marker; the run then merges.
  o.rank = 1;
  EXPECT_TRUE(extract_codes(vq_.model, list_, o).finished);
  EXPECT_FALSE(fs::exists(o.out + ".shard-1-of-2.failed"));
  o.rank = 0;
  EXPECT_TRUE(extract_codes(vq_.model, list_, o).finished);
  EXPECT_TRUE(fs::exists(o.out));

  // Shard 1 of flipped views, shard 0 of single views: not merged into one file.
  auto m = options("mixed.codes", "flip");
  m.world_size = 2;
  m.rank = 1;
  extract_codes(vq_.model, list_, m);
  auto n = options("mixed.codes", "none");
  n.world_size = 2;
  n.rank = 0;
  const auto mixed = test::error_of([&] { extract_codes(vq_.model, list_, n); });
  EXPECT_NE(mixed.find("was made with other settings than"), std::string::npos) << mixed;
  EXPECT_NE(mixed.find("aug flip in the file, none in this run"), std::string::npos) << mixed;
  EXPECT_FALSE(fs::exists(n.out));
}

// A launch with another number of ranks (a re-run after a time limit, on the nodes a scheduler
// gave this time) copies the chunks the earlier launch's shards finished instead of encoding them
// again, also across that launch's shard boundaries; the file is the single-process one, the
// earlier shards go once it is finished, and an image found unreadable before is skipped again.
TEST_F(Extract, AnotherRankCountReusesTheFinishedChunks) {
  extract_codes(vq_.model, list_, options("one.codes", "none"));
  const std::string one = bytes((dir_ / "one.codes").string());
  auto shard_files = [&](const std::string& out) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_))
      if (e.path().filename().string().rfind(out + ".shard-", 0) == 0) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  };
  // Three ranks stop after one chunk of 4: ranks 0 and 1 finish (images 0-3 and 4-7; 4 is the
  // unreadable bee/broken.jpg), rank 2 does 8-11 of its 8-12, so nothing is merged.
  auto stopped_launch = [&](const std::string& out) {
    auto o = options(out, "none");
    o.world_size = 3;
    o.max_chunks = 1;
    o.stopped_grace_s = 0;
    for (int r : {2, 1, 0}) {
      o.rank = r;
      // (Rank 0's report says unfinished: it merged nothing.)
      EXPECT_EQ(extract_codes(vq_.model, list_, o).finished, r == 1) << "rank " << r;
    }
    EXPECT_FALSE(fs::exists(o.out));
    EXPECT_TRUE(code_dataset_unfinished(o.out + ".shard-2-of-3"));
    return shard_files(out).size();
  };
  ASSERT_NE(list_.entries[4].path.find("broken.jpg"), std::string::npos);

  // Two ranks: rank 0 (images 0-5) copies 0-3 and 4-5 from two shards; rank 1 (6-12) copies 6-9
  // across the earlier shards' boundary and encodes 10-12.
  stopped_launch("two.codes");
  auto o = options("two.codes", "none");
  o.world_size = 2;
  o.rank = 1;
  auto r1 = extract_codes(vq_.model, list_, o);
  EXPECT_EQ(r1.resumed, 4);
  EXPECT_EQ(r1.skipped, 0);
  o.rank = 0;
  o.batch_size = 2;  // chunks of another size than the earlier ones
  auto r0 = extract_codes(vq_.model, list_, o);
  EXPECT_TRUE(r0.finished);
  EXPECT_EQ(r0.resumed, 6);
  ASSERT_EQ(r0.skipped, 1);
  EXPECT_NE(r0.skipped_files[0].find("broken.jpg"), std::string::npos);
  EXPECT_EQ(bytes(o.out), one);
  EXPECT_EQ(shard_files("two.codes"), std::vector<std::string>{}) << "an earlier launch's shards remain";
  EXPECT_NE(bytes(o.out + ".skipped.txt").find("broken.jpg"), std::string::npos);

  // One process copies 0-11 and encodes 12.
  stopped_launch("single.codes");
  auto s = options("single.codes", "none");
  auto all = extract_codes(vq_.model, list_, s);
  EXPECT_TRUE(all.finished);
  EXPECT_EQ(all.resumed, 12);
  EXPECT_EQ(all.skipped, 1);
  EXPECT_EQ(bytes(s.out), one);
  EXPECT_EQ(shard_files("single.codes"), std::vector<std::string>{});

  // Two ranks continue what one process started (its first two chunks, images 0-7): rank 0
  // copies its share 0-5, and the merge writes the output over the unfinished file.
  auto p = options("continued.codes", "none");
  p.max_chunks = 2;
  EXPECT_FALSE(extract_codes(vq_.model, list_, p).finished);
  p.max_chunks = 0;
  p.world_size = 2;
  p.rank = 1;
  EXPECT_EQ(extract_codes(vq_.model, list_, p).resumed, 0);  // 6-12: chunk 6-9 is not all done
  p.rank = 0;
  const auto continued = extract_codes(vq_.model, list_, p);
  EXPECT_TRUE(continued.finished);
  EXPECT_EQ(continued.resumed, 6);
  EXPECT_EQ(bytes(p.out), one);
  EXPECT_FALSE(code_dataset_unfinished(p.out));
  EXPECT_FALSE(fs::exists(p.out + ".list"));
  EXPECT_EQ(shard_files("continued.codes"), std::vector<std::string>{});

  // Shards of other settings are not copied from (and stay until the dataset is finished).
  const size_t earlier_files = stopped_launch("flip.codes");
  auto f = options("flip.codes", "flip");
  f.max_chunks = 1;
  testing::internal::CaptureStderr();
  f.quiet = false;
  auto other = extract_codes(vq_.model, list_, f);
  const std::string said = testing::internal::GetCapturedStderr();
  EXPECT_EQ(other.resumed, 0);
  EXPECT_NE(said.find("not reusing"), std::string::npos) << said;
  EXPECT_NE(said.find("aug none in the file, flip in this run"), std::string::npos) << said;
  EXPECT_EQ(shard_files("flip.codes").size(), earlier_files);

  // Nor shards of another image list of the same size (an image replaced): each file records the
  // list it was started on, and a resume on another list is refused.
  const size_t list_files = stopped_launch("list.codes");
  ImageList changed = list_;
  std::swap(changed.entries[0], changed.entries[1]);  // two images of class 0 trade places
  auto c = options("list.codes", "none");
  c.max_chunks = 1;
  c.quiet = false;
  testing::internal::CaptureStderr();
  const auto moved = extract_codes(vq_.model, changed, c);
  const std::string told = testing::internal::GetCapturedStderr();
  EXPECT_EQ(moved.resumed, 0);
  EXPECT_NE(told.find("started on another image list (13 images, fnv64 "), std::string::npos) << told;
  EXPECT_EQ(shard_files("list.codes").size(), list_files);
  c.quiet = true;
  const auto refused = test::error_of([&] { extract_codes(vq_.model, list_, c); });
  EXPECT_NE(refused.find("list.codes: the unfinished extraction was started on another image list"), std::string::npos)
      << refused;
}

}  // namespace
}  // namespace aim

namespace aim {
namespace {

TEST(ImageList, FileListsResolvePathsAndNameBadLines) {
  namespace fs = std::filesystem;
  const auto dir = fs::temp_directory_path() / ("aim_list_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "train.txt") << "# comment\na/x.jpg 3\n\n/abs/y.png 0\n";
  auto list = read_image_list((dir / "train.txt").string());
  ASSERT_EQ(list.entries.size(), 2u);
  EXPECT_EQ(list.entries[0].path, (dir / "a/x.jpg").string());
  EXPECT_EQ(list.entries[0].label, 3);
  EXPECT_EQ(list.entries[1].path, "/abs/y.png");
  EXPECT_EQ(list.classes.size(), 4u);
  std::ofstream(dir / "bad.txt") << "a.jpg 1\nb.jpg cat\n";
  try {
    read_image_list((dir / "bad.txt").string());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.txt:2"), std::string::npos) << e.what();
  }
  std::ofstream(dir / "names.txt") << "zero\none\n";
  try {
    read_image_list((dir / "train.txt").string(), (dir / "names.txt").string());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("uses label 3"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace aim
