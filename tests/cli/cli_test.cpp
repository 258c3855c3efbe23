// The `aim` executable as a user runs it: output, error messages and exit codes.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>
#include <sys/wait.h>
#include <unistd.h>

#include "aim/core/safetensors.h"
#include "aim/data/code_dataset.h"
#include "aim/data/image.h"
#include "test_util.h"

namespace aim {
namespace {

test::RunResult run_aim(const std::string& args) {
  return test::run_shell(test::aim_binary() + " " + args);
}

std::string src(const std::string& rel) { return test::source_dir() + "/" + rel; }

TEST(Cli, InfoPrintsTheOfficialTotals) {
  const std::pair<const char*, const char*> sizes[] = {
      {"aim_b", "147,622,080"}, {"aim_l", "349,760,000"}, {"aim_xl", "763,291,392"},
      {"aim_1b", "1,335,944,192"}};
  for (const auto& [name, total] : sizes) {
    auto r = run_aim("info " + src(std::string("configs/") + name + ".yaml"));
    EXPECT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find(total), std::string::npos) << name << "\n" << r.output;
  }
  auto r = run_aim("info " + src("configs/aim_l.yaml"));
  EXPECT_NE(r.output.find("adaLN-group, G = 4"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("sampling: state per image"), std::string::npos) << r.output;
  // Sampling memory counts the tokenizer too (LlamaGen's VQ-16: 71,883,403 parameters).
  EXPECT_NE(r.output.find("sampling: tokenizer weights          274.21 MiB (71.88M, fp32)"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("sampling: 16 images in all"), std::string::npos) << r.output;
}

TEST(Cli, InfoDescribesTokenizerConfigs) {
  // configs/vq_16.yaml is LlamaGen's VQ-16: its official total (shared/fixtures/official_layout).
  auto r = run_aim("info " + src("configs/vq_16.yaml"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("total                                71,883,403 (71.88M)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("256 px -> 16x16 = 256 codes"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("+ LPIPS x 1 "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("PatchGAN x 0.5 from step 20000"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("LPIPS (VGG16, fixed)                 14,716,160 parameters"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("d_model"), std::string::npos) << "not an AiM summary\n" << r.output;
  r = run_aim("info " + src("configs/vq_demo.yaml") + " --set data.image_size=32");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("8: 32 px -> 4x4 = 16 codes"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("LPIPS"), std::string::npos) << r.output;
  r = run_aim("info " + src("configs/vq_demo.yaml") + " --set vq_train.perceptual_weight=1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("key 'vq_train.lpips'"), std::string::npos) << r.output;
  // A tokenizer's weights: its folder with config.json, or NAME.safetensors beside NAME.json (as
  // tools/convert_checkpoint.py writes LlamaGen's VQ), checked against that config.
  namespace fs = std::filesystem;
  const fs::path vq = test::fixtures_dir() / "vq" / "vq16_tiny";
  r = run_aim("info " + vq.string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("tokenizer (LlamaGen's VQ architecture)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("total                                1,611,147"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("tensors, matching the config)"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("training"), std::string::npos) << "no training settings to show\n" << r.output;
  const auto dir = fs::temp_directory_path() / ("aim_cli_vq_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy_file(vq / "model.safetensors", dir / "vq.safetensors");
  fs::copy_file(vq / "config.json", dir / "vq.json");
  r = run_aim("info " + (dir / "vq.safetensors").string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("config: " + (dir / "vq.json").string()), std::string::npos) << r.output;
  fs::copy_file(src("configs/fixture_tiny_vq.json"), dir / "vq.json", fs::copy_options::overwrite_existing);
  r = run_aim("info " + (dir / "vq.safetensors").string());
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("the tokenizer weights do not match the tokenizer configuration"), std::string::npos)
      << r.output;
  // A tokenizer's JSON alone, or given to bare weights with --config (it was read as an AiM
  // config.json and refused for its fields).
  r = run_aim("info " + (vq / "config.json").string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("tokenizer (LlamaGen's VQ architecture)"), std::string::npos) << r.output;
  fs::copy_file(vq / "model.safetensors", dir / "bare.safetensors");
  r = run_aim("info " + (dir / "bare.safetensors").string() + " --config " + (vq / "config.json").string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("tensors, matching the config)"), std::string::npos) << r.output;
  fs::remove_all(dir);
}

TEST(Cli, InfoReadsAnOfficialSnapshotDirectory) {
  auto dir = test::fixtures_dir() / "aim" / "mamba2_tiny";
  auto r = run_aim("info " + dir.string());
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("config.json"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("language-model parameters"), std::string::npos) << r.output;
  // The weights file itself (config.json beside it).
  r = run_aim("info " + (dir / "model.safetensors").string());
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("184416 language-model parameters"), std::string::npos) << r.output;
  // Its architecture is the checkpoint's: --set would have been ignored, so it is refused.
  r = run_aim("info " + dir.string() + " --set model.n_layer=24");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("--set model.n_layer=24: " + dir.string() + " is a checkpoint"), std::string::npos)
      << r.output;
  // A weights file with no config beside it: the message names aim info's own --config, which reads it.
  namespace fs = std::filesystem;
  const auto bare = fs::temp_directory_path() / ("aim_cli_bare_" + std::to_string(::getpid()));
  fs::remove_all(bare);
  fs::create_directories(bare);
  fs::copy_file(dir / "model.safetensors", bare / "w.safetensors");
  r = run_aim("info " + (bare / "w.safetensors").string());
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("aim info " + (bare / "w.safetensors").string() + ": a bare weights file needs --config"),
            std::string::npos) << r.output;
  r = run_aim("info " + (bare / "w.safetensors").string() + " --config " + (dir / "config.json").string());
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("184416 language-model parameters"), std::string::npos) << r.output;
  r = run_aim("info " + src("configs/aim_l.yaml") + " --config " + (dir / "config.json").string());
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("is a config itself"), std::string::npos) << r.output;
  // With another model's config the weights are checked against it, by key and shape.
  r = run_aim("info " + (bare / "w.safetensors").string() + " --config " + src("configs/aim_demo.yaml"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("the weights do not match the config " + src("configs/aim_demo.yaml")), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("  shape mismatch: mamba.backbone.layers.0.mixer.in_proj.weight: checkpoint [296, 64], "
                          "config [1624, 384]"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("more (50 in all)"), std::string::npos) << r.output;
  // A tied weight stored once under the lm_head name is what the loader takes, so is it here.
  {
    std::vector<std::pair<std::string, torch::Tensor>> once;
    for (const auto& [k, v] : load_safetensors((dir / "model.safetensors").string()))
      if (k != "mamba.backbone.embeddings.word_embeddings.weight") once.emplace_back(k, v);
    save_safetensors((bare / "once.safetensors").string(), once);
  }
  r = run_aim("info " + (bare / "once.safetensors").string() + " --config " + (dir / "config.json").string());
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("184416 language-model parameters"), std::string::npos) << r.output;
  // A pickle (what the official repositories ship) is named as one, with the conversion.
  {
    std::ofstream f(bare / "pytorch_model.bin", std::ios::binary);
    f << "PK\x03\x04 a zip archive, as torch.save writes";
  }
  r = run_aim("info " + (bare / "pytorch_model.bin").string());
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("pytorch_model.bin: a PyTorch pickle (torch.save"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("tools/convert_checkpoint.py " + (bare / "pytorch_model.bin").string()), std::string::npos)
      << r.output;
  fs::rename(bare / "pytorch_model.bin", bare / "renamed.safetensors");
  r = run_aim("info " + (bare / "renamed.safetensors").string() + " --config " + (dir / "config.json").string());
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("renamed.safetensors: a PyTorch pickle"), std::string::npos) << r.output;
  fs::remove_all(bare);
}

// --set takes one value: a config path after it is the config, not a second override.
TEST(Cli, SetTakesOneValueSoTheConfigMayFollowIt) {
  auto r = run_aim("info --set model.n_layer=24 " + src("configs/aim_l.yaml"));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("1024 x 24"), std::string::npos) << r.output;
  // The config was read: the run stops at its (missing) data, not at "no config given".
  r = run_aim("train --set data.codes=/nonexistent/a.codes " + src("configs/tiny.yaml") + " --out /nonexistent/run");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_EQ(r.output.find("no config given"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("data.codes /nonexistent/a.codes: no such file"), std::string::npos) << r.output;
  r = run_aim("info " + (test::fixtures_dir() / "aim" / "mamba2_tiny").string() + " --config " + src("configs/tiny.yaml"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("is a checkpoint directory, which holds its own config"), std::string::npos) << r.output;
  r = run_aim("train --set train.max_steps=1 --set model.n_layer=2 --init-config " + src("configs/tiny.yaml") + " " +
              src("configs/tiny.yaml"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("--init-config " + src("configs/tiny.yaml") + ": the config of an --init weights file, "
                          "and no --init is given"),
            std::string::npos) << r.output;
}

TEST(Cli, AFolderWhereAFileBelongsIsNamed) {
  namespace fs = std::filesystem;
  const auto dir = fs::temp_directory_path() / ("aim_cli_folders_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "run");
  { std::ofstream(dir / "run" / "config.yaml") << "name: x\n"; }
  // A run directory given as the config: the resume it probably meant.
  auto r = run_aim("train " + (dir / "run").string());
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find((dir / "run").string() + ": is a folder, not a YAML config ---> HINT: a run directory: "
                          "aim train --resume"), std::string::npos) << r.output;
  r = run_aim("train " + src("configs/tiny.yaml") + " --set data.codes=" + (dir / "run").string() + " --out " +
              (dir / "out").string());
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find((dir / "run").string() + ": expected a code dataset file (aim extract-codes), found a folder"),
            std::string::npos) << r.output;
  fs::remove_all(dir);
}

TEST(Cli, MakeDatasetReplacesOnlyAnEarlierSyntheticDataset) {
  namespace fs = std::filesystem;
  const auto dir = fs::temp_directory_path() / ("aim_cli_make_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string codes = (dir / "syn.codes").string(), other = (dir / "weights.safetensors").string();
  for (int i = 0; i < 2; ++i) {  // written, then written again
    auto r = run_aim("make-dataset codes --per-class 4 --out " + codes);
    EXPECT_EQ(r.code, 0) << r.output;
  }
  { std::ofstream(other) << "not codes"; }
  auto r = run_aim("make-dataset codes --per-class 4 --out " + other);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("--out " + other + ": exists and is not a finished synthetic code dataset"),
            std::string::npos) << r.output;
  EXPECT_EQ(fs::file_size(other), 9u);
  fs::remove_all(dir);
}

TEST(Cli, BadInputsExitNonZeroWithTheKeyNamed) {
  const auto tmp = std::filesystem::temp_directory_path() / "aim_cli_bad.yaml";
  std::ofstream(tmp) << "model:\n  d_modle: 512\n";
  auto r = run_aim("info " + tmp.string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("model.d_modle"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("model.d_model"), std::string::npos) << r.output;  // the suggestion
  r = run_aim("info " + src("configs/aim_l.yaml") + " --set model.n_layer=-3");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("key 'model.n_layer': expected an integer >= 1, found -3"), std::string::npos) << r.output;
  r = run_aim("info /nonexistent/config.yaml");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("/nonexistent/config.yaml: cannot open the config file"), std::string::npos) << r.output;
  std::filesystem::remove(tmp);
}

TEST(Cli, ExtractCodesAsTwoRanksEqualsOneProcess) {
  namespace fs = std::filesystem;
  const auto dir = fs::temp_directory_path() / ("aim_cli_extract_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  for (int c = 0; c < 2; ++c) {
    fs::create_directories(dir / "data" / ("c" + std::to_string(c)));
    for (int k = 0; k < 3; ++k) {
      Image img(70 + k, 66 + c);
      for (size_t i = 0; i < img.rgb.size(); ++i) img.rgb[i] = static_cast<uint8_t>((i * (7 + k) + c * 50) % 251);
      write_png((dir / "data" / ("c" + std::to_string(c)) / ("i" + std::to_string(k) + ".png")).string(), img);
    }
  }
  const auto vq = test::fixtures_dir() / "vq" / "vq16_tiny";
  const std::string common = "extract-codes --data " + (dir / "data").string() + " --vq " +
                             (vq / "model.safetensors").string() + " --vq-config " +
                             (vq / "config.json").string() + " --aug flip --image-size 64 --batch-size 2 ";
  auto one = run_aim(common + "--device cpu --out " + (dir / "one.codes").string());
  ASSERT_EQ(one.code, 0) << one.output;
  // Two processes started the way mpirun starts them (Open MPI's variables), concurrently, into
  // a folder that does not exist yet (made for the output).
  const std::string two = common + "--device cpu --out " + (dir / "codes" / "two.codes").string();
  auto env = [](int rank) {
    return "OMPI_COMM_WORLD_RANK=" + std::to_string(rank) + " OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_LOCAL_RANK=" +
           std::to_string(rank) + " OMPI_COMM_WORLD_LOCAL_SIZE=2 ";
  };
  const std::string cmd = "(" + env(1) + test::aim_binary() + " " + two + " > " + (dir / "r1.log").string() +
                          " 2>&1 &) ; " + env(0) + test::aim_binary() + " " + two;
  const auto both = test::run_shell(cmd);
  const std::string& out = both.output;
  ASSERT_EQ(both.code, 0) << out;
  EXPECT_NE(out.find("merged 2 shards"), std::string::npos) << out;
  std::ifstream a(dir / "one.codes", std::ios::binary), b(dir / "codes" / "two.codes", std::ios::binary);
  const std::string sa((std::istreambuf_iterator<char>(a)), {}), sb((std::istreambuf_iterator<char>(b)), {});
  EXPECT_FALSE(sa.empty());
  EXPECT_EQ(sa, sb);
  CodeDataset d((dir / "codes" / "two.codes").string());
  EXPECT_EQ(d.size(), 6);
  EXPECT_EQ(d.info().num_aug, 2);
  // --max-chunks stops ranks early and leaves the shards for a re-run. Here rank 0 finishes its
  // share while rank 1 stops: rank 0 does not wait for rank 1's shard (which this run will not
  // finish), and the re-run without a limit merges the same file as one process writes.
  const std::string three = common + "--device cpu --out " + (dir / "three.codes").string();
  const std::string marker = (dir / "three.codes.shard-1-of-2.stopped").string();
  // Rank 1 in the background (its exit status checked), then rank 0; `first` waits before rank 0
  // starts (the re-run: until rank 1 has removed its earlier marker, as it does first thing).
  auto run_ranks = [&](const std::string& args, const std::string& log, const std::string& first = "") {
    const std::string rank1 = (dir / log).string();
    const auto r = test::run_shell("(" + env(1) + "timeout 300 " + test::aim_binary() + " " + args + " > " + rank1 +
                                   " 2>&1; echo \"exit $?\" >> " + rank1 + ") & " + first + env(0) + "timeout 300 " +
                                   test::aim_binary() + " " + args);
    std::string text;
    for (int i = 0; i < 600 && text.find("exit ") == std::string::npos; ++i) {  // rank 1 may still be exiting
      std::ifstream in(rank1);
      text.assign((std::istreambuf_iterator<char>(in)), {});
      if (text.find("exit ") == std::string::npos) ::usleep(100000);
    }
    EXPECT_NE(text.find("exit 0"), std::string::npos) << "rank 1: " << text;
    return r;
  };
  const auto ahead = test::run_shell(env(0) + "timeout 300 " + test::aim_binary() + " " + three + " --max-chunks 1");
  ASSERT_EQ(ahead.code, 0) << ahead.output;  // rank 0 alone, 1 of its 2 chunks
  const auto stopped = run_ranks(three + " --max-chunks 1", "r1_stopped.log");
  ASSERT_EQ(stopped.code, 0) << stopped.output;
  EXPECT_NE(stopped.output.find("rank 1 stopped early (--max-chunks)"), std::string::npos) << stopped.output;
  EXPECT_FALSE(fs::exists(dir / "three.codes"));
  EXPECT_TRUE(fs::exists(marker));
  const auto resumed = run_ranks(three, "r1_resumed.log",
                                 "for i in $(seq 600); do [ -e " + marker + " ] || break; sleep 0.1; done; ");
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("merged 2 shards"), std::string::npos) << resumed.output;
  std::ifstream c(dir / "three.codes", std::ios::binary);
  EXPECT_EQ(std::string((std::istreambuf_iterator<char>(c)), {}), sa);
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    EXPECT_EQ(name.find(".shard-"), std::string::npos) << "left behind: " << e.path();
  }
  // Bad flags name the flag.
  auto bad = run_aim(common + "--aug sideways --out " + (dir / "x.codes").string());
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("--aug"), std::string::npos) << bad.output;
  bad = run_aim(common + "--device cuda:7 --out " + (dir / "y.codes").string());
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("--device"), std::string::npos) << bad.output;
  // Flags that would do nothing are refused, naming the flag.
  for (const auto& [flag, says] : std::vector<std::pair<std::string, std::string>>{
           {"--classes names.txt", "--classes names.txt: names the classes of a --list"},
           {"--crop-range 1.0", "--crop-range 1: the tencrop view's first crop; --aug flip takes the ADM center crop"},
           {"--max-chunks -1", "--max-chunks: expected >= 0 (0 = all), found -1"},
           {"--threads -2", "--threads: expected >= 0 (0 = all cores of this rank), found -2"}}) {
    bad = run_aim(common + flag + " --out " + (dir / "z.codes").string());
    EXPECT_EQ(bad.code, 1) << flag;
    EXPECT_NE(bad.output.find(says), std::string::npos) << flag << "\n" << bad.output;
  }
  EXPECT_FALSE(fs::exists(dir / "z.codes"));
  fs::remove_all(dir);
}

TEST(Cli, VersionNamesTheBuild) {
  auto r = run_aim("--version");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.output.find("LibTorch"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(std::string("CPU kernels ") + ops::cpu_kernel_isa()), std::string::npos) << r.output;
  // The trainer's header and --version agree on kernels turned off.
  const auto off = test::run_shell("AIM_CPU_KERNELS=0 " + test::aim_binary() + " --version");
  EXPECT_EQ(off.code, 0);
  EXPECT_NE(off.output.find("CPU kernels off"), std::string::npos) << off.output;
}

}  // namespace
}  // namespace aim
