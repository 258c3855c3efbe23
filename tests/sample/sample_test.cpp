// Sampling: the token-selection op against its definition, generation against the parallel
// forward, independence from batch size, and `aim sample` as users run it.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <functional>

#include "aim/core/config.h"
#include "aim/core/safetensors.h"
#include "aim/data/image.h"
#include "aim/model/aim.h"
#include "aim/model/loader.h"
#include "aim/ops/sampling.h"
#include "aim/sample/generate.h"
#include "aim/sample/plan.h"
#include "test_util.h"

namespace aim {
namespace {

namespace fs = std::filesystem;

TEST(SamplePlan, BalancedLabelsHoldEveryClassInEveryInceptionScoreSplit) {
  // 50 per class of 1000, shuffled by the seed: each of the ADM evaluator's consecutive IS
  // splits of 5000 sees (nearly) every class, as with the published randomly ordered samples.
  const auto labels = plan_labels("balanced", 50000, 1000, 7);
  std::vector<int64_t> count(1000, 0);
  for (int64_t l : labels) ++count[static_cast<size_t>(l)];
  EXPECT_TRUE(std::all_of(count.begin(), count.end(), [](int64_t c) { return c == 50; }));
  for (size_t split = 0; split < 10; ++split) {
    std::vector<bool> seen(1000, false);
    for (size_t i = split * 5000; i < (split + 1) * 5000; ++i) seen[static_cast<size_t>(labels[i])] = true;
    EXPECT_GT(std::count(seen.begin(), seen.end(), true), 980) << "split " << split;
  }
  EXPECT_EQ(plan_labels("balanced", 50000, 1000, 7), labels);
  EXPECT_NE(plan_labels("balanced", 50000, 1000, 8), labels);
}

TEST(SamplePlan, ClassNamesMatchWholeNamesAndRefuseAmbiguity) {
  auto expect_error = [](const std::function<void()>& f, const std::vector<std::string>& parts) {
    const std::string message = test::error_of(f);
    EXPECT_FALSE(message.empty()) << "no aim::Error thrown; expected one mentioning '" << parts.front() << "'";
    for (const auto& p : parts) EXPECT_NE(message.find(p), std::string::npos) << "lacks '" << p << "': " << message;
  };
  // A plain names file: a line's words are one name ("tiger" is not the first word of "tiger shark").
  const std::vector<std::string> plain{"tench", "goldfish", "great white shark", "tiger shark", "tiger"};
  EXPECT_EQ(parse_class_flag("tiger", 1, 5, plain, 0), std::vector<int64_t>{4});
  EXPECT_EQ(parse_class_flag("Tiger Shark, GREAT WHITE SHARK", 2, 5, plain, 0), (std::vector<int64_t>{3, 3, 2, 2}));
  expect_error([&] { parse_class_flag("great", 1, 5, plain, 0); }, {"--class 'great'", "not a class id nor a name"});
  // Synonym lists, with or without a leading WordNet id; a first synonym wins over another
  // line's later one; a name two lines give first is refused.
  const std::vector<std::string> synonyms{"n01440764 tench, Tinca tinca", "crane", "goldfish, Carassius auratus",
                                          "n03126707 crane", "tinca, a fish named first elsewhere"};
  EXPECT_EQ(parse_class_flag("tench", 1, 5, synonyms, 0), std::vector<int64_t>{0});
  EXPECT_EQ(parse_class_flag("n01440764", 1, 5, synonyms, 0), std::vector<int64_t>{0});
  EXPECT_EQ(parse_class_flag("carassius auratus", 1, 5, synonyms, 0), std::vector<int64_t>{2});
  EXPECT_EQ(parse_class_flag("goldfish, Carassius auratus", 1, 5, std::vector<std::string>{"goldfish, Carassius auratus"}, 0)
                .size(),
            2u);  // (--class splits at commas: two names of class 0)
  EXPECT_EQ(parse_class_flag("tinca", 1, 5, synonyms, 0), std::vector<int64_t>{4});
  expect_error([&] { parse_class_flag("crane", 1, 5, synonyms, 0); },
               {"--class 'crane'", "names 2 classes", "1 ('crane')", "3 ('n03126707 crane')", "HINT: give the class id"});
  // Ids: in range, the null class refused, an absurd number named rather than thrown by stoll.
  expect_error([&] { parse_class_flag("5", 1, 5, plain, 0); }, {"--class 5", "[0, 5)", "null class"});
  expect_error([&] { parse_class_flag("99999999999999999999", 1, 5, plain, 0); }, {"--class 99999999999999999999", "[0, 5)"});
  expect_error([&] { parse_class_flag("tiger", 1, 4, plain, 0); }, {"--class 'tiger'", "class 4", "beyond the model's 4"});
  expect_error([&] { parse_class_flag("tench", 1, 5, {}, 0); }, {"--class 'tench'", "no --class-names file"});
}

TEST(SampleTokens, GreedyTopKAndTopPFollowTheirDefinitions) {
  torch::manual_seed(0);
  auto logits = torch::randn({3, 50}) * 2;
  auto u = torch::rand({3}, torch::kDouble);
  EXPECT_TRUE(torch::equal(ops::sample_tokens(logits, 1.0, 1, 1.0, u), logits.argmax(-1)));
  // Stratified uniforms: the draw frequencies equal the filtered softmax up to 1 / M.
  const int64_t m = 20000;
  auto row = logits[0].unsqueeze(0).expand({m, 50}).contiguous();
  auto grid = (torch::arange(m, torch::kDouble) + 0.5) / m;
  for (auto [temp, k, p] : {std::tuple{1.0, int64_t{0}, 1.0}, std::tuple{0.7, int64_t{5}, 1.0},
                            std::tuple{1.3, int64_t{0}, 0.8}, std::tuple{1.0, int64_t{10}, 0.5}}) {
    auto tokens = ops::sample_tokens(row, temp, k, p, grid);
    auto freq = torch::bincount(tokens, {}, 50).to(torch::kDouble) / m;
    // The definition: temperature, keep the k largest, drop the unlikely tail of mass <= 1 - p.
    auto x = logits[0].to(torch::kDouble) / temp;
    if (k > 0) {
      auto kth = std::get<0>(x.topk(k)).min();
      x = x.masked_fill(x < kth, -INFINITY);
    }
    auto probs = torch::softmax(x, 0);
    if (p < 1.0) {
      auto sorted = probs.sort(0, false);
      auto cum = std::get<0>(sorted).cumsum(0);
      auto drop = cum <= (1.0 - p);
      drop[49] = false;
      auto mask = torch::zeros_like(drop).scatter(0, std::get<1>(sorted), drop);
      probs = torch::softmax(x.masked_fill(mask, -INFINITY), 0);
    }
    const double err = (freq - probs).abs().max().item<double>();
    std::printf("    temperature %.1f top-k %lld top-p %.2f: max |frequency - probability| %.2e\n", temp,
                (long long)k, p, err);
    EXPECT_LT(err, 2.0 / m);
    EXPECT_EQ((freq.gt(0) & probs.eq(0)).sum().item<int64_t>(), 0) << "a filtered token was drawn";
  }
}

/// The definition of guidance confined to the conditional nucleus, written independently of the
/// op: a token stays when the conditional mass of the tokens ranked above it is below p.
torch::Tensor nucleus_guided(const torch::Tensor& cond, const torch::Tensor& uncond, double scale, double p) {
  auto guided = (uncond + (cond - uncond) * scale).to(torch::kDouble);
  if (p >= 1.0) return guided;
  auto probs = torch::softmax(cond.to(torch::kDouble), -1);
  for (int64_t b = 0; b < cond.size(0); ++b) {
    for (int64_t v = 0; v < cond.size(1); ++v) {
      const double above = probs[b].masked_select(probs[b] > probs[b][v]).sum().item<double>();
      if (above >= p) guided[b][v] = -INFINITY;
    }
  }
  return guided;
}

TEST(SampleTokens, GuidanceConfinedToTheConditionalNucleus) {
  torch::manual_seed(3);
  auto cond = torch::randn({4, 64}) * 2, uncond = torch::randn({4, 64}) * 2;
  // A tail token that guidance alone would make the favourite: almost ruled out by the
  // conditional model (-8), far less likely under the unconditional one (-30).
  cond[0][5] = -8.0;
  uncond[0][5] = -30.0;
  const double scale = 4.0;
  EXPECT_EQ(ops::cfg_combine(cond, uncond, scale)[0].argmax().item<int64_t>(), 5);
  EXPECT_TRUE(torch::equal(ops::cfg_combine_nucleus(cond, uncond, scale, 1.0), ops::cfg_combine(cond, uncond, scale)));
  for (double p : {0.99, 0.9, 0.5, 1e-6}) {
    auto got = ops::cfg_combine_nucleus(cond, uncond, scale, p).to(torch::kDouble);
    auto want = nucleus_guided(cond, uncond, scale, p);
    EXPECT_TRUE(torch::equal(torch::isinf(got), torch::isinf(want))) << "p " << p;
    auto kept = ~torch::isinf(want);
    EXPECT_LT((got.masked_select(kept) - want.masked_select(kept)).abs().max().item<double>(), 1e-5) << "p " << p;
    // The conditional favourite always stays; the boosted tail token never does.
    EXPECT_TRUE(kept.gather(1, cond.argmax(1, true)).all().item<bool>()) << "p " << p;
    EXPECT_FALSE(kept[0][5].item<bool>()) << "p " << p;
  }
  // bf16 logits are taken in fp32, as guidance is.
  auto b = ops::cfg_combine_nucleus(cond.to(torch::kBFloat16), uncond.to(torch::kBFloat16), scale, 0.9);
  EXPECT_EQ(b.scalar_type(), torch::kFloat);
  EXPECT_THROW(ops::cfg_combine_nucleus(cond, uncond, scale, 0.0), c10::Error);
}

class Generation : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto dir = test::fixtures_dir() / "aim" / "mamba2_tiny";
    model_ = load_aim_model(find_checkpoint(dir.string()));
  }
  AimModel model_{nullptr};
};

TEST_F(Generation, GreedyEqualsTheArgmaxChainOfTheParallelForward) {
  auto labels = torch::tensor({int64_t{1}, int64_t{7}}, torch::kLong);
  for (auto [cfg, cfg_top_p] : {std::pair{1.0, 1.0}, std::pair{3.0, 1.0}, std::pair{3.0, 0.3}}) {
    SamplingOptions o;
    o.top_k = 1;
    o.cfg = cfg;
    o.cfg_top_p = cfg_top_p;
    auto tokens = generate_tokens(model_, labels, {0, 1}, o);
    const int64_t len = tokens.size(1);
    torch::NoGradGuard no_grad;
    auto pos = torch::arange(len - 1, torch::kLong) + model_->config.decode_position_offset;
    auto cond = model_->forward(tokens.narrow(1, 0, len - 1), labels, pos);
    auto logits = cond;
    if (cfg != 1.0) {
      auto uncond = model_->forward(tokens.narrow(1, 0, len - 1), torch::full_like(labels, model_->null_class()), pos);
      logits = nucleus_guided(cond.flatten(0, 1), uncond.flatten(0, 1), cfg, cfg_top_p).view(cond.sizes());
    }
    EXPECT_TRUE(torch::equal(logits.argmax(-1), tokens)) << "cfg " << cfg << " cfg_top_p " << cfg_top_p;
  }
}

TEST_F(Generation, SamplesDoNotDependOnTheBatch) {
  SamplingOptions o;
  o.cfg = 2.5;
  o.seed = 11;
  auto labels = torch::tensor({int64_t{0}, int64_t{3}, int64_t{3}, int64_t{9}}, torch::kLong);
  auto all = generate_tokens(model_, labels, {10, 11, 12, 13}, o);
  auto first = generate_tokens(model_, labels.narrow(0, 0, 1), {10}, o);
  auto rest = generate_tokens(model_, labels.narrow(0, 1, 3), {11, 12, 13}, o);
  EXPECT_TRUE(torch::equal(all, torch::cat({first, rest})));
  // Same class, different sample index: different images.
  EXPECT_FALSE(torch::equal(all[1], all[2]));
  o.seed = 12;
  EXPECT_FALSE(torch::equal(all, generate_tokens(model_, labels, {10, 11, 12, 13}, o)));
  o.cfg_top_p = 0.9;
  auto nucleus = generate_tokens(model_, labels, {10, 11, 12, 13}, o);
  EXPECT_TRUE(torch::equal(nucleus, torch::cat({generate_tokens(model_, labels.narrow(0, 0, 2), {10, 11}, o),
                                                generate_tokens(model_, labels.narrow(0, 2, 2), {12, 13}, o)})));
}

// A prompt is read in one parallel pass (prefill) and the rest drawn as without it: given the first
// P tokens of a sequence, the sampler draws that sequence's remaining tokens. In fp64, so the
// prefill's and the steps' different rounding cannot move a draw across a boundary.
TEST_F(Generation, APromptIsContinuedAsIfItHadBeenDrawn) {
  model_->to(torch::kDouble);
  auto labels = torch::tensor({int64_t{1}, int64_t{7}, int64_t{7}}, torch::kLong);
  const std::vector<int64_t> ids{4, 5, 9};
  const int64_t len = model_->config.num_tokens;
  for (double cfg : {1.0, 2.5}) {
    SamplingOptions o;
    o.cfg = cfg;
    o.seed = 3;
    o.top_p = 0.95;
    const auto full = generate_tokens(model_, labels, ids, o);
    for (int64_t given : {int64_t{1}, int64_t{17}, len - 1}) {
      const auto prompt = full.narrow(1, 0, given).contiguous();
      EXPECT_TRUE(torch::equal(generate_tokens(model_, labels, ids, o, nullptr, prompt), full))
          << "cfg " << cfg << ", " << given << " tokens given";
    }
    // Another prompt: kept as given, and the continuation differs from the unprompted one.
    auto other = (full.narrow(1, 0, 20) + 1).remainder(model_->config.vocab_size);
    const auto cont = generate_tokens(model_, labels, ids, o, nullptr, other);
    EXPECT_TRUE(torch::equal(cont.narrow(1, 0, 20), other));
    EXPECT_FALSE(torch::equal(cont.narrow(1, 20, len - 20), full.narrow(1, 20, len - 20))) << "cfg " << cfg;
  }
  SamplingOptions o;
  auto expect_error = [&](const torch::Tensor& prompt, const std::string& what) {
    try {
      generate_tokens(model_, labels, ids, o, nullptr, prompt);
      ADD_FAILURE() << "accepted: " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  expect_error(torch::zeros({3, len}, torch::kLong), str_cat("a prompt of ", len, " tokens; expected 1 to ", len - 1));
  expect_error(torch::zeros({2, 4}, torch::kLong), "the prompt must be [3, P] tokens");
  expect_error(torch::full({3, 4}, model_->config.vocab_size, torch::kLong), "prompt tokens outside the vocabulary");
}

test::RunResult run(const std::string& cmd) { return test::run_shell(cmd); }

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

class SampleCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("aim_sample_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    ckpt_ = (test::fixtures_dir() / "aim" / "mamba2_tiny").string();
    base_ = test::aim_binary() + " sample --device cpu --ckpt " + ckpt_ + " --vq-config " +
            test::source_dir() + "/configs/fixture_tiny_vq.json ";
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string p(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
  std::string ckpt_, base_;
};

TEST_F(SampleCli, GridNpzAndTokensAndTheirAgreement) {
  auto r = run(base_ + "--class 1,4 --num 3 --cfg 3 --seed 5 --batch-size 4 --out " + p("grid.png") +
               " --npz " + p("s.npz") + " --tokens " + p("t.safetensors") + " --outdir " + p("png"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("settings: cfg 3"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(p("grid.png")));
  EXPECT_TRUE(fs::exists(p("png/000005_class4.png")));
  EXPECT_FALSE(fs::exists(p("s.npz.parts")));
  const std::string check = test::python() + " -c \"import numpy as np; d = np.load('" + p("s.npz") +
                            "'); a = d['arr_0']; print(a.shape, a.dtype, d['arr_1'].tolist(), bytes(d['aim_settings']).decode())\"";
  auto np = run(check);
  EXPECT_EQ(np.code, 0) << np.output;
  EXPECT_NE(np.output.find("(6, 128, 128, 3) uint8 [1, 1, 1, 4, 4, 4]"), std::string::npos) << np.output;
  EXPECT_NE(np.output.find("\"cfg\":\"3.000000\""), std::string::npos) << np.output;
  // Two ranks (mpirun's variables) with another batch size give the same tokens.
  auto env = [](int rank) {
    return "OMPI_COMM_WORLD_RANK=" + std::to_string(rank) + " OMPI_COMM_WORLD_SIZE=2 ";
  };
  const std::string two = base_ + "--class 1,4 --num 3 --cfg 3 --seed 5 --batch-size 2 --tokens " + p("t2.safetensors");
  auto r2 = run("(" + env(1) + two + " > " + p("rank1.log") + " 2>&1 &); " + env(0) + two);
  ASSERT_EQ(r2.code, 0) << r2.output;
  EXPECT_TRUE(torch::equal(load_safetensors(p("t.safetensors"))["tokens"], load_safetensors(p("t2.safetensors"))["tokens"]));
  // Decoding the saved tokens reproduces the npz images.
  auto r3 = run(test::aim_binary() + " sample --device cpu --from-tokens " + p("t.safetensors") + " --vq " + ckpt_ +
                " --vq-config " + test::source_dir() + "/configs/fixture_tiny_vq.json --npz " + p("again.npz"));
  ASSERT_EQ(r3.code, 0) << r3.output;
  auto cmp = run(test::python() + " -c \"import numpy as np; a = np.load('" + p("s.npz") +
                 "')['arr_0']; b = np.load('" + p("again.npz") + "')['arr_0']; print('same' if (a == b).all() else 'differ')\"");
  EXPECT_NE(cmp.output.find("same"), std::string::npos) << cmp.output;
}

TEST_F(SampleCli, RankZeroStopsForARankThatWentQuietAndWaitsForOneThatIsSlow) {
  // A rank killed outright (the out-of-memory killer; srun without --kill-on-bad-exit does not
  // end the job) leaves no failure marker: rank 0 stops once its heartbeat has been quiet for
  // AIM_RANK_SILENCE_S (here 1.5 s, beats every 0.3 s), not at the job's time limit.
  auto env = [](int rank, bool timeout = true) {
    return "AIM_RANK_SILENCE_S=1.5 OMP_NUM_THREADS=1 OMPI_COMM_WORLD_RANK=" + std::to_string(rank) +
           " OMPI_COMM_WORLD_SIZE=2 " + (timeout ? "timeout 300 " : "");
  };
  // 256 batches of 2: a rank's half takes seconds, several times the silence limit.
  const std::string args = "--num-samples 512 --labels random --batch-size 2 --seed 3 ";
  // Rank 1 never started.
  const std::string quiet = base_ + args + "--work-dir " + p("work_q") + " --tokens " + p("q.safetensors");
  auto alone = run(env(0) + quiet);
  EXPECT_EQ(alone.code, 1) << alone.output;
  EXPECT_NE(alone.output.find("rank 1 has not been heard from for "), std::string::npos) << alone.output;
  EXPECT_NE(alone.output.find("no heartbeat " + p("work_q/rank-1.alive") + " appeared) while batch 1 of 256 is missing"),
            std::string::npos) << alone.output;
  EXPECT_NE(alone.output.find("AIM_RANK_SILENCE_S sets how long a rank may be silent (now 1.5 s)"), std::string::npos)
      << alone.output;
  EXPECT_TRUE(fs::exists(p("work_q/part-0-2.safetensors"))) << "rank 0's own batches are kept";
  EXPECT_FALSE(fs::exists(p("q.safetensors")));
  // Then both: rank 0 has nothing left to draw and waits seconds for the living rank 1 (started
  // once rank 1's heartbeat shows, so a slow start on a loaded machine is not taken for death).
  auto both = run("(" + env(1) + quiet + " > " + p("rank1_q.log") + " 2>&1 &); for i in $(seq 1 600); do [ -e " +
                  p("work_q/rank-1.alive") + " ] && break; sleep 0.05; done; " + env(0) + quiet);
  EXPECT_EQ(both.code, 0) << both.output << slurp(p("rank1_q.log"));
  EXPECT_TRUE(fs::exists(p("q.safetensors")));
  EXPECT_FALSE(fs::exists(p("work_q"))) << "the work folder, heartbeats included, goes once the output is written";

  // Rank 1 killed with SIGKILL while drawing: its heartbeat stays, unchanged.
  const std::string killed = base_ + args + "--work-dir " + p("work_k") + " --tokens " + p("k.safetensors");
  auto kill = run(env(1, /*timeout=*/false) + killed + " > " + p("rank1_k.log") + " 2>&1 & pid=$!; for i in $(seq 1 600); do [ -e " +
                  p("work_k/rank-1.alive") + " ] && break; sleep 0.05; done; kill -KILL $pid; wait $pid; echo rc=$?");
  EXPECT_NE(kill.output.find("rc=137"), std::string::npos) << kill.output << slurp(p("rank1_k.log"));
  ASSERT_TRUE(fs::exists(p("work_k/rank-1.alive")));
  auto after = run(env(0) + killed);
  EXPECT_EQ(after.code, 1) << after.output;
  EXPECT_NE(after.output.find("rank 1 has not been heard from for "), std::string::npos) << after.output;
  EXPECT_NE(after.output.find("(its heartbeat " + p("work_k/rank-1.alive") + " has not changed)"), std::string::npos)
      << after.output;
}

TEST_F(SampleCli, AKilledRunResumesWithoutRedoingFinishedBatches) {
  const std::string args = "--num-samples 20 --labels balanced --seed 2 --batch-size 4 ";
  auto full = run(base_ + args + "--tokens " + p("full.safetensors"));
  ASSERT_EQ(full.code, 0) << full.output;
  // Only rank 1 of 2 ran (its batches 1 and 3 are on disk), then the job died.
  auto partial = run("OMPI_COMM_WORLD_RANK=1 OMPI_COMM_WORLD_SIZE=2 " + base_ + args + "--work-dir " + p("work") +
                     " --tokens " + p("resumed.safetensors"));
  ASSERT_EQ(partial.code, 0) << partial.output;
  EXPECT_TRUE(fs::exists(p("work/part-4-4.safetensors")));
  EXPECT_FALSE(fs::exists(p("resumed.safetensors")));
  // Finished batches of other settings or labels are refused, not mixed in.
  for (const auto& [other, key] : {std::pair<std::string, std::string>{"--cfg 4 ", "cfg"},
                                   {"--cfg-top-p 0.5 ", "cfg_top_p"}, {"--temperature 0.5 ", "temperature"},
                                   {"--decode-position-offset 0 ", "decode_position_offset"},
                                   // the finished batches hold tokens only; this run decodes images
                                   {"--npz " + p("x.npz") + " ", "vq"}}) {
    auto mixed = run(base_ + args + other + "--work-dir " + p("work") + " --tokens " + p("resumed.safetensors"));
    EXPECT_NE(mixed.code, 0) << other;
    EXPECT_NE(mixed.output.find("sampled with " + key + " "), std::string::npos) << other << "\n" << mixed.output;
    EXPECT_FALSE(fs::exists(p("resumed.safetensors")));
    EXPECT_FALSE(fs::exists(p("work/part-0-4.safetensors"))) << other << ": wrote a batch before refusing";
  }
  // Two ranks where rank 1 finds a finished batch sampled otherwise (cfg 4) and stops with that
  // error before making its missing one: rank 0, having made its own batches, stops too instead
  // of waiting for that batch for ever (a launcher that does not end the job when one rank fails).
  {
    const std::string other = base_ + args + "--cfg 4 --work-dir " + p("work4") + " --tokens " + p("t4.safetensors");
    ASSERT_EQ(run("OMPI_COMM_WORLD_RANK=1 OMPI_COMM_WORLD_SIZE=2 " + other).code, 0);
    ASSERT_TRUE(fs::remove(p("work4/part-12-4.safetensors")));
    const std::string cmd = base_ + args + "--work-dir " + p("work4") + " --tokens " + p("t4.safetensors");
    auto both = run("(OMPI_COMM_WORLD_RANK=1 OMPI_COMM_WORLD_SIZE=2 timeout 300 " + cmd + " > " + p("rank1.log") +
                    " 2>&1 &) ; OMPI_COMM_WORLD_RANK=0 OMPI_COMM_WORLD_SIZE=2 timeout 300 " + cmd);
    EXPECT_EQ(both.code, 1) << both.output;
    EXPECT_NE(both.output.find("rank 1 stopped with an error"), std::string::npos) << both.output;
    EXPECT_TRUE(fs::exists(p("work4/part-0-4.safetensors"))) << "rank 0's own batches are kept";
    EXPECT_FALSE(fs::exists(p("t4.safetensors")));
  }
  // Batches cut for another --batch-size would be neither reused nor kept: refused.
  auto rebatched = run(base_ + "--num-samples 20 --labels balanced --seed 2 --batch-size 8 --work-dir " + p("work") +
                       " --tokens " + p("resumed.safetensors"));
  EXPECT_NE(rebatched.code, 0);
  EXPECT_NE(rebatched.output.find("holds finished batches of another --batch-size"), std::string::npos)
      << rebatched.output;
  auto relabelled = run(base_ + "--num-samples 20 --labels random --seed 2 --batch-size 4 --work-dir " + p("work") +
                        " --tokens " + p("resumed.safetensors"));
  EXPECT_NE(relabelled.code, 0);
  EXPECT_NE(relabelled.output.find("other class labels"), std::string::npos) << relabelled.output;
  // The same checkpoint named by another path (a trailing slash) is the same: its batches are reused.
  std::string respelled = base_;
  respelled.replace(respelled.find(ckpt_), ckpt_.size(), ckpt_ + "/");
  auto resumed = run(respelled + args + "--work-dir " + p("work") + " --tokens " + p("resumed.safetensors"));
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("12 new"), std::string::npos) << resumed.output;  // 8 of 20 were done
  EXPECT_TRUE(torch::equal(load_safetensors(p("full.safetensors"))["tokens"],
                           load_safetensors(p("resumed.safetensors"))["tokens"]));
  EXPECT_FALSE(fs::exists(p("work")));
  // Batches whose images another tokenizer decoded are refused too.
  const std::string decoded = args + "--work-dir " + p("work3") + " --npz " + p("d.npz");
  ASSERT_EQ(run("OMPI_COMM_WORLD_RANK=1 OMPI_COMM_WORLD_SIZE=2 " + base_ + decoded).code, 0);
  auto other_vq = run(base_ + decoded + " --vq " + (test::fixtures_dir() / "aim" / "mamba1_tiny").string());
  EXPECT_NE(other_vq.code, 0);
  EXPECT_NE(other_vq.output.find("sampled with vq "), std::string::npos) << other_vq.output;
}

// --prompt: each image cropped and tokenized, its top rows kept, --num continuations each, in
// the class given; the grid leads each row with the prompt. Errors name the flag.
TEST_F(SampleCli, PromptImagesAreContinued) {
  std::mt19937 rng(7);
  std::vector<std::string> files;
  for (int i = 0; i < 2; ++i) {
    Image im(150 + 20 * i, 140);  // not square, not the model's 128: center-cropped as extraction does
    for (auto& v : im.rgb) v = static_cast<uint8_t>(rng() & 255);
    files.push_back(p(str_cat("prompt", i, ".png")));
    write_png(files.back(), im);
  }
  const std::string prompt = "--prompt " + files[0] + "," + files[1] + " ";
  const std::string args = prompt + "--prompt-rows 3 --class 2,5 --num 2 --cfg 2 --seed 4 --batch-size 3 ";
  auto r = run(base_ + args + "--tokens " + p("t.safetensors") + " --out " + p("grid.png"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("continuing 2 prompt image(s), 2 sample(s) each, from their top 3 of 8 token rows"),
            std::string::npos) << r.output;
  auto saved = load_safetensors(p("t.safetensors"));
  ASSERT_EQ(saved["tokens"].sizes(), (std::vector<int64_t>{4, 64}));
  EXPECT_TRUE(torch::equal(saved["labels"].to(torch::kLong), torch::tensor(std::vector<int64_t>{2, 2, 5, 5})));
  // The prompts are the tokenizer's codes of the cropped images, their first 3 rows of 8.
  auto vq = load_vq_model(ckpt_, test::source_dir() + "/configs/fixture_tiny_vq.json").model;
  vq->eval();
  torch::NoGradGuard no_grad;
  const auto crops = to_tensor(std::vector<Image>{center_crop_arr(decode_image(files[0]), 128),
                                                  center_crop_arr(decode_image(files[1]), 128)});
  auto want_prompt = vq->encode(crops).narrow(1, 0, 24).repeat_interleave(2, 0);
  // --prompt-encoding strip: the top 3 x 16 pixel rows encoded alone (other codes: the encoder
  // sees the whole image otherwise).
  {
    auto strip = run(base_ + args + "--prompt-encoding strip --tokens " + p("strip.safetensors"));
    ASSERT_EQ(strip.code, 0) << strip.output;
    const auto want_strip = vq->encode(crops.narrow(2, 0, 48).contiguous()).repeat_interleave(2, 0);
    ASSERT_EQ(want_strip.size(1), 24);
    const auto got = load_safetensors(p("strip.safetensors"))["tokens"].to(torch::kLong).narrow(1, 0, 24);
    EXPECT_TRUE(torch::equal(got, want_strip));
    EXPECT_FALSE(torch::equal(got, want_prompt));
  }
  EXPECT_TRUE(torch::equal(saved["tokens"].to(torch::kLong).narrow(1, 0, 24), want_prompt));
  // The continuations are the library's, sample i drawing from (seed, i).
  auto model = load_aim_model(find_checkpoint(ckpt_));
  SamplingOptions o;
  o.cfg = 2;
  o.seed = 4;
  EXPECT_TRUE(torch::equal(saved["tokens"].to(torch::kLong),
                           generate_tokens(model, torch::tensor(std::vector<int64_t>{2, 2, 5, 5}), {0, 1, 2, 3}, o, nullptr,
                                           want_prompt)));
  // One row per prompt: the prompt's tile and its two continuations.
  const Image grid = decode_image(p("grid.png"));
  EXPECT_EQ(grid.width, 3 * 130 + 2);
  // The recorded settings name the prompts; a finished batch of other prompt rows is not reused.
  SafetensorsFile tf(p("t.safetensors"));
  EXPECT_EQ(tf.metadata().at("prompt_rows"), "3");
  EXPECT_NE(tf.metadata().at("prompt").find("prompt0.png"), std::string::npos);
  ASSERT_EQ(run("OMPI_COMM_WORLD_RANK=1 OMPI_COMM_WORLD_SIZE=2 " + base_ + args + "--work-dir " + p("work") +
                " --tokens " + p("r.safetensors")).code, 0);
  auto rows = run(base_ + prompt + "--prompt-rows 2 --class 2,5 --num 2 --cfg 2 --seed 4 --batch-size 3 --work-dir " +
                  p("work") + " --tokens " + p("r.safetensors"));
  EXPECT_NE(rows.code, 0);
  EXPECT_NE(rows.output.find("sampled with prompt_rows 3, but this run has prompt_rows 2"), std::string::npos)
      << rows.output;
  auto swapped = run(base_ + "--prompt " + files[1] + "," + files[0] +
                     " --prompt-rows 3 --class 2,5 --num 2 --cfg 2 --seed 4 --batch-size 3 --work-dir " + p("work") +
                     " --tokens " + p("r.safetensors"));
  EXPECT_NE(swapped.code, 0);
  EXPECT_NE(swapped.output.find("sampled with prompt "), std::string::npos) << swapped.output;
  auto plain = run(base_ + "--class 2,5 --num 2 --cfg 2 --seed 4 --batch-size 3 --work-dir " + p("work") +
                   " --tokens " + p("r.safetensors"));
  EXPECT_NE(plain.code, 0);
  EXPECT_NE(plain.output.find("but this run has prompt none"), std::string::npos) << plain.output;
  // Another --num pairs the same labels with other images (sample i continues prompt i / num).
  {
    const std::string one_class = prompt + "--class 2 --seed 4 --batch-size 2 --work-dir " + p("work_num") +
                                  " --tokens " + p("n.safetensors");
    ASSERT_EQ(run("OMPI_COMM_WORLD_RANK=1 OMPI_COMM_WORLD_SIZE=2 " + base_ + one_class + " --num 2").code, 0);
    auto renum = run(base_ + one_class + " --num 3");
    EXPECT_NE(renum.code, 0);
    EXPECT_NE(renum.output.find("sampled with prompt_num 2, but this run has prompt_num 3"), std::string::npos)
        << renum.output;
  }
  // A finished batch written before prompts existed (no "prompt" in its settings) continued none.
  {
    const std::string plain_args = "--class 2,5 --num 2 --cfg 2 --seed 4 --batch-size 2 --work-dir " + p("work_old") +
                                   " --tokens " + p("old.safetensors");
    ASSERT_EQ(run("OMPI_COMM_WORLD_RANK=1 OMPI_COMM_WORLD_SIZE=2 " + base_ + plain_args).code, 0);
    const std::string part = p("work_old/part-2-2.safetensors");
    SafetensorsFile f(part);
    auto meta = f.metadata();
    ASSERT_EQ(meta.erase("prompt"), 1u);
    meta.erase("format");
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (const auto& [k, v] : load_safetensors(part)) tensors.emplace_back(k, v);
    save_safetensors(part, tensors, meta);
    auto resumed = run(base_ + plain_args);
    ASSERT_EQ(resumed.code, 0) << resumed.output;
    EXPECT_NE(resumed.output.find("2 new"), std::string::npos) << resumed.output;
  }
  // One class for every image.
  auto one = run(base_ + prompt + "--class 6 --num 1 --tokens " + p("one.safetensors"));
  ASSERT_EQ(one.code, 0) << one.output;
  EXPECT_TRUE(torch::equal(load_safetensors(p("one.safetensors"))["labels"].to(torch::kLong),
                           torch::tensor(std::vector<int64_t>{6, 6})));
  const std::pair<std::string, std::string> bad[] = {
      {prompt + "--prompt-rows 8 --class 1", "--prompt-rows: expected 1 to 7 (the model's images are 8 x 8 tokens), found 8"},
      {prompt + "--prompt-rows 0 --class 1", "--prompt-rows: expected 1 to 7"},
      {"--prompt-rows 2 --class 1", "--prompt-rows: no --prompt images"},
      {"--prompt-encoding strip --class 1", "--prompt-encoding: no --prompt images"},
      {prompt + "--prompt-encoding half --class 1", "--prompt-encoding: expected image or strip, found 'half'"},
      {prompt + "--num-samples 4", "--prompt: the samples are --num continuations of each image"},
      {prompt + "--class 1,2,3", "--class: 3 classes for 2 --prompt images"},
      {prompt, "--prompt: give the class to continue in with --class"},
      {"--prompt " + p("missing.png") + " --class 1", "--prompt: "},
      {"--from-tokens " + p("t.safetensors") + " " + prompt, "--from-tokens decodes saved tokens: --prompt has no effect"},
  };
  for (const auto& [a, expect] : bad) {
    auto b = run(base_ + a + " --tokens " + p("bad.safetensors"));
    EXPECT_NE(b.code, 0) << a;
    EXPECT_NE(b.output.find(expect), std::string::npos) << a << "\n" << b.output;
    EXPECT_FALSE(fs::exists(p("bad.safetensors"))) << a;
  }
  auto missing = run(base_ + "--prompt " + p("missing.png") + " --class 1 --tokens " + p("bad.safetensors"));
  EXPECT_NE(missing.output.find("missing.png"), std::string::npos) << missing.output;
}

// --decode-position-offset replaces the checkpoint's setting (the fixture records the official 1):
// greedy tokens are the library's at that offset, and other than at the recorded one.
TEST_F(SampleCli, DecodePositionOffsetOverridesTheCheckpoint) {
  const std::string args = "--class 2,5 --num 1 --cfg 1 --top-k 1 ";
  auto zero = run(base_ + args + "--decode-position-offset 0 --tokens " + p("zero.safetensors"));
  ASSERT_EQ(zero.code, 0) << zero.output;
  auto recorded = run(base_ + args + "--tokens " + p("one.safetensors"));
  ASSERT_EQ(recorded.code, 0) << recorded.output;
  auto model = load_aim_model(find_checkpoint(ckpt_));
  ASSERT_EQ(model->config.decode_position_offset, 1);
  set_decode_position_offset(model, 0, "test");
  SamplingOptions o;
  o.cfg = 1;
  o.top_k = 1;
  const auto want = generate_tokens(model, torch::tensor({int64_t{2}, int64_t{5}}), {0, 1}, o);
  const auto got = load_safetensors(p("zero.safetensors"))["tokens"];
  EXPECT_TRUE(torch::equal(got, want));
  EXPECT_FALSE(torch::equal(got, load_safetensors(p("one.safetensors"))["tokens"]));
  auto bad = run(base_ + args + "--decode-position-offset 2 --tokens " + p("bad.safetensors"));
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.output.find("--decode-position-offset: expected 0 (training's positions) or 1"), std::string::npos)
      << bad.output;
}

// A run directory samples with its own `sample:` settings (what its training grids showed) unless
// a preset or a flag says otherwise.
TEST_F(SampleCli, ARunDirectorySamplesWithItsOwnSettings) {
  const auto run_dir = dir_ / "run";
  fs::create_directories(run_dir);
  // The language model only, as aim train writes it: the tokenizer is vq.weights (below).
  std::vector<std::pair<std::string, torch::Tensor>> lm;
  for (const auto& [k, v] : load_safetensors((fs::path(ckpt_) / "model.safetensors").string()))
    if (k.rfind("vqvae.", 0) != 0) lm.emplace_back(k, v);
  save_safetensors((run_dir / "model.safetensors").string(), lm, {});
  Config c;
  c.model = model_config_from_hf_json((fs::path(ckpt_) / "config.json").string());
  c.vq.codebook_size = c.model.vocab_size;
  c.data.image_size = 128;  // 8 x 8 codes of the 16x tokenizer
  c.sample.cfg_scale = 1.0;
  c.sample.top_k = 1;  // greedy: the tokens are the model's argmax chain
  c.vq.weights = ckpt_;  // the snapshot's vqvae.* tensors
  std::ofstream(run_dir / "config.yaml") << config_to_yaml(c);
  const std::string base = test::aim_binary() + " sample --device cpu --ckpt " + run_dir.string() + " --vq " + ckpt_ +
                           " --vq-config " + test::source_dir() + "/configs/fixture_tiny_vq.json --class 2,5 --num 1 ";
  auto own = run(base + "--tokens " + p("own.safetensors"));
  ASSERT_EQ(own.code, 0) << own.output;
  EXPECT_NE(own.output.find("settings: cfg 1, temperature 1, top-k 1"), std::string::npos) << own.output;
  EXPECT_NE(own.output.find("defaults from " + (run_dir / "config.yaml").string()), std::string::npos) << own.output;
  auto model = load_aim_model(find_checkpoint(run_dir.string()));
  SamplingOptions o;
  o.cfg = 1;
  o.top_k = 1;
  EXPECT_TRUE(torch::equal(load_safetensors(p("own.safetensors"))["tokens"],
                           generate_tokens(model, torch::tensor({int64_t{2}, int64_t{5}}), {0, 1}, o)));
  // Decoding saved tokens with the run as --ckpt takes the run's tokenizer (vq.weights), as its
  // sampling does, and gives the images --vq gives.
  const std::string decode = test::aim_binary() + " sample --device cpu --from-tokens " + p("own.safetensors") +
                             " --vq-config " + test::source_dir() + "/configs/fixture_tiny_vq.json ";
  auto by_run = run(decode + "--ckpt " + run_dir.string() + " --npz " + p("by_run.npz"));
  ASSERT_EQ(by_run.code, 0) << by_run.output;
  auto by_vq = run(decode + "--vq " + ckpt_ + " --npz " + p("by_vq.npz"));
  ASSERT_EQ(by_vq.code, 0) << by_vq.output;
  auto same = run(test::python() + " -c \"import numpy as np; a = np.load('" + p("by_run.npz") + "')['arr_0']; b = np.load('" +
                  p("by_vq.npz") + "')['arr_0']; print('same' if (a == b).all() else 'differ')\"");
  EXPECT_NE(same.output.find("same"), std::string::npos) << same.output;
  auto fid = run(base + "--preset fid --tokens " + p("fid.safetensors"));
  ASSERT_EQ(fid.code, 0) << fid.output;
  EXPECT_NE(fid.output.find("settings: cfg 1.75, temperature 1, top-k 0, top-p 1, cfg top-p 1"), std::string::npos)
      << fid.output;
  auto flag = run(base + "--cfg 3 --tokens " + p("flag.safetensors"));
  ASSERT_EQ(flag.code, 0) << flag.output;
  EXPECT_NE(flag.output.find("settings: cfg 3, temperature 1, top-k 1"), std::string::npos) << flag.output;
}

// --ssm-state bf16: a run with it completes and records the setting; a resume with the other
// state refuses the finished batches; the Mamba1 fixture samples with it too.
TEST_F(SampleCli, Bf16SsmStateIsASettingOfTheRun) {
  const std::string args = "--num-samples 10 --labels balanced --seed 3 --batch-size 4 ";
  auto bf16 = run(base_ + args + "--ssm-state bf16 --work-dir " + p("work") + " --tokens " + p("bf16.safetensors"));
  ASSERT_EQ(bf16.code, 0) << bf16.output;
  EXPECT_TRUE(fs::exists(p("bf16.safetensors")));
  auto partial = run("OMPI_COMM_WORLD_RANK=1 OMPI_COMM_WORLD_SIZE=2 " + base_ + args + "--ssm-state bf16 --work-dir " +
                     p("work2") + " --tokens " + p("x.safetensors"));
  ASSERT_EQ(partial.code, 0) << partial.output;
  auto mixed = run(base_ + args + "--work-dir " + p("work2") + " --tokens " + p("x.safetensors"));
  EXPECT_NE(mixed.code, 0);
  EXPECT_NE(mixed.output.find("sampled with ssm_state "), std::string::npos) << mixed.output;
  const auto mamba1 = (test::fixtures_dir() / "aim" / "mamba1_tiny").string();
  auto m1 = run(test::aim_binary() + " sample --device cpu --ckpt " + mamba1 + " --vq-config " +
                test::source_dir() + "/configs/fixture_tiny_vq.json --class 1 --ssm-state bf16 --tokens " +
                p("m1.safetensors"));
  EXPECT_EQ(m1.code, 0) << m1.output;
  EXPECT_TRUE(fs::exists(p("m1.safetensors")));
}

TEST_F(SampleCli, FromTokensDecodesTheFixtureImages) {
  auto golden = load_safetensors((fs::path(ckpt_) / "cases.safetensors").string());
  save_safetensors(p("fixture_tokens.safetensors"),
                   {{"tokens", golden["decode_tokens"]}, {"labels", golden["decode_labels"]}});
  auto r = run(test::aim_binary() + " sample --device cpu --from-tokens " + p("fixture_tokens.safetensors") +
               " --vq " + ckpt_ + " --vq-config " + test::source_dir() + "/configs/fixture_tiny_vq.json --npz " +
               p("decoded.npz"));
  ASSERT_EQ(r.code, 0) << r.output;
  // Sampled tokens carry their settings through a decode: the re-saved file keeps them.
  auto sampled = run(base_ + "--class 3 --num 2 --cfg 2.5 --seed 9 --tokens " + p("sampled.safetensors"));
  ASSERT_EQ(sampled.code, 0) << sampled.output;
  auto again = run(test::aim_binary() + " sample --device cpu --from-tokens " + p("sampled.safetensors") + " --vq " + ckpt_ +
                   " --vq-config " + test::source_dir() + "/configs/fixture_tiny_vq.json --tokens " +
                   p("resaved.safetensors"));
  ASSERT_EQ(again.code, 0) << again.output;
  const auto before = SafetensorsFile(p("sampled.safetensors")).metadata();
  const auto after = SafetensorsFile(p("resaved.safetensors")).metadata();
  EXPECT_EQ(after.at("cfg"), "2.500000");
  EXPECT_EQ(after.at("seed"), "9");
  // Sampling tokens alone loads no tokenizer; the decode records the one it used.
  EXPECT_EQ(before.at("vq"), "none (tokens only)");
  EXPECT_NE(after.at("vq").find("model.safetensors ("), std::string::npos) << after.at("vq");
  EXPECT_NE(after.at("weights").find("model.safetensors ("), std::string::npos) << after.at("weights");
  // --outdir: the same run again replaces its PNGs; an earlier run's that this one would not
  // replace (aim eval --samples would score them with these) and a file in the folder's place are
  // refused before the work.
  const std::string to_pngs = test::aim_binary() + " sample --device cpu --from-tokens " + p("sampled.safetensors") +
                              " --vq " + ckpt_ + " --vq-config " + test::source_dir() +
                              "/configs/fixture_tiny_vq.json --outdir " + p("pngs");
  for (int pass = 0; pass < 2; ++pass) {
    auto pngs = run(to_pngs);
    ASSERT_EQ(pngs.code, 0) << pngs.output;
    EXPECT_TRUE(fs::is_regular_file(p("pngs/000000_class3.png")) && fs::is_regular_file(p("pngs/000001_class3.png")));
  }
  std::ofstream(p("pngs/000002_class7.png")) << "an earlier run's";
  std::ofstream(p("pngs/notes.txt")) << "not a sample";
  auto stale = run(to_pngs);
  EXPECT_NE(stale.code, 0);
  EXPECT_NE(stale.output.find("--outdir " + p("pngs") + ": holds 1 sample PNG that this run would not replace "
                              "(000002_class7.png)"),
            std::string::npos) << stale.output;
  std::ofstream(p("a_file")) << "x";
  auto file = run(test::aim_binary() + " sample --device cpu --from-tokens " + p("sampled.safetensors") + " --vq " +
                  ckpt_ + " --vq-config " + test::source_dir() + "/configs/fixture_tiny_vq.json --outdir " + p("a_file"));
  EXPECT_NE(file.code, 0);
  EXPECT_NE(file.output.find("--outdir " + p("a_file") + ": exists and is not a folder"), std::string::npos)
      << file.output;
  // The official images, quantised the ADM way, against ours (rounding at a boundary may move one level).
  auto expected = (golden["decoded_images"] * 127.5 + 128).clamp(0, 255).to(torch::kUInt8).permute({0, 2, 3, 1});
  save_safetensors(p("expected.safetensors"), {{"images", expected.contiguous()}});
  auto cmp = run(test::python() + " -c \"import numpy as np; from safetensors.numpy import load_file; e = load_file('" +
                 p("expected.safetensors") + "')['images'].astype(int); a = np.load('" + p("decoded.npz") +
                 "')['arr_0'].astype(int); print('maxdiff', abs(a - e).max(), a.shape)\"");
  const bool close = cmp.output.find("maxdiff 0 ") != std::string::npos ||
                     cmp.output.find("maxdiff 1 ") != std::string::npos;
  EXPECT_TRUE(close) << cmp.output;
}

TEST_F(SampleCli, OutputsNeverReplaceInputsFoldersOrSpecialFiles) {
  // A --work-dir holding anything but finished batches is refused (it is removed at the end).
  fs::create_directories(p("mine"));
  { std::ofstream(p("mine/thesis.tex")) << "keep"; }
  auto r = run(base_ + "--class 1 --num 2 --tokens " + p("t.safetensors") + " --work-dir " + p("mine"));
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("--work-dir " + p("mine") + ": holds thesis.tex, which is not a finished batch"),
            std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(p("mine/thesis.tex")));
  // An empty one is used and removed; so is one holding our own leftovers (a killed run's
  // temporary batch file).
  fs::create_directories(p("empty"));
  r = run(base_ + "--class 1 --num 2 --tokens " + p("t.safetensors") + " --work-dir " + p("empty"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(fs::exists(p("empty")));
  fs::create_directories(p("ours"));
  { std::ofstream(p("ours/part-0-2.safetensors.tmp")) << "cut short"; }
  r = run(base_ + "--class 1 --num 2 --tokens " + p("t2.safetensors") + " --work-dir " + p("ours"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(fs::exists(p("ours")));
  // Outputs on the files read: the weights, the tokens being decoded.
  const std::string weights = (fs::path(ckpt_) / "model.safetensors").string();
  const auto before = fs::file_size(weights);
  r = run(base_ + "--class 1 --num 2 --tokens " + weights);
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("--tokens " + weights + ": is an input of this command (--ckpt "), std::string::npos)
      << r.output;
  EXPECT_EQ(fs::file_size(weights), before);
  r = run(test::aim_binary() + " sample --device cpu --from-tokens " + p("t.safetensors") + " --vq " + ckpt_ +
          " --vq-config " + test::source_dir() + "/configs/fixture_tiny_vq.json --tokens " + p("t.safetensors"));
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("is an input of this command (--from-tokens "), std::string::npos) << r.output;
  // Outputs beside the checkpoint (not read by it) are written, and written again on a re-run.
  fs::create_directories(p("copy"));
  for (const char* f : {"model.safetensors", "config.json"}) fs::copy_file(fs::path(ckpt_) / f, fs::path(p("copy")) / f);
  const std::string in_copy = test::aim_binary() + " sample --device cpu --ckpt " + p("copy") + " --vq " + ckpt_ +
                              " --vq-config " + test::source_dir() + "/configs/fixture_tiny_vq.json --class 1 --num 2 " +
                              "--tokens " + p("copy/t.safetensors");
  for (int i = 0; i < 2; ++i) {
    r = run(in_copy);
    EXPECT_EQ(r.code, 0) << r.output;
  }
  // A symbolic link to a file is replaced (its target left as it was, as a run forked with links
  // needs); a device, or a link to one, is refused before anything is sampled.
  { std::ofstream(p("target.safetensors")) << "keep"; }
  fs::create_symlink(p("target.safetensors"), p("link.safetensors"));
  r = run(base_ + "--class 1 --num 2 --tokens " + p("link.safetensors"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(fs::is_symlink(p("link.safetensors")));
  EXPECT_EQ(load_safetensors(p("link.safetensors")).at("tokens").size(0), 2);
  EXPECT_EQ(fs::file_size(p("target.safetensors")), 4u);
  fs::create_symlink("/dev/null", p("null.safetensors"));
  for (const std::string& out : {std::string("/dev/null"), p("null.safetensors")}) {
    r = run(base_ + "--class 1 --num 2 --tokens " + out);
    EXPECT_NE(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("--tokens " + out + ": exists and is not a regular file"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("[sample]"), std::string::npos) << "refused before sampling\n" << r.output;
  }
  EXPECT_TRUE(fs::is_character_file("/dev/null"));
  EXPECT_TRUE(fs::is_symlink(p("null.safetensors")));
  // Tokens files with labels no class can have, or codes outside the codebook, are named.
  save_safetensors(p("neg.safetensors"), {{"tokens", torch::zeros({1, 64}, torch::kLong)}, {"labels", torch::tensor({-7})}});
  r = run(test::aim_binary() + " sample --device cpu --from-tokens " + p("neg.safetensors") + " --vq " + ckpt_ +
          " --vq-config " + test::source_dir() + "/configs/fixture_tiny_vq.json --out " + p("neg.png"));
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("neg.safetensors: expected class labels >= 0, found -7"), std::string::npos) << r.output;
  save_safetensors(p("oov.safetensors"),
                   {{"tokens", torch::full({1, 64}, 512, torch::kLong)}, {"labels", torch::tensor({1})}});
  r = run(test::aim_binary() + " sample --device cpu --from-tokens " + p("oov.safetensors") + " --vq " + ckpt_ +
          " --vq-config " + test::source_dir() + "/configs/fixture_tiny_vq.json --out " + p("oov.png"));
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("oov.safetensors: tokens from 512 to 512, outside the tokenizer's codebook [0, 512)"),
            std::string::npos) << r.output;
}

// --preset fid draws the labels uniformly (the published protocol) unless --labels says otherwise.
TEST_F(SampleCli, PresetFidDrawsLabelsUniformly) {
  auto counts = [&](const std::string& flags, const std::string& file) {
    auto r = run(base_ + "--num-samples 20 --preset fid --cfg 1 --top-k 1 " + flags + "--tokens " + p(file));
    EXPECT_EQ(r.code, 0) << r.output;
    return torch::bincount(load_safetensors(p(file))["labels"], {}, 10);
  };
  const auto fid = counts("", "fid.safetensors");
  const auto balanced = counts("--labels balanced ", "balanced.safetensors");
  EXPECT_TRUE(torch::equal(balanced, torch::full({10}, 2, torch::kLong))) << balanced;
  EXPECT_FALSE(torch::equal(fid, balanced)) << "20 uniform draws over 10 classes, each class exactly twice: " << fid;
  EXPECT_EQ(fid.sum().item<int64_t>(), 20);
}

// --device defaults to auto: the GPU when one is visible, else the CPU.
TEST_F(SampleCli, TheDefaultDeviceIsTheGpuIfAny) {
  auto r = run(test::aim_binary() + " sample --ckpt " + ckpt_ + " --vq-config " + test::source_dir() +
               "/configs/fixture_tiny_vq.json --class 1 --cfg 1 --tokens " + p("d.safetensors"));
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string where = torch::cuda::is_available() ? "fp32 on cuda:0," : "fp32 on cpu,";
  EXPECT_NE(r.output.find(where), std::string::npos) << r.output;
  auto help = run(test::aim_binary() + " sample --help");
  EXPECT_NE(help.output.find("--device TEXT=auto"), std::string::npos) << help.output;
  auto bad = run(test::aim_binary() + " sample --device gpu --ckpt " + ckpt_ + " --class 1 --tokens " + p("e.safetensors"));
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("--device: expected auto, cpu, cuda or cuda:<index>, found 'gpu'"), std::string::npos)
      << bad.output;
}

TEST_F(SampleCli, InvalidValuesFailClearlyAndLeaveNothing) {
  const std::pair<std::string, std::string> cases[] = {
      {"--class 10 --out " + p("a.png"), "--class 10"},
      {"--class 1 --cfg -1 --out " + p("a.png"), "--cfg"},
      {"--class 1 --top-p 0 --out " + p("a.png"), "--top-p"},
      {"--class 1 --top-p 1.5 --out " + p("a.png"), "--top-p"},
      {"--class 1 --top-k -2 --out " + p("a.png"), "--top-k"},
      {"--class 1 --cfg-top-p 0 --out " + p("a.png"), "--cfg-top-p"},
      {"--class 1 --ssm-state fp16 --out " + p("a.png"), "--ssm-state"},
      {"--class tench --out " + p("a.png"), "--class 'tench'"},
      {"--class 1", "no output requested"},
      {"--num-samples 0 --tokens " + p("a.safetensors"), "--num-samples: expected >= 1, found 0"},
      // (Unsigned options would wrap -1 and clamp larger values.)
      {"--class 1 --seed -1 --tokens " + p("a.safetensors"), "expected an integer >= 0, found '-1'"},
      {"--class 1 --seed 99999999999999999999999 --tokens " + p("a.safetensors"), "expected an integer below 2^64"},
      {"--class 1 --nrow -1 --out " + p("a.png"), "--nrow"},
      // Checked before anything is sampled: no .parts folder is left (below).
      {"--num-samples 1100 --npz " + p("s.npz") + " --out " + p("a.png"), "a grid of 1100 images is too large"},
  };
  for (const auto& [args, expect] : cases) {
    auto r = run(base_ + args);
    EXPECT_NE(r.code, 0) << args;
    EXPECT_NE(r.output.find(expect), std::string::npos) << args << "\n" << r.output;
  }
  // Flags that would do nothing in the mode asked for are refused, not ignored.
  const std::pair<std::string, std::string> unused[] = {
      {"--num-samples 4 --num 2 --tokens " + p("a.safetensors"), "--num is the images per --class"},
      {"--class 1 --labels random --tokens " + p("a.safetensors"), "--labels chooses the classes of --num-samples"},
      {"--from-tokens " + p("none.safetensors") + " --cfg 3 --out " + p("a.png"),
       "--from-tokens decodes saved tokens: --cfg has no effect there"},
      {"--from-tokens " + p("none.safetensors") + " --ema --out " + p("a.png"),
       "--from-tokens decodes saved tokens: --ema has no effect there"},
      {"--class 1 --nrow 2 --tokens " + p("a.safetensors"), "--nrow shapes the --out grid, and no --out is given"},
      {"--class 1 --no-captions --npz " + p("a.npz"), "--no-captions shapes the --out grid"},
      {"--class 1 --cfg 1 --cfg-top-p 0.9 --tokens " + p("a.safetensors"),
       "--cfg-top-p 0.9: guidance is off (cfg 1)"},
  };
  for (const auto& [args, expect] : unused) {
    auto r = run(base_ + args);
    EXPECT_NE(r.code, 0) << args;
    EXPECT_NE(r.output.find(expect), std::string::npos) << args << "\n" << r.output;
  }
  auto r = run(test::aim_binary() + " sample --device cpu --ckpt " + p("missing") + " --class 1 --out " + p("a.png"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("no such file"), std::string::npos) << r.output;
  size_t left = 0;
  for (const auto& e : fs::directory_iterator(dir_)) left += e.path().filename() != "" ? 1 : 0;
  EXPECT_EQ(left, 0u) << "outputs left behind";
}

}  // namespace
}  // namespace aim
