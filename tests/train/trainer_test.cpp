// aim train end to end on the CPU: learning, exact resume, signals, non-finite losses, a full
// disk, configuration errors, and two ranks under mpirun (Gloo) against one rank.
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "aim/core/config.h"
#include "aim/core/fileio.h"
#include "aim/core/safetensors.h"
#include "aim/data/code_dataset.h"
#include "aim/data/image.h"
#include "aim/data/synthetic.h"
#include "aim/eval/code_loss.h"
#include "aim/model/loader.h"
#include "aim/sample/npz.h"
#include "aim/train/precision.h"
#include "aim/train/run_dir.h"
#include "aim/train/trainer.h"
#include "eval/inception_fixture.h"
#include "test_util.h"
#include "train/train_util.h"

namespace aim::train {
namespace {

namespace fs = std::filesystem;

class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("aim_trainer_test_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
            "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    SyntheticCodesOptions o;
    o.classes = 10;
    o.per_class = 4;  // 40 sequences: 5 steps of 8 per epoch
    o.tokens = 64;
    o.vocab_size = 512;
    write_synthetic_codes(codes(), o);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string codes() const { return (dir_ / "synthetic.codes").string(); }
  std::string run(const std::string& name) const { return (dir_ / name).string(); }

  /// configs/tiny.yaml on the synthetic codes: global batch 8 = micro 4 x 2 accumulation steps.
  Config config(const std::string& out, std::vector<std::string> sets = {}) const {
    std::vector<std::string> all = {"data.codes=" + codes(), "train.out_dir=" + out, "train.max_steps=6",
                                    "train.global_batch=8", "train.micro_batch=4", "train.ckpt_every=0",
                                    "train.log_every=1", "schedule.type=linear", "data.num_workers=1"};
    all.insert(all.end(), sets.begin(), sets.end());
    return load_config(test::source_dir() + "/configs/tiny.yaml", all);
  }
  std::string tiny() const { return test::source_dir() + "/configs/tiny.yaml"; }
  std::string aim(const std::string& args) const { return test::aim_binary() + " " + args; }
  std::string cli_sets(const std::string& out) const {
    return "--set data.codes=" + codes() + " --set train.global_batch=8 --set train.micro_batch=4 " +
           "--set train.log_every=1 --set data.num_workers=1 --out " + out;
  }

  fs::path dir_;
};

std::map<std::string, torch::Tensor> load(const std::string& dir, const std::string& file) {
  return load_safetensors((fs::path(dir) / file).string());
}

void expect_bitwise_equal(const std::map<std::string, torch::Tensor>& a,
                          const std::map<std::string, torch::Tensor>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  int64_t differing = 0;
  for (const auto& [k, v] : a) {
    ASSERT_TRUE(b.count(k)) << what << ": " << k;
    if (!torch::equal(v, b.at(k))) {
      ++differing;
      ADD_FAILURE() << what << ": " << k << " differs, max |diff| "
                    << (v.to(torch::kDouble) - b.at(k).to(torch::kDouble)).abs().max().item<double>();
    }
  }
  std::printf("    %s: %zu tensors, %lld differ\n", what.c_str(), a.size(), static_cast<long long>(differing));
}

/// The training records of a run's metrics.jsonl: step -> logged loss (each step once).
std::map<int64_t, double> logged_losses(const std::string& run_dir) {
  std::map<int64_t, double> out;
  std::ifstream in(fs::path(run_dir) / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.value("kind", "") != "train") continue;
    const auto step = j.at("step").get<int64_t>();
    EXPECT_EQ(out.count(step), 0u) << run_dir << ": step " << step << " logged twice";
    out[step] = j.at("loss").is_number() ? j.at("loss").get<double>() : std::nan("");
  }
  return out;
}

TEST(TrainUtil, TheBatchHintIsOneThatWorks) {
  // global 256 on 4 ranks at micro 48: 32 divides each rank's 64 (the hint once said 64 / rank
  // count whatever it was, and for a batch the ranks cannot share it suggested one that still failed).
  TrainConfig t;
  t.global_batch = 256;
  t.micro_batch = 48;
  auto msg = test::error_of([&] { accumulation_steps(t, 4); });
  EXPECT_NE(msg.find("HINT: --set train.micro_batch=32 (2 micro-batches per step on each rank)"), std::string::npos)
      << msg;
  t.micro_batch = 32;
  EXPECT_EQ(accumulation_steps(t, 4), 2);
  t.global_batch = 2048;
  t.micro_batch = 64;
  msg = test::error_of([&] { accumulation_steps(t, 3); });
  EXPECT_NE(msg.find("3 ranks cannot share 2048 images evenly: --set train.global_batch=2112"), std::string::npos)
      << msg;
  t.global_batch = 2112;
  EXPECT_EQ(accumulation_steps(t, 3), 11);
}

TEST_F(TrainerTest, LossFallsOnSyntheticCodes) {
  TrainOptions o;
  o.quiet = true;
  o.device = test::model_device();  // scripts/gpu_check.sh runs this on CUDA too
  const auto cfg = config(run("learn"), {"train.max_steps=40", "optim.lr=3e-3", "schedule.type=constant"});
  const auto r = run_training(cfg, o);
  EXPECT_EQ(r.steps, 40);
  // metrics.jsonl: the first and last logged losses.
  std::ifstream in(fs::path(run("learn")) / "metrics.jsonl");
  std::vector<double> losses;
  for (std::string line; std::getline(in, line);) {
    const auto pos = line.find("\"loss\":");
    if (pos != std::string::npos) losses.push_back(std::stod(line.substr(pos + 7)));
  }
  ASSERT_EQ(losses.size(), 40u);
  std::printf("    loss: step 1 %.3f, step 40 %.3f (uniform: %.3f)\n", losses.front(), losses.back(), std::log(512.0));
  EXPECT_NEAR(losses.front(), std::log(512.0), 0.3);
  EXPECT_LT(losses.back(), losses.front() - 1.5);
  // The run directory holds everything DESIGN.md promises.
  ASSERT_TRUE(fs::exists(fs::path(run("learn")) / "latest"));
  const auto ck = RunDir(run("learn")).latest().value();
  for (const char* f : {"config.yaml", "model.safetensors", "optimizer.safetensors", "trainer_state.json"})
    EXPECT_TRUE(fs::exists(fs::path(ck) / f)) << f;
}

TEST_F(TrainerTest, ResumeContinuesBitwiseIdentically) {
  // Class dropout, token dropout, EMA, a linear schedule and an epoch boundary (5 steps/epoch)
  // all in play; 4 steps + resume to 7 must equal 7 steps straight.
  // Logged every 3 steps, so the stop at 4 splits a logging window: the resumed run's line for
  // steps 4-6 must average the same losses.
  const std::vector<std::string> sets = {"train.max_steps=7", "model.token_drop=0.1", "train.ema=true",
                                         "train.ema_decay=0.9", "optim.lr=2e-3", "train.log_every=3"};
  TrainOptions o;
  o.quiet = true;
  const auto straight = run_training(config(run("straight"), sets), o);
  o.stop_after = 4;
  const auto first = run_training(config(run("resumed"), sets), o);
  EXPECT_TRUE(first.paused);
  EXPECT_EQ(first.steps, 4);
  o.stop_after = 0;
  o.resume = "auto";
  const auto second = run_training(config(run("resumed"), sets), o);
  EXPECT_EQ(second.steps, 7);
  EXPECT_EQ(straight.loss, second.loss);
  for (const char* f : {"model.safetensors", "ema.safetensors", "optimizer.safetensors"})
    expect_bitwise_equal(load(straight.checkpoint, f), load(second.checkpoint, f), f);
  const auto s1 = TrainerState::from_json(read_text(straight.checkpoint + "/trainer_state.json"), "a");
  const auto s2 = TrainerState::from_json(read_text(second.checkpoint + "/trainer_state.json"), "b");
  EXPECT_EQ(s1.epoch, s2.epoch);
  EXPECT_EQ(s1.batch, s2.batch);
  EXPECT_EQ(s1.samples_seen, s2.samples_seen);
  const auto a = logged_losses(run("straight")), b = logged_losses(run("resumed"));
  EXPECT_EQ(a, b);
  EXPECT_EQ(a.size(), 3u);  // steps 3, 6, 7
}

TEST_F(TrainerTest, TrainEpochsEndWhereTheDataDoesAfterTheBatchChanges) {
  // 40 sequences: 5 steps/epoch at global batch 8. One epoch, then a resume at global batch 16
  // (2 steps/epoch, micro-batches 9-10 of each epoch skipped): the run has one epoch left, 2
  // steps. It counted its end from steps (2 epochs x 2 = step 4) and stopped at once, the
  // second epoch never trained.
  TrainOptions o;
  o.quiet = true;
  o.stop_after = 5;
  const std::vector<std::string> epochs = {"train.max_steps=0", "train.epochs=2"};
  const auto first = run_training(config(run("ep"), epochs), o);
  EXPECT_TRUE(first.paused);
  EXPECT_EQ(first.steps, 5);
  o.stop_after = 0;
  o.resume = "auto";
  o.quiet = false;
  auto bigger = epochs;
  bigger.push_back("train.global_batch=16");
  testing::internal::CaptureStderr();
  const auto second = run_training(config(run("ep"), bigger), o);
  const std::string said = testing::internal::GetCapturedStderr();
  EXPECT_EQ(second.steps, 7) << said;
  EXPECT_EQ(second.total_steps, 7) << said;
  EXPECT_NE(said.find("note: train.epochs 2: the checkpoint is in epoch 1 at step 5; at 2 steps/epoch now the run "
                      "ends at step 7 (not 4: the batch or the data changed since)"),
            std::string::npos) << said;
  // The logged epoch is where the data is: 2.0 at the end (it was step / steps-per-epoch: 3.5).
  std::ifstream f(fs::path(run("ep")) / "metrics.jsonl");
  double last_epoch = -1;
  for (std::string line; std::getline(f, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.value("kind", "") == "train") last_epoch = j.at("epoch").get<double>();
  }
  EXPECT_DOUBLE_EQ(last_epoch, 2.0);
}

TEST_F(TrainerTest, AResumeNamesTheSettingsChangedSinceTheCheckpoint) {
  const std::string base = aim("train " + tiny() + " " + cli_sets(run("r")) + " --set train.max_steps=6");
  auto first = test::run_shell(base + " --stop-after-steps 2");
  ASSERT_EQ(first.code, 0) << first.output;
  auto same = test::run_shell(base + " --resume auto --stop-after-steps 2");
  ASSERT_EQ(same.code, 0) << same.output;
  EXPECT_EQ(same.output.find("warning: resuming"), std::string::npos) << same.output;
  auto changed = test::run_shell(base + " --resume auto --set optim.base_lr=0.5 --set train.seed=7");
  ASSERT_EQ(changed.code, 0) << changed.output;
  EXPECT_NE(changed.output.find(" with 2 settings changed since it was written: optim.base_lr "), std::string::npos)
      << changed.output;
  EXPECT_NE(changed.output.find("-> 0.5; train.seed 0 -> 7"), std::string::npos) << changed.output;
}

TEST_F(TrainerTest, HeldOutCodesOfAnotherTokenizerAreRefused) {
  CodeDataset train(codes());
  auto info = train.info();
  info.tokenizer = "vq_other.safetensors (123 bytes, fnv64 0123456789abcdef)";
  const std::string val = (dir_ / "val.codes").string();
  CodeDatasetWriter::create(val, info)->write(0, torch::zeros({info.num_samples, 1, info.tokens}, torch::kLong),
                                              torch::zeros({info.num_samples}, torch::kLong));
  code_dataset_mark_finished(val);
  TrainOptions o;
  o.quiet = true;
  const auto msg = test::error_of(
      [&] { run_training(config(run("val"), {"data.val_codes=" + val, "train.eval_every=1"}), o); });
  EXPECT_NE(msg.find("data.val_codes " + val + ": codes of 0 px images by tokenizer vq_other.safetensors"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("but data.codes " + codes() + " holds codes of"), std::string::npos) << msg;

  // Held-out codes whose labels name the classes in another order: every image would be scored
  // under another class. Refused; numbered names (extract-codes --list without --classes) and a
  // list that stops where the other goes on are not.
  auto with_classes = [&](const std::string& name, std::vector<std::string> classes) {
    auto v = train.info();
    v.classes = std::move(classes);
    const std::string path = (dir_ / name).string();
    CodeDatasetWriter::create(path, v)->write(0, torch::zeros({v.num_samples, 1, v.tokens}, torch::kLong),
                                               torch::zeros({v.num_samples}, torch::kLong));
    code_dataset_mark_finished(path);
    return path;
  };
  auto swapped = train.info().classes;
  std::swap(swapped[2], swapped[3]);
  const std::string other_order = with_classes("order.codes", swapped);
  const auto order = test::error_of(
      [&] { run_training(config(run("order"), {"data.val_codes=" + other_order, "train.eval_every=1"}), o); });
  EXPECT_NE(order.find("data.val_codes " + other_order + ": label 2 is class 'chain3', but in the training data "
                       "(data.codes " + codes() + ") it is 'chain2'"),
            std::string::npos) << order;
  // A file whose header names no classes: its labels are checked against the model (label
  // num_classes, the null class, would have been scored as a class).
  {
    auto v = train.info();
    v.classes.clear();
    const int64_t classes = config(run("unnamed")).model.num_classes;
    const std::string unnamed = (dir_ / "unnamed.codes").string();
    auto labels = torch::zeros({v.num_samples}, torch::kLong);
    labels[3] = classes;
    CodeDatasetWriter::create(unnamed, v)->write(0, torch::zeros({v.num_samples, 1, v.tokens}, torch::kLong), labels);
    code_dataset_mark_finished(unnamed);
    const auto beyond = test::error_of(
        [&] { run_training(config(run("unnamed"), {"data.val_codes=" + unnamed, "train.eval_every=1"}), o); });
    EXPECT_NE(beyond.find(str_cat("data.val_codes ", unnamed, ": image 3 has label ", classes, ", but the model has ",
                                  classes, " classes")),
              std::string::npos) << beyond;
  }
  std::vector<std::string> numbered;
  for (int i = 0; i < 10; ++i) numbered.push_back(std::to_string(i));
  auto fewer = train.info().classes;
  fewer.pop_back();
  for (const auto& ok : {with_classes("numbered.codes", numbered), with_classes("fewer.codes", fewer)}) {
    EXPECT_NO_THROW(run_training(config(run("ok" + std::to_string(ok.size())),
                                        {"data.val_codes=" + ok, "train.eval_every=3", "train.max_steps=3"}),
                                 o))
        << ok;
  }
}

TEST_F(TrainerTest, TooFewImagesForTheRanksAreNamedByKey) {
  SyntheticCodesOptions one;
  one.classes = 1;
  one.per_class = 1;
  one.tokens = 64;
  one.vocab_size = 512;
  const std::string path = run("one.codes");
  write_synthetic_codes(path, one);
  const auto r = test::run_shell(
      "OMP_NUM_THREADS=1 OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1 "
      "mpirun --allow-run-as-root --oversubscribe -np 2 " +
      aim("train " + tiny() + " --device cpu --set data.codes=" + path + " --set train.global_batch=2 "
          "--set train.micro_batch=1 --out " + run("few")));
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("data.codes " + path + ": 1 labelled image cannot be shared by 2 ranks"), std::string::npos)
      << r.output;
}

TEST_F(TrainerTest, EmaWeightsLoadOnlyWhereTheRunKeptThem) {
  // --ema (aim sample, aim eval-loss) loads the run's EMA weights; where there are none it is an
  // error, not the model's weights under the EMA's name.
  TrainOptions o;
  o.quiet = true;
  const auto with =
      run_training(config(run("ema"), {"train.max_steps=2", "train.ema=true", "train.ema_decay=0.5"}), o);
  const auto ema = load(with.checkpoint, "ema.safetensors"), raw = load(with.checkpoint, "model.safetensors");
  auto model = load_aim_model(find_checkpoint(run("ema")), true);
  int64_t compared = 0;
  for (const auto& [key, value] : official_state_dict(model)) {
    if (!ema.count(key)) continue;
    EXPECT_TRUE(torch::equal(value, ema.at(key))) << key;
    compared += !torch::equal(ema.at(key), raw.at(key));
  }
  EXPECT_GT(compared, 0) << "the EMA weights never differed from the model's: the check proves nothing";
  run_training(config(run("plain"), {"train.max_steps=1"}), o);
  EXPECT_NE(test::error_of([&] { load_aim_model(find_checkpoint(run("plain")), true); })
                .find("has no EMA weights (no ema.safetensors beside model.safetensors"),
            std::string::npos);
  const auto official = (test::fixtures_dir() / "aim" / "mamba2_tiny").string();
  EXPECT_NE(test::error_of([&] { load_aim_model(find_checkpoint(official), true); })
                .find("has no EMA weights (only aim run directories hold them)"),
            std::string::npos);
}

TEST_F(TrainerTest, RecomputedActivationsGiveTheSameRunBitForBit) {
  // train.recompute_every 1 and 2 against 0, in bf16 autocast (the precision the recomputation
  // must restore in the backward), with class and token dropout drawing.
  const std::vector<std::string> sets = {"train.max_steps=3", "model.token_drop=0.1", "train.precision=bf16"};
  TrainOptions o;
  o.quiet = true;
  const auto plain = run_training(config(run("plain"), sets), o);
  for (const char* every : {"1", "2"}) {
    auto with = sets;
    with.push_back(std::string("train.recompute_every=") + every);
    const auto r = run_training(config(run(std::string("every") + every), with), o);
    EXPECT_EQ(r.loss, plain.loss) << "every " << every;
    for (const char* f : {"model.safetensors", "optimizer.safetensors"})
      expect_bitwise_equal(load(plain.checkpoint, f), load(r.checkpoint, f), std::string(f) + ", every " + every);
  }
  // The header says so (TrainVqTest.TheRunIsATokenizer... checks that train-vq refuses the key).
  const auto shown = test::run_shell(aim("train " + tiny() + " " + cli_sets(run("shown")) +
                                         " --set train.max_steps=1 --set train.recompute_every=1"));
  ASSERT_EQ(shown.code, 0) << shown.output;
  EXPECT_NE(shown.output.find("activations recomputed in the backward (every block)"), std::string::npos)
      << shown.output;
  EXPECT_NE(test::error_of([&] { config(run("x"), {"train.recompute_every=-1"}); }).find("train.recompute_every"),
            std::string::npos);
}

TEST_F(TrainerTest, Bf16AutocastComputesInBf16WithFp32MasterWeights) {
  TrainOptions o;
  o.quiet = true;
  o.device = test::model_device();
  const auto fp32 = run_training(config(run("fp32"), {"train.max_steps=2"}), o);
  const auto bf16 = run_training(config(run("bf16"), {"train.max_steps=2", "train.precision=bf16"}), o);
  std::printf("    loss after 2 steps: fp32 %.6f, bf16 %.6f\n", fp32.loss, bf16.loss);
  EXPECT_NE(fp32.loss, bf16.loss);                  // bf16 really ran
  EXPECT_NEAR(fp32.loss, bf16.loss, 0.02);          // and agrees to bf16 precision
  for (const auto& [k, v] : load(bf16.checkpoint, "model.safetensors"))
    EXPECT_EQ(v.scalar_type(), torch::kFloat) << k;  // master weights stay fp32
}

TEST_F(TrainerTest, TheHeaderSaysWhatPrecisionAutoChose) {
  const auto r = test::run_shell(aim("train " + tiny() + " " + cli_sets(run("auto")) +
                                     " --set train.max_steps=1 --set train.precision=auto"));
  ASSERT_EQ(r.code, 0) << r.output;
  if (torch::cuda::is_available()) {
    EXPECT_NE(r.output.find("  precision  auto: "), std::string::npos) << r.output;
    return;
  }
  const Precision p = resolve_precision("auto", torch::Device(torch::kCPU));
  EXPECT_NE(r.output.find("  precision  " + p.summary + "\n"), std::string::npos) << r.output;
  // The device line names the CPU kernels' instruction set.
  EXPECT_NE(r.output.find(std::string(", CPU kernels ") + ops::cpu_kernel_isa() + "\n"), std::string::npos)
      << r.output;
  // bf16 written out where the CPU multiplies it in software: trained as asked, with a warning.
  const auto b = test::run_shell(aim("train " + tiny() + " " + cli_sets(run("bf16")) +
                                     " --set train.max_steps=1 --set train.precision=bf16"));
  ASSERT_EQ(b.code, 0) << b.output;
  EXPECT_NE(b.output.find("  precision  bf16 autocast"), std::string::npos) << b.output;
  const bool software = !cpu_has_avx512_bf16() && !cpu_has_amx_bf16();
  EXPECT_EQ(b.output.find("warning: train.precision is bf16 on a CPU without") != std::string::npos, software)
      << b.output;
}

TEST_F(TrainerTest, TrainsFromImagesEncodedOnTheFly) {
  // Two class folders of 144x144 PNGs; the fixture tokenizer (VQ-16 layout, 512 codes) turns the
  // 128x128 crops into 64 codes, as configs/tiny.yaml expects.
  for (int c = 0; c < 2; ++c) {
    fs::create_directories(dir_ / "images" / ("class" + std::to_string(c)));
    for (int i = 0; i < 4; ++i) {
      Image img(144, 144);
      for (size_t k = 0; k < img.rgb.size(); ++k) img.rgb[k] = static_cast<uint8_t>((k * (7 + c) + i * 31) % 251);
      write_png((dir_ / "images" / ("class" + std::to_string(c)) / (std::to_string(i) + ".png")).string(), img);
    }
  }
  TrainOptions o;
  o.quiet = true;
  const auto r = run_training(
      config(run("img"), {"data.codes=", "data.images=" + (dir_ / "images").string(),
                          "vq.weights=" + (test::fixtures_dir() / "vq/vq16_tiny/model.safetensors").string(),
                          "train.global_batch=4", "train.micro_batch=2", "train.max_steps=3"}),
      o);
  EXPECT_EQ(r.steps, 3);
  EXPECT_TRUE(std::isfinite(r.loss));
  const auto msg = test::error_of([&] {
    run_training(config(run("img2"), {"data.codes=", "data.images=" + (dir_ / "images").string()}), o);
  });
  EXPECT_NE(msg.find("set vq.weights"), std::string::npos) << msg;
  // data.aug: flips on the fly; ten crops exist only as extracted codes.
  const std::string vq = "vq.weights=" + (test::fixtures_dir() / "vq/vq16_tiny/model.safetensors").string();
  const auto flipped = run_training(config(run("img3"), {"data.codes=", "data.images=" + (dir_ / "images").string(), vq,
                                                         "data.aug=flip", "train.global_batch=4",
                                                         "train.micro_batch=2", "train.max_steps=1"}),
                                    o);
  EXPECT_EQ(flipped.steps, 1);
  const auto tencrop = test::error_of([&] {
    run_training(config(run("img4"), {"data.codes=", "data.images=" + (dir_ / "images").string(), vq,
                                      "data.aug=tencrop"}),
                 o);
  });
  EXPECT_NE(tencrop.find("data.aug: 'tencrop' is a set of views extracted once"), std::string::npos) << tencrop;
  // The tokenizer's codebook against the model's vocabulary (the config's vq section agreeing
  // with the model says nothing about the weights): refused before the first step's embedding.
  const auto vocab = test::error_of([&] {
    run_training(config(run("img6"), {"data.codes=", "data.images=" + (dir_ / "images").string(), vq,
                                      "model.vocab_size=1024", "vq.codebook_size=1024"}),
                 o);
  });
  EXPECT_NE(vocab.find("vq.weights " + (test::fixtures_dir() / "vq/vq16_tiny/model.safetensors").string() +
                       ": a codebook of 512 codes, but model.vocab_size is 1024"),
            std::string::npos) << vocab;
  // From codes, the tokenizer decodes only the sample grids: one that cannot is refused at the
  // start too (each grid was dropped with a warning, and a run ended without any).
  SyntheticCodesOptions wide;
  wide.vocab_size = 1024;
  wide.per_class = 4;
  const std::string wide_codes = (dir_ / "wide.codes").string();
  write_synthetic_codes(wide_codes, wide);
  const auto grids = test::error_of([&] {
    run_training(config(run("grids"), {"data.codes=" + wide_codes, vq, "model.vocab_size=1024",
                                       "vq.codebook_size=1024", "train.sample_every=1", "train.max_steps=1"}),
                 o);
  });
  EXPECT_NE(grids.find(": a codebook of 512 codes, but model.vocab_size is 1024: it cannot decode this model's "
                       "samples"),
            std::string::npos) << grids;
  // Held-out codes are checked against the tokenizer that encodes the images (they were not:
  // only against data.codes), and their class list against the folders'.
  auto info = CodeDataset(codes()).info();  // synthetic: tokenizer "synthetic", classes chain0..9
  const std::string val = (dir_ / "val_img.codes").string();
  CodeDatasetWriter::create(val, info)->write(0, torch::zeros({info.num_samples, 1, info.tokens}, torch::kLong),
                                              torch::zeros({info.num_samples}, torch::kLong));
  code_dataset_mark_finished(val);
  const auto other = test::error_of([&] {
    run_training(config(run("img5"), {"data.codes=", "data.images=" + (dir_ / "images").string(), vq,
                                      "data.val_codes=" + val, "train.eval_every=1"}),
                 o);
  });
  EXPECT_NE(other.find("data.val_codes " + val + ": codes of "), std::string::npos) << other;
  EXPECT_NE(other.find("but training encodes 128 px images of data.images with vq.weights model.safetensors ("),
            std::string::npos) << other;
}

// train.fid_every: the FID a run logs is the one aim eval gives for the images aim sample
// --preset fid draws from the same checkpoint: with one rank or two (each drawing its share; the
// official tiny snapshot at lr 1e-12, so that both runs hold the same weights), and from a bf16
// replica of the EMA weights after real steps. Evaluating leaves the training unchanged.
TEST_F(TrainerTest, FidWhileTrainingIsAimEvalsFidOfTheSameSamples) {
  const std::string weights = run("inception.safetensors"), ref = run("ref.npz");
  test::write_fixture_inception_weights(weights);
  auto write_ref = [](const std::string& path, int64_t size) {
    // Smooth images, no stored statistics: the run computes them.
    NpzWriter w(path);
    w.add_array("arr_0", test::smooth_images(8, size, 5, 0.1));
    w.close();
  };
  write_ref(ref, 128);  // the model's size
  const std::string vq = (test::fixtures_dir() / "vq/vq16_tiny/model.safetensors").string();
  const std::string threads = "OMP_NUM_THREADS=" + std::to_string(at::get_num_threads()) + " ";
  const std::string fid_sets = " --set vq.weights=" + vq + " --set train.fid_samples=6 --set train.fid_ref=" + ref +
                               " --set train.fid_inception=" + weights + " --set sample.batch_size=4";
  auto train = [&](const std::string& launcher, const std::string& out, const std::string& sets) {
    return test::run_shell(threads + launcher + aim("train " + tiny() + " --device cpu " + cli_sets(out) + fid_sets + sets));
  };
  const std::string init = " --init " + (test::fixtures_dir() / "aim/mamba2_tiny").string() +
                           " --set optim.lr=1e-12 --set train.max_steps=1 --set train.fid_every=1";
  auto logged_fid = [&](const std::string& out, const std::string& weights_used, const std::string& dtype) {
    std::ifstream f(fs::path(out) / "metrics.jsonl");
    double last = -1.0;
    for (std::string line; std::getline(f, line);) {
      const auto j = nlohmann::json::parse(line);
      if (j.value("kind", "") != "fid") continue;
      EXPECT_EQ(j.at("samples").get<int64_t>(), 6);
      EXPECT_DOUBLE_EQ(j.at("cfg").get<double>(), 1.75);  // adaLN groups: the published FIDs' scale
      EXPECT_EQ(j.at("weights").get<std::string>(), weights_used);
      EXPECT_EQ(j.at("dtype").get<std::string>(), dtype);
      last = j.at("fid").get<double>();
    }
    EXPECT_GT(last, 0.0) << out << ": no FID logged";
    return last;
  };
  // The same images through aim sample and aim eval.
  auto eval_of = [&](const std::string& ckpt, const std::string& flags, const std::string& name) {
    const auto s = test::run_shell(threads + aim("sample --device cpu --ckpt " + ckpt +
                                                 " --num-samples 6 --preset fid --batch-size 4 " + flags + " --npz " +
                                                 run(name + ".npz")));
    EXPECT_EQ(s.code, 0) << s.output;
    const auto e = test::run_shell(threads + aim("eval --quiet --device cpu --samples " + run(name + ".npz") +
                                                 " --ref " + ref + " --inception " + weights + " --json " +
                                                 run(name + ".json")));
    EXPECT_EQ(e.code, 0) << e.output;
    return nlohmann::json::parse(read_text(run(name + ".json"))).at("fid").get<double>();
  };
  const auto one = train("", run("one"), init);
  ASSERT_EQ(one.code, 0) << one.output;
  EXPECT_NE(one.output.find("FID at step 1: "), std::string::npos) << one.output;
  const double fid = logged_fid(run("one"), "model", "fp32");
  const auto two = train("OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1 "
                         "mpirun --allow-run-as-root --oversubscribe -np 2 ", run("two"), init);
  ASSERT_EQ(two.code, 0) << two.output;
  EXPECT_NE(two.output.find("world size 2"), std::string::npos) << two.output;
  EXPECT_NEAR(logged_fid(run("two"), "model", "fp32"), fid, 1e-6 * fid);
  EXPECT_NEAR(eval_of(run("one"), "--seed 0", "s0"), fid, 1e-6 * fid);
  // Other samples (another seed) score otherwise: the comparisons can fail.
  EXPECT_GT(std::abs(eval_of(run("one"), "--seed 1", "s1") - fid), 1e-3 * fid);

  // Real steps with an EMA, sampled from a bf16 replica: aim sample --ema --dtype bf16's images.
  const std::string steps = " --set optim.lr=1e-3 --set train.max_steps=2 --set train.ema=true --set train.ema_decay=0.5"
                            " --set sample.dtype=bf16";
  const auto ema = train("", run("ema"), steps + " --set train.fid_every=1");
  ASSERT_EQ(ema.code, 0) << ema.output;
  const double ema_fid = logged_fid(run("ema"), "ema", "bf16");
  EXPECT_NEAR(eval_of(run("ema"), "--ema --dtype bf16 --seed 0", "ema"), ema_fid, 1e-6 * ema_fid);
  EXPECT_GT(std::abs(eval_of(run("ema"), "--dtype bf16 --seed 0", "raw") - ema_fid), 1e-3 * ema_fid);
  // The same run without FIDs ends with the same weights, bit for bit.
  const auto plain = train("", run("plain"), steps);
  ASSERT_EQ(plain.code, 0) << plain.output;
  for (const char* f : {"model.safetensors", "ema.safetensors"}) {
    const auto a = load(RunDir(run("ema")).latest().value(), f), b = load(RunDir(run("plain")).latest().value(), f);
    for (const auto& [k, v] : a) EXPECT_TRUE(torch::equal(v, b.at(k))) << f << " " << k;
  }

  // plot_metrics.py adds an FID panel (a third row of two panels, 396 px each) beside the curves.
  const auto plot = test::run_shell(test::python() + " " + test::source_dir() + "/scripts/plot_metrics.py " + run("one"));
  ASSERT_EQ(plot.code, 0) << plot.output;
  EXPECT_GT(decode_image((fs::path(run("one")) / "metrics.png").string()).height, 1000);
  // A reference of another size is refused before training; the run needs the tokenizer and both files.
  write_ref(run("ref64.npz"), 64);
  const auto small = train("", run("small"), init + " --set train.fid_ref=" + run("ref64.npz"));
  EXPECT_NE(small.code, 0);
  EXPECT_NE(small.output.find("64x64 images, but the model's samples are 128x128"), std::string::npos) << small.output;
  const auto no_ref = test::error_of([&] { config(run("x"), {"train.fid_every=5", "train.fid_inception=" + weights}); });
  EXPECT_NE(no_ref.find("key 'train.fid_ref'"), std::string::npos) << no_ref;
  const auto no_vq = test::error_of(
      [&] { config(run("x"), {"train.fid_every=5", "train.fid_inception=" + weights, "train.fid_ref=" + ref}); });
  EXPECT_NE(no_vq.find("key 'vq.weights'"), std::string::npos) << no_vq;
}

TEST_F(TrainerTest, AStopDuringTheHeldOutLossSavesAtOnce) {
  // ImageNet's 50,000 validation images take longer than a scheduler's grace period (Slurm's
  // KillWait: 30 s): the ranks give the held-out loss up after their current batch, together (a
  // collective per batch), and save the step's checkpoint.
  SyntheticCodesOptions vo;
  vo.classes = 10;
  // 100,000 images: about 25 s on two ranks, were it not abandoned. The signal goes when step 2's
  // line shows, which the trainer prints just before the held-out loss.
  vo.per_class = 10000;
  vo.tokens = 64;
  vo.vocab_size = 512;
  vo.first_index = 1000000;
  const std::string val = run("val.codes");
  write_synthetic_codes(val, vo);
  const std::string threads = "OMP_NUM_THREADS=1 ";
  const std::string mpirun = "OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1 "
                             "mpirun --allow-run-as-root --oversubscribe -np 2 ";
  const std::string out = run("stopped"), log_path = run("stopped.log");
  const auto stopped = test::run_shell(
      threads + mpirun + aim("train " + tiny() + " " + cli_sets(out) + " --device cpu --set data.val_codes=" + val +
                             " --set train.eval_every=2 --set train.max_steps=4") +
      " > " + log_path + " 2>&1 & pid=$!; for i in $(seq 1 1200); do grep -q '] 2/4 step' " + log_path +
      " && break; kill -0 $pid || break; sleep 0.1; done; kill -USR1 $pid; wait $pid; echo rc=$?");
  const std::string log = read_text(log_path);
  EXPECT_NE(stopped.output.find("rc=0"), std::string::npos) << stopped.output << log;
  EXPECT_NE(log.find("] 2/4 step"), std::string::npos) << log;
  EXPECT_NE(log.find("held-out loss at step 2: abandoned (stop requested)\n---> HINT: aim eval-loss --ckpt " + out +
                     " --codes " + val),
            std::string::npos) << log;
  EXPECT_NE(log.find("stopped at step 2 of 4"), std::string::npos) << log;
  const auto latest = RunDir(out).latest();
  ASSERT_TRUE(latest.has_value()) << log;
  EXPECT_EQ(TrainerState::from_json(read_text(*latest + "/trainer_state.json"), *latest).step, 2);
  std::ifstream f(fs::path(out) / "metrics.jsonl");
  int evals = 0, trains = 0;
  for (std::string line; std::getline(f, line);) {
    const auto j = nlohmann::json::parse(line);
    evals += j.value("kind", "") == "eval";
    trains += j.value("kind", "") == "train";
  }
  EXPECT_EQ(evals, 0);
  EXPECT_EQ(trains, 2);
}

TEST_F(TrainerTest, AStopDuringAnFidSavesAtOnceAndTheResumeComputesIt) {
  // A batch system's signal ahead of its time limit must not wait for a long FID (10,000 images
  // by default): the ranks give it up after the batch they are drawing, the checkpoint of that
  // step says it is due, and the resume computes it from those weights before its first step.
  const std::string weights = run("inception.safetensors"), ref = run("ref.npz");
  test::write_fixture_inception_weights(weights);
  {
    NpzWriter w(ref);
    w.add_array("arr_0", test::smooth_images(8, 128, 5, 0.1));
    w.close();
  }
  const std::string vq = (test::fixtures_dir() / "vq/vq16_tiny/model.safetensors").string();
  const std::string threads = "OMP_NUM_THREADS=" + std::to_string(at::get_num_threads()) + " ";
  const std::string mpirun = "OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1 "
                             "mpirun --allow-run-as-root --oversubscribe -np 2 ";
  const std::string sets = " --device cpu --set vq.weights=" + vq + " --set train.fid_ref=" + ref +
                           " --set train.fid_inception=" + weights +
                           " --set train.fid_every=2 --set train.max_steps=3 --set train.ema=true --set train.ema_decay=0.5";
  // Two ranks drawing 2 images each per round, 4000 images in all: minutes, were it not abandoned.
  const std::string out = run("stopped");
  const auto stopped = test::run_shell(
      threads + mpirun + aim("train " + tiny() + " " + cli_sets(out) + sets +
                             " --set train.fid_samples=4000 --set sample.batch_size=2") +
      " > " + run("stopped.log") + " 2>&1 & pid=$!; for i in $(seq 1 1200); do grep -q 'drawing 4000 images' " +
      run("stopped.log") + " && break; kill -0 $pid || break; sleep 0.1; done; kill -USR1 $pid; wait $pid; echo rc=$?");
  const std::string log = read_text(run("stopped.log"));
  EXPECT_NE(stopped.output.find("rc=0"), std::string::npos) << stopped.output << log;
  EXPECT_NE(log.find("FID at step 2: abandoned after "), std::string::npos) << log;
  EXPECT_NE(log.find("of 4000 images (stop requested); a resume computes it first"), std::string::npos) << log;
  EXPECT_NE(log.find("stopped at step 2 of 3"), std::string::npos) << log;
  const auto latest = RunDir(out).latest();
  ASSERT_TRUE(latest.has_value()) << log;
  auto state_of = [](const std::string& dir) {
    return TrainerState::from_json(read_text(dir + "/trainer_state.json"), dir);
  };
  EXPECT_EQ(state_of(*latest).step, 2);
  EXPECT_TRUE(state_of(*latest).fid_due);
  auto fids = [](const std::string& dir) {
    std::map<int64_t, double> by_step;
    std::ifstream f(fs::path(dir) / "metrics.jsonl");
    for (std::string line; std::getline(f, line);) {
      const auto j = nlohmann::json::parse(line);
      if (j.value("kind", "") == "fid") by_step[j.at("step").get<int64_t>()] = j.at("fid").get<double>();
    }
    return by_step;
  };
  EXPECT_TRUE(fids(out).empty());
  const std::string again = run("again");  // for the last check
  fs::copy(out, again, fs::copy_options::recursive);

  // Resumed (with fewer images): the FID of step 2 first, then step 3 and its FID; they are the
  // FIDs of a run that was never stopped.
  const std::string fewer = " --set train.fid_samples=6 --set sample.batch_size=2";
  const auto resumed = test::run_shell(threads + mpirun + aim("train --resume " + out + " --device cpu" + fewer));
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("FID at step 2: abandoned by the stop that ended the last session, computed now"),
            std::string::npos) << resumed.output;
  EXPECT_FALSE(state_of(*RunDir(out).latest()).fid_due);
  const auto straight = test::run_shell(threads + mpirun + aim("train " + tiny() + " " + cli_sets(run("straight")) +
                                                               sets + fewer));
  ASSERT_EQ(straight.code, 0) << straight.output;
  const auto a = fids(out), b = fids(run("straight"));
  ASSERT_EQ(a.size(), 2u) << resumed.output;
  ASSERT_EQ(b.size(), 2u) << straight.output;
  for (const int64_t step : {2, 3}) EXPECT_NEAR(a.at(step), b.at(step), 1e-9 * b.at(step)) << "step " << step;
  EXPECT_GT(std::abs(a.at(2) - a.at(3)), 1e-6 * a.at(3));  // the steps' FIDs differ: the check can fail

  // A resume with no step left computes the due FID and writes the checkpoint again, no longer due.
  const auto due_only = test::run_shell(threads + aim("train --resume " + again + " --device cpu" + fewer +
                                                      " --set train.max_steps=2"));
  ASSERT_EQ(due_only.code, 0) << due_only.output;
  EXPECT_NEAR(fids(again).at(2), b.at(2), 1e-9 * b.at(2));
  EXPECT_EQ(state_of(*RunDir(again).latest()).step, 2);
  EXPECT_FALSE(state_of(*RunDir(again).latest()).fid_due);
  // Had that session ended before writing the checkpoint again, the next resume computes the FID
  // once more, and the log keeps one record of it.
  auto st = state_of(*RunDir(again).latest());
  st.fid_due = true;
  write_text_atomic(*RunDir(again).latest() + "/trainer_state.json", st.to_json());
  const auto twice = test::run_shell(threads + aim("train --resume " + again + " --device cpu" + fewer +
                                                   " --set train.max_steps=2"));
  ASSERT_EQ(twice.code, 0) << twice.output;
  EXPECT_NE(twice.output.find("computed now"), std::string::npos) << twice.output;
  int records = 0;
  std::ifstream log2(fs::path(again) / "metrics.jsonl");
  for (std::string line; std::getline(log2, line);) records += nlohmann::json::parse(line).value("kind", "") == "fid";
  EXPECT_EQ(records, 1);
}

TEST_F(TrainerTest, InitFromAnOfficialSnapshotAndAnotherClassCount) {
  TrainOptions o;
  o.quiet = true;
  // The official tiny checkpoint (a Hugging Face snapshot) has the tiny config's architecture.
  o.init = (test::fixtures_dir() / "aim/mamba2_tiny").string();
  const auto a = run_training(config(run("ft"), {"train.max_steps=1", "optim.lr=1e-12"}), o);
  const auto official = load_safetensors((test::fixtures_dir() / "aim/mamba2_tiny/model.safetensors").string());
  const auto ours = load(a.checkpoint, "model.safetensors");
  const std::string key = "mamba.backbone.layers.0.mixer.in_proj.weight";
  ASSERT_TRUE(official.count(key));
  test::expect_close("fine-tuned after one step at lr 1e-12 vs official", ours.at(key), official.at(key), 1e-6);
  // 12 classes instead of 10: the class table is fresh, the rest comes from the checkpoint.
  auto cfg = config(run("ft12"), {"train.max_steps=1", "optim.lr=1e-12", "model.num_classes=12"});
  const auto b = run_training(cfg, o);
  const auto ours12 = load(b.checkpoint, "model.safetensors");
  EXPECT_EQ(ours12.at("mamba.backbone.cls_embed.embedding_table.weight").size(0), 13);
  test::expect_close("12-class fine-tune keeps the mixers", ours12.at(key), official.at(key), 1e-6);
  // A different architecture is refused with the key and both shapes.
  const auto msg = test::error_of([&] { run_training(config(run("ft_bad"), {"model.d_model=32"}), o); });
  EXPECT_NE(msg.find("in_proj.weight"), std::string::npos) << msg;
}

TEST_F(TrainerTest, PlotMetricsDrawsTheCurves) {
  TrainOptions o;
  o.quiet = true;
  run_training(config(run("plot"), {"train.max_steps=3"}), o);
  const auto r = test::run_shell(test::python() + " " + test::source_dir() +
                                 "/scripts/plot_metrics.py " + run("plot"));
  ASSERT_EQ(r.code, 0) << r.output;
  const auto png = fs::path(run("plot")) / "metrics.png";
  ASSERT_TRUE(fs::exists(png));
  const auto img = decode_image(png.string());
  EXPECT_GT(img.width, 500);
  EXPECT_LT(img.height, 1000);  // two rows of panels: no FID logged
  const auto missing = test::run_shell(test::python() + " " + test::source_dir() +
                                       "/scripts/plot_metrics.py " + run("nothing"));
  EXPECT_NE(missing.code, 0);
  EXPECT_NE(missing.output.find("metrics.jsonl: no such file"), std::string::npos) << missing.output;
}

// train.tensorboard: metrics.jsonl's numbers and the sample grids as TensorBoard's own reader
// finds them. After a resume from an earlier checkpoint each step is there once (each session
// writes the events afresh from what the log keeps, and the abandoned course's grids move aside);
// values and times are metrics.jsonl's, pictures samples/'s. A run logged without it gets its
// events from metrics.jsonl when resumed with it.
TEST_F(TrainerTest, TensorBoardShowsTheCourseMetricsJsonlDescribes) {
  const std::string vq = "vq.weights=" + (test::fixtures_dir() / "vq/vq16_tiny/model.safetensors").string();
  const std::string out = run("tb");
  auto cfg = [&](int64_t steps, const std::string& dir) {
    return config(dir, {vq, "train.sample_every=2", "train.ckpt_every=2", "train.keep_last=3",
                        "train.max_steps=" + std::to_string(steps)});
  };
  TrainOptions o;
  o.quiet = true;
  o.stop_after = 4;
  run_training(cfg(6, out), o);  // steps 1-4: checkpoints and pictures at 2 and 4
  o.stop_after = 0;
  o.resume = out + "/checkpoints/step-00000002";
  const std::string first_course_grid = file_digest(out + "/samples/step-00000004.png");
  run_training(cfg(6, out), o);  // back to step 2, then 3-6 again
  EXPECT_EQ(file_digest(out + "/samples/after-step-2/step-00000004.png"), first_course_grid);
  o.resume = out;
  run_training(cfg(7, out), o);  // a later session: step 7

  auto expect_as_logged = [&](const std::string& dir, size_t files, const std::vector<int64_t>& picture_steps) {
    const auto tb = test::read_tensorboard(dir + "/tensorboard");
    ASSERT_FALSE(tb.is_null());
    EXPECT_EQ(tb.at("files").get<size_t>(), files) << dir;
    // tag -> step -> (value, time), from metrics.jsonl
    std::map<std::string, std::map<int64_t, std::pair<double, double>>> logged;
    std::ifstream in(fs::path(dir) / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line);
      for (const auto& [key, value] : j.items()) {
        if (key == "step" || key == "time" || !value.is_number()) continue;
        logged[j.value("kind", "") + "/" + key][j.at("step").get<int64_t>()] = {value.get<double>(),
                                                                                j.at("time").get<double>()};
      }
    }
    ASSERT_TRUE(logged.count("train/loss")) << dir;
    EXPECT_EQ(tb.at("scalars").size(), logged.size()) << tb.at("scalars").dump();
    for (const auto& [tag, steps] : logged) {
      ASSERT_TRUE(tb.at("scalars").contains(tag)) << dir << ": " << tag;
      const auto& rows = tb.at("scalars").at(tag);
      ASSERT_EQ(rows.size(), steps.size()) << dir << ": " << tag << " " << rows.dump();
      auto it = steps.begin();
      for (const auto& row : rows) {
        EXPECT_EQ(row[0].get<int64_t>(), it->first) << tag;
        EXPECT_EQ(row[1].get<double>(), static_cast<double>(static_cast<float>(it->second.first))) << tag;
        EXPECT_EQ(row[2].get<double>(), it->second.second) << tag;
        ++it;
      }
    }
    std::vector<int64_t> shown;
    for (const auto& row : tb.at("images").value("samples", nlohmann::json::array())) {
      const auto step = row[0].get<int64_t>();
      shown.push_back(step);
      char name[32];
      std::snprintf(name, sizeof(name), "step-%08lld.png", static_cast<long long>(step));
      EXPECT_EQ(row[3].get<std::string>(), file_digest((fs::path(dir) / "samples" / name).string())) << name;
    }
    EXPECT_EQ(shown, picture_steps) << dir;
  };
  expect_as_logged(out, 1, {2, 4, 6, 7});
  EXPECT_EQ(logged_losses(out).size(), 7u);

  o.resume.clear();
  run_training(config(run("off"), {"train.tensorboard=false", "train.max_steps=3", "train.ckpt_every=2",
                                  "train.keep_last=2"}),
               o);
  EXPECT_FALSE(fs::exists(fs::path(run("off")) / "tensorboard"));
  o.resume = run("off");  // from its newest checkpoint: nothing moves aside
  run_training(config(run("off"), {"train.max_steps=4", "train.keep_last=2"}), o);
  expect_as_logged(run("off"), 1, {});
  EXPECT_EQ(logged_losses(run("off")).size(), 4u);
  // Back to step 3 with the events off: those of step 4, now aside, are not left to show.
  ASSERT_EQ(RunDir(run("off")).checkpoint_steps(), (std::vector<int64_t>{3, 4}));
  o.resume = run("off") + "/checkpoints/step-00000003";
  run_training(config(run("off"), {"train.tensorboard=false", "train.max_steps=3"}), o);
  EXPECT_TRUE(fs::exists(fs::path(run("off")) / "metrics.after-step-3.jsonl"));
  EXPECT_EQ(logged_losses(run("off")).size(), 3u);
  size_t events = 0;
  for (const auto& e : fs::directory_iterator(fs::path(run("off")) / "tensorboard"))
    events += e.path().filename().string().rfind("events.out.tfevents.", 0) == 0;
  EXPECT_EQ(events, 0u);
}

// Start-up work each rank does on its own copy (training codes on a node-local disk) or rank 0
// alone (the tokenizer of the sample grids): a rank that fails, or sees other data, stops every
// rank at once with a message, instead of the others waiting in their first collective.
TEST_F(TrainerTest, RanksThatCannotReadOrDisagreeStopTogether) {
  const std::string mpirun = "OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1 "
                             "OMP_NUM_THREADS=1 timeout 300 mpirun --allow-run-as-root --oversubscribe -np 2 ";
  // Rank r reads node<r>/c.codes (the shell of each rank expands its rank).
  fs::create_directories(dir_ / "node0");
  fs::create_directories(dir_ / "node1");
  fs::copy_file(codes(), dir_ / "node0" / "c.codes");
  auto go = [&](const std::string& sets) {
    const std::string cmd = test::aim_binary() + " train " + tiny() + " --device cpu --set train.max_steps=2" +
                            " --set train.global_batch=8 --set train.micro_batch=4 --set data.num_workers=1 --out " +
                            run("r") + " --set data.codes=" + (dir_ / "node").string() +
                            "$OMPI_COMM_WORLD_RANK/c.codes" + sets;
    return test::run_shell(mpirun + "sh -c " + test::shell_quote(cmd));
  };
  // Rank 1's copy is missing.
  auto r = go("");
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("node1/c.codes"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("opening the training data: failed on another rank (its error is in its output); rank 0"),
            std::string::npos) << r.output;
  // Rank 1's copy holds other images (50, not 40).
  SyntheticCodesOptions more;
  more.classes = 10;
  more.per_class = 5;
  more.tokens = 64;
  more.vocab_size = 512;
  write_synthetic_codes((dir_ / "node1" / "c.codes").string(), more);
  r = go("");
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("the ranks do not see the same number of images (40 to 50; rank 1 sees 50)"),
            std::string::npos) << r.output;
  EXPECT_NE(r.output.find("rank 0 sees 40"), std::string::npos) << r.output;
  // The same data, but rank 0 cannot read the grids' tokenizer.
  fs::copy_file(codes(), dir_ / "node1" / "c.codes", fs::copy_options::overwrite_existing);
  r = go(" --set train.sample_every=1 --set vq.weights=" + run("missing_vq.safetensors"));
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("missing_vq.safetensors: no such file"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("loading vq.weights for the sample grids and FIDs: failed on another rank"),
            std::string::npos) << r.output;
  EXPECT_FALSE(RunDir(run("r")).latest().has_value());
}

// Rank 0's sample grid failing (here: a folder where the picture goes) is a warning; the run,
// with any other ranks waiting on rank 0, goes on and the next grid is drawn.
TEST_F(TrainerTest, AGridThatFailsIsAWarning) {
  fs::create_directories(fs::path(run("grid")) / "samples" / "step-00000001.png");
  TrainOptions o;
  testing::internal::CaptureStderr();
  const auto r = run_training(
      config(run("grid"), {"vq.weights=" + (test::fixtures_dir() / "vq/vq16_tiny/model.safetensors").string(),
                           "train.sample_every=1", "train.max_steps=2"}),
      o);
  const std::string said = testing::internal::GetCapturedStderr();
  EXPECT_EQ(r.steps, 2);
  EXPECT_NE(said.find("warning: samples not written, training goes on: "), std::string::npos) << said;
  EXPECT_TRUE(fs::is_regular_file(fs::path(run("grid")) / "samples" / "step-00000002.png"));
}

TEST_F(TrainerTest, ResumeRefusesAnotherArchitecture) {
  TrainOptions o;
  o.quiet = true;
  o.stop_after = 1;
  run_training(config(run("arch")), o);
  o.resume = run("arch");
  const auto msg = test::error_of([&] { run_training(config(run("arch"), {"model.n_layer=2"}), o); });
  EXPECT_NE(msg.find("model section differs from this run's config: model.n_layer 4 -> 2 (checkpoint -> this run)"),
            std::string::npos) << msg;
}

TEST_F(TrainerTest, ConfigurationErrorsNameTheKey) {
  TrainOptions o;
  o.quiet = true;
  auto msg = test::error_of([&] { run_training(config(run("e1"), {"train.global_batch=12", "train.micro_batch=8"}), o); });
  EXPECT_NE(msg.find("train.global_batch"), std::string::npos) << msg;
  msg = test::error_of([&] { run_training(config(run("e2"), {"data.codes="}), o); });
  EXPECT_NE(msg.find("no training data"), std::string::npos) << msg;
  msg = test::error_of([&] { run_training(config(run("e3"), {"train.global_batch=64", "train.micro_batch=4"}), o); });
  EXPECT_NE(msg.find("fewer than one global batch"), std::string::npos) << msg;
  msg = test::error_of([&] { run_training(config(run("e4"), {"model.vocab_size=256", "vq.codebook_size=256"}), o); });
  EXPECT_NE(msg.find("model.vocab_size is 256"), std::string::npos) << msg;
  msg = test::error_of([&] { run_training(config(run("e9"), {"data.images=" + run("images")}), o); });
  EXPECT_NE(msg.find("data.codes (" + codes() + ") and data.images (" + run("images") + ") are both set"),
            std::string::npos) << msg;
  msg = test::error_of([&] { run_training(config(run("e5"), {"model.num_classes=5"}), o); });
  EXPECT_NE(msg.find("model.num_classes is 5"), std::string::npos) << msg;
  // Held-out codes with no held-out loss to compute are said to do nothing.
  {
    testing::internal::CaptureStderr();
    TrainOptions loud;
    run_training(config(run("e8"), {"data.val_codes=" + codes(), "train.max_steps=1"}), loud);
    const std::string said = testing::internal::GetCapturedStderr();
    EXPECT_NE(said.find("data.val_codes is set but train.eval_every is 0"), std::string::npos) << said;
    // And the converse: held-out losses asked for, with no codes to compute them on.
    testing::internal::CaptureStderr();
    run_training(config(run("e10"), {"train.eval_every=1", "train.max_steps=1"}), loud);
    const std::string said2 = testing::internal::GetCapturedStderr();
    EXPECT_NE(said2.find("train.eval_every is 1 but data.val_codes is not set"), std::string::npos) << said2;
  }
  // The config's data.aug names the views the codes must hold (the synthetic codes have one).
  msg = test::error_of([&] { run_training(config(run("e6"), {"data.aug=tencrop"}), o); });
  EXPECT_NE(msg.find("data.aug: expected 'tencrop' (the config), but data.codes " + codes() + " holds 'none' views"),
            std::string::npos)
      << msg;
  EXPECT_EQ(run_training(config(run("e7"), {"data.aug=none", "train.max_steps=1"}), o).steps, 1);
}

TEST_F(TrainerTest, SigtermSavesAResumableCheckpointAndExitsZero) {
  // SIGUSR1 as well: mpirun forwards it to the ranks at once (SIGTERM it follows with SIGKILL
  // within a second), and batch systems send it ahead of a time limit.
  const std::string usr1 = run("usr1");
  const auto u = test::run_shell(aim("train " + tiny() + " " + cli_sets(usr1) + " --set train.max_steps=100000") +
                                 " > " + run("usr1.log") + " 2>&1 & pid=$!; for i in $(seq 1 600); do [ -s " + usr1 +
                                 "/metrics.jsonl ] && break; kill -0 $pid || break; sleep 0.1; done; "
                                 "kill -USR1 $pid; wait $pid; echo rc=$?");
  const std::string usr1_log = read_text(run("usr1.log"));
  EXPECT_NE(u.output.find("rc=0"), std::string::npos) << u.output << usr1_log;
  // Not a terminal: the handler writes nothing; the loop says it once the step is done.
  EXPECT_NE(usr1_log.find("[train] stop requested (User defined signal 1)"), std::string::npos) << usr1_log;
  EXPECT_TRUE(RunDir(usr1).latest().has_value()) << usr1_log;

  const std::string out = run("sig");
  const std::string cmd = aim("train " + tiny() + " " + cli_sets(out) + " --set train.max_steps=100000") +
                          " > " + run("sig.log") + " 2>&1 & pid=$!; "
                          "for i in $(seq 1 600); do [ -s " + out + "/metrics.jsonl ] && break; kill -0 $pid || break; sleep 0.1; done; "
                          "kill -TERM $pid; wait $pid; echo rc=$?";
  const auto r = test::run_shell(cmd);
  const std::string log = read_text(run("sig.log"));
  EXPECT_NE(r.output.find("rc=0"), std::string::npos) << r.output << log;
  EXPECT_NE(log.find("stop requested (Terminated)"), std::string::npos) << log;
  EXPECT_NE(log.find("interrupted at step"), std::string::npos) << log;
  const auto latest = RunDir(out).latest();
  ASSERT_TRUE(latest.has_value()) << log;
  const auto st = TrainerState::from_json(read_text(*latest + "/trainer_state.json"), "state");
  EXPECT_GE(st.step, 1);
  // It resumes from there.
  const auto again = test::run_shell(aim("train --resume " + out + " --set train.max_steps=" +
                                         std::to_string(st.step + 2)));
  EXPECT_EQ(again.code, 0) << again.output;
  EXPECT_NE(again.output.find("resumed"), std::string::npos) << again.output;
  EXPECT_NE(again.output.find("finished at step " + std::to_string(st.step + 2)), std::string::npos) << again.output;
}

TEST_F(TrainerTest, NonFiniteLossStopsAndKeepsTheLastGoodCheckpoint) {
  const std::string out = run("nan");
  // An absurd learning rate: step 1 is finite, its update makes every later forward overflow.
  const auto r = test::run_shell(aim("train " + tiny() + " " + cli_sets(out) +
                                     " --set train.max_steps=6 --set train.ckpt_every=1 --set optim.lr=1e30"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("non-finite"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("The last good checkpoint is"), std::string::npos) << r.output;
  const auto latest = RunDir(out).latest();
  ASSERT_TRUE(latest.has_value());
  const auto st = TrainerState::from_json(read_text(*latest + "/trainer_state.json"), "state");
  EXPECT_GE(st.step, 1);
  EXPECT_LT(st.step, 6);
  for (const auto& [k, v] : load(*latest, "model.safetensors"))
    EXPECT_TRUE(torch::isfinite(v).all().item<bool>()) << k;
  // With skip_nonfinite the run goes on, counting the skipped steps.
  // A skipped step is still a step: checkpointed when due, and a checkpoint after one resumes
  // (the optimizer made fewer steps than the trainer counts).
  const auto s = test::run_shell(aim("train " + tiny() + " " + cli_sets(run("skip")) +
                                     " --set train.max_steps=4 --set optim.lr=1e30 --set train.skip_nonfinite=true"
                                     " --set train.ckpt_every=3 --set train.keep_last=2"));
  EXPECT_EQ(s.code, 0) << s.output;
  EXPECT_NE(s.output.find("step skipped"), std::string::npos) << s.output;
  EXPECT_EQ(RunDir(run("skip")).checkpoint_steps(), (std::vector<int64_t>{3, 4}));
  const auto skipped = TrainerState::from_json(read_text(*RunDir(run("skip")).latest() + "/trainer_state.json"), "s");
  EXPECT_GE(skipped.skipped_steps, 1);
  const auto more = test::run_shell(aim("train --resume " + run("skip") + " --set train.max_steps=6"));
  EXPECT_EQ(more.code, 0) << more.output;
  EXPECT_NE(more.output.find("finished at step 6"), std::string::npos) << more.output;
}

TEST_F(TrainerTest, AResumeWithAnotherMicroBatchGoesOnWhereTheEpochStopped) {
  // 40 sequences, global batch 8: 5 steps per epoch. Stopped at step 3 (micro 4: 6 micro-batches
  // done), resumed with micro 2: the epoch goes on after its first 24 samples (micro-batch 12).
  TrainOptions o;
  o.quiet = true;
  const auto straight = run_training(config(run("straight"), {"train.max_steps=7"}), o);
  o.stop_after = 3;
  run_training(config(run("mb"), {"train.max_steps=7"}), o);
  o.stop_after = 0;
  o.resume = "auto";
  const auto resumed = run_training(config(run("mb"), {"train.max_steps=7", "train.micro_batch=2"}), o);
  const auto a = TrainerState::from_json(read_text(straight.checkpoint + "/trainer_state.json"), "a");
  const auto b = TrainerState::from_json(read_text(resumed.checkpoint + "/trainer_state.json"), "b");
  EXPECT_EQ(a.epoch, 1);
  EXPECT_EQ(b.epoch, a.epoch);
  EXPECT_EQ(b.batch * b.micro_batch, a.batch * a.micro_batch);  // the same samples of epoch 1 used
  EXPECT_EQ(b.samples_seen, a.samples_seen);
  EXPECT_EQ(b.data_samples, 40);
}

TEST_F(TrainerTest, HeldOutLossCoversEveryImageEvenFewerThanABatch) {
  // 3 held-out images with micro-batches of 4: every image counts, and the figure is the mean
  // token loss aim eval-loss gives for the saved weights (view 0).
  SyntheticCodesOptions vo;
  vo.classes = 3;
  vo.per_class = 1;
  vo.tokens = 64;
  vo.vocab_size = 512;
  vo.seed = 99;
  const std::string val = (dir_ / "val.codes").string();
  write_synthetic_codes(val, vo);
  TrainOptions o;
  o.quiet = true;
  run_training(config(run("val3"), {"data.val_codes=" + val, "train.eval_every=3"}), o);
  double logged = -1;
  std::ifstream in(fs::path(run("val3")) / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.value("kind", "") == "eval" && j.at("step").get<int64_t>() == 6) logged = j.at("val_loss").get<double>();
  }
  auto model = load_aim_model(find_checkpoint(run("val3")));
  model->eval();
  CodeDataset data(val);
  const auto expected = evaluate_code_loss(model, data, {});
  EXPECT_EQ(expected.images, 3);
  EXPECT_NEAR(logged, expected.nll, 1e-5 * expected.nll);

  // train.eval_batches 1 scores the first global batch (8) of 12 images, whatever the micro-batch
  // or rank layout (it used to cap each rank's micro-batches: 4 images at micro 4, 2 at micro 2).
  vo.classes = 4;
  vo.per_class = 3;
  const std::string val12 = (dir_ / "val12.codes").string();
  write_synthetic_codes(val12, vo);
  auto val_loss = [&](const std::string& name, const std::vector<std::string>& sets) {
    std::vector<std::string> all = {"data.val_codes=" + val12, "train.eval_every=6", "train.max_steps=6"};
    all.insert(all.end(), sets.begin(), sets.end());
    run_training(config(run(name), all), o);
    std::ifstream f(fs::path(run(name)) / "metrics.jsonl");
    for (std::string line; std::getline(f, line);) {
      const auto j = nlohmann::json::parse(line);
      if (j.value("kind", "") == "eval") return j.at("val_loss").get<double>();
    }
    return -1.0;
  };
  const double micro4 = val_loss("cap4", {"train.eval_batches=1"});
  const double micro2 = val_loss("cap2", {"train.eval_batches=1", "train.micro_batch=2"});
  const double all12 = val_loss("all", {});
  EXPECT_NEAR(micro2, micro4, 1e-4 * micro4);
  EXPECT_GT(std::abs(all12 - micro4), 3e-4 * micro4) << "the cap took every image";
  // The 8 are spread over the 12 as aim eval-loss --max-images 8 takes them (an ImageFolder's
  // codes are in class order: the first 8 would be the first classes), not the first 8.
  auto cap_model = load_aim_model(find_checkpoint(run("cap4")));
  cap_model->eval();
  CodeDataset d12(val12);
  CodeLossOptions spread;
  spread.max_images = 8;
  EXPECT_NEAR(micro4, evaluate_code_loss(cap_model, d12, spread).nll, 1e-5 * micro4);
}

TEST_F(TrainerTest, ARunDirectoryIsContinuedOrLeftAlone) {
  const std::string out = run("course");
  auto go = [&](const std::string& args) { return test::run_shell(aim("train " + args)); };
  ASSERT_EQ(go(tiny() + " " + cli_sets(out) + " --set train.max_steps=6 --set train.ckpt_every=2" +
               " --set train.keep_last=3").code,
            0);
  // A new run into it is refused, naming the run that is there.
  const auto again = go(tiny() + " " + cli_sets(out) + " --set train.max_steps=6 --set train.seed=5");
  EXPECT_EQ(again.code, 1) << again.output;
  EXPECT_NE(again.output.find("train.out_dir " + out + ": already holds a run (latest checkpoint "),
            std::string::npos) << again.output;
  // Resumed from an earlier checkpoint: the later one is named, metrics past step 4 are moved
  // aside, and the log then holds each step once.
  const auto branch = go("--resume " + out + "/checkpoints/step-00000004 --set train.max_steps=7");
  EXPECT_EQ(branch.code, 0) << branch.output;
  EXPECT_NE(branch.output.find("holds 1 checkpoint(s) past step 4 (step 6)"), std::string::npos) << branch.output;
  EXPECT_TRUE(fs::exists(fs::path(out) / "metrics.after-step-4.jsonl"));
  EXPECT_EQ(logged_losses(out).size(), 7u);
  // Its samples need a tokenizer: synthetic codes come from none, so aim sample asks for --vq.
  const auto no_vq = test::run_shell(aim("sample --device cpu --ckpt " + out + " --class 1 --num 1 --out " + run("s.png")));
  EXPECT_NE(no_vq.code, 0);
  EXPECT_NE(no_vq.output.find("an aim train run without vq.weights"), std::string::npos) << no_vq.output;
  // Tokens alone need none (they are decoded later with --from-tokens --vq).
  const auto tokens_only =
      test::run_shell(aim("sample --device cpu --ckpt " + out + " --class 1 --num 2 --tokens " + run("t.safetensors")));
  EXPECT_EQ(tokens_only.code, 0) << tokens_only.output;
  SafetensorsFile tokens_file(run("t.safetensors"));
  EXPECT_EQ(tokens_file.get("tokens").sizes(), (std::vector<int64_t>{2, 64}));
  EXPECT_EQ(tokens_file.metadata().at("vq"), "none (tokens only)");
  // A moved run goes on where it now is, whatever its config.yaml says train.out_dir was.
  const std::string moved = run("moved");
  fs::rename(out, moved);
  const auto m = go("--resume " + moved + " --set train.max_steps=8");
  EXPECT_EQ(m.code, 0) << m.output;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_EQ(fs::path(RunDir(moved).latest().value()).filename(), "step-00000008");
  // A run whose EMA file is gone is refused rather than restarting the EMA unsaid.
  const std::string ema_run = run("ema");
  ASSERT_EQ(go(tiny() + " " + cli_sets(ema_run) + " --set train.max_steps=2 --set train.ema=true").code, 0);
  fs::remove(fs::path(*RunDir(ema_run).latest()) / "ema.safetensors");
  const auto lost = go("--resume " + ema_run + " --set train.max_steps=3");
  EXPECT_EQ(lost.code, 1) << lost.output;
  EXPECT_NE(lost.output.find("ema.safetensors: missing, but the checkpoint's run keeps an EMA"), std::string::npos)
      << lost.output;
  // Resumed into a folder holding another run: refused, that run untouched.
  const auto into = go("--resume " + moved + " --set train.max_steps=9 --out " + ema_run);
  EXPECT_EQ(into.code, 1) << into.output;
  EXPECT_NE(into.output.find("train.out_dir " + ema_run + ": already holds a run"), std::string::npos) << into.output;
  EXPECT_NE(into.output.find("resuming " + moved), std::string::npos) << into.output;
  EXPECT_EQ(RunDir(ema_run).checkpoint_steps(), (std::vector<int64_t>{2}));
  // Into a new folder (a branch of the run): its name taken as written, '#' and all.
  const std::string branch_dir = run("branch #2");
  const auto fork = go("--resume " + moved + " --set train.max_steps=9 --out '" + branch_dir + "'");
  EXPECT_EQ(fork.code, 0) << fork.output;
  EXPECT_EQ(fs::path(RunDir(branch_dir).latest().value()).filename(), "step-00000009");
  EXPECT_EQ(fs::path(RunDir(moved).latest().value()).filename(), "step-00000008");
  // Flags that contradict each other or do nothing are refused.
  const auto init = go("--resume " + moved + " --init " + ema_run);
  EXPECT_EQ(init.code, 1) << init.output;
  EXPECT_NE(init.output.find("--init " + ema_run + ": not used when resuming"), std::string::npos) << init.output;
  const auto twice = go(tiny() + " " + cli_sets(run("x")) + " --set train.out_dir=" + run("y"));
  EXPECT_EQ(twice.code, 1) << twice.output;
  EXPECT_NE(twice.output.find("and --set train.out_dir both name the run directory"), std::string::npos)
      << twice.output;
  const auto empty = go(tiny() + " --out ''");
  EXPECT_EQ(empty.code, 1) << empty.output;
  EXPECT_NE(empty.output.find("--out: expected a run directory, found ''"), std::string::npos) << empty.output;
}

TEST_F(TrainerTest, AFullDiskKeepsThePreviousCheckpoint) {
  const std::string out = run("full");
  const auto first = test::run_shell(aim("train " + tiny() + " " + cli_sets(out) + " --set train.max_steps=2"));
  ASSERT_EQ(first.code, 0) << first.output;
  // A file-size limit below the optimizer state's size makes the next save fail like a full disk.
  const auto r = test::run_shell("ulimit -f 200; " + aim("train --resume " + out + " --set train.max_steps=4"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("saving the checkpoint of step 4"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("step-00000002 is intact"), std::string::npos) << r.output;
  EXPECT_EQ(fs::path(RunDir(out).latest().value()).filename(), "step-00000002");
  EXPECT_EQ(RunDir(out).checkpoint_steps(), (std::vector<int64_t>{2}));
}

TEST_F(TrainerTest, TwoRanksUnderMpirunMatchOneRank) {
  // Same global batch (8): one rank x micro 4 x 2 accumulation vs two ranks x micro 2 x 2. No
  // random draws (class and token dropout off), so both see the same 8 sequences per step and
  // differ only by floating-point summation order. On the CPU (Gloo), so that a machine with one
  // GPU runs it too (NCCL needs a GPU per rank). The two ranks recompute every block's
  // activations: its parameters' gradients then arrive through the recomputing node, which the
  // gradient all-reduce's hooks must see as they see the plain backward's (alone, recomputing
  // gives the same bits: RecomputedActivationsGiveTheSameRunBitForBit).
  const std::string common =
      " --device cpu --set train.max_steps=4 --set model.class_dropout=0 --set optim.lr=1e-3";
  const auto one = test::run_shell(aim("train " + tiny() + " " + cli_sets(run("one")) + common));
  ASSERT_EQ(one.code, 0) << one.output;
  const std::string mpi_env =
      "OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1 ";
  const auto two = test::run_shell(mpi_env + "mpirun --allow-run-as-root --oversubscribe -np 2 " +
                                   aim("train " + tiny() + " " + cli_sets(run("two")) + common +
                                       " --set train.micro_batch=2 --set train.recompute_every=1"));
  ASSERT_EQ(two.code, 0) << two.output;
  EXPECT_NE(two.output.find("2 rank(s) x micro 2 x 2 accumulation"), std::string::npos) << two.output;
  EXPECT_NE(two.output.find("parameters identical on all 2 ranks"), std::string::npos) << two.output;
  EXPECT_NE(two.output.find("activations recomputed in the backward"), std::string::npos) << two.output;
  const auto a = load(RunDir(run("one")).latest().value(), "model.safetensors");
  const auto b = load(RunDir(run("two")).latest().value(), "model.safetensors");
  // Adam moves every element by about lr per step whatever the gradient's size, so summation
  // order noise in a near-zero gradient can shift an element by a fraction of lr per step (seen:
  // 1.2% of the largest possible movement, lr x steps = 4e-3, in one in_proj element with the CPU
  // scan kernel). Allow 3%; a missing all-reduce or a wrong average moves elements by ~lr.
  const double tol = 0.03 * 1e-3 * 4;
  for (const auto& [k, v] : a) test::expect_close("1 rank vs 2 ranks: " + k, b.at(k), v, tol, false);
  // The first step's loss (same weights, same 8 sequences) agrees to rounding.
  auto first_loss = [&](const std::string& r) {
    std::ifstream in(fs::path(r) / "metrics.jsonl");
    std::string line;
    std::getline(in, line);
    const auto pos = line.find("\"loss\":");
    return std::stod(line.substr(pos + 7));
  };
  EXPECT_NEAR(first_loss(run("one")), first_loss(run("two")), 1e-5);
  // Ranks that find different checkpoints (two out_dirs here, as node-local disks would give) all
  // stop at once, naming both, instead of training from different states or waiting on each
  // other's collectives.
  const std::string again = " --set train.micro_batch=2 --resume auto";
  const auto split = test::run_shell(mpi_env + "timeout 300 mpirun --allow-run-as-root --oversubscribe -np 1 " +
                                     aim("train " + tiny() + " " + cli_sets(run("one")) + common + again) +
                                     " : -np 1 " + aim("train " + tiny() + " " + cli_sets(run("elsewhere")) + common + again));
  EXPECT_NE(split.code, 0);
  EXPECT_NE(split.output.find("the ranks found different checkpoints (from no checkpoint (a new run) to step 4)"),
            std::string::npos) << split.output;
}

}  // namespace
}  // namespace aim::train
