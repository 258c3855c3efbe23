// `aim eval` as a user runs it, with a real (fixture) Inception on small image batches: the five
// numbers equal the library metrics of the same features; caches, image folders, compressed
// archives and stored reference statistics give what they should; bad inputs name the file
// and key.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <unistd.h>

#include "aim/core/fileio.h"
#include "aim/data/image.h"
#include "aim/eval/evaluator.h"
#include "aim/eval/inception.h"
#include "aim/eval/metrics.h"
#include "aim/sample/npz.h"
#include "eval/inception_fixture.h"
#include "test_util.h"

namespace aim {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kSamples = 6, kRefs = 8, kSize = 64;

void write_npz(const fs::path& path, const std::vector<std::pair<std::string, torch::Tensor>>& arrays) {
  NpzWriter w(path.string());
  for (const auto& [name, t] : arrays) w.add_array(name, t);
  w.close();
}

/// One temporary folder with the weights and the two batches, made once per process.
struct World {
  fs::path dir = fs::temp_directory_path() / ("aim_eval_cli_" + std::to_string(getpid()));
  std::string weights;
  torch::Tensor samples, refs;
  World() {
    fs::create_directories(dir);
    weights = (dir / "inception.safetensors").string();
    test::write_fixture_inception_weights(weights);
    samples = test::smooth_images(kSamples, kSize, 11, 0.0);
    refs = test::smooth_images(kRefs, kSize, 12, 0.15);
    write_npz(dir / "samples.npz", {{"arr_0", samples}, {"arr_1", torch::arange(kSamples)}});
    write_npz(dir / "ref.npz", {{"arr_0", refs}});
  }
  ~World() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string p(const std::string& name) const { return (dir / name).string(); }
};

const World& world() {
  static World w;
  return w;
}

test::RunResult run_aim(const std::string& args) {
  // The weights come from flags only: a user's $AIM_INCEPTION_WEIGHTS must not leak in.
  return test::run_shell("env -u AIM_INCEPTION_WEIGHTS OMP_NUM_THREADS=1 " + test::aim_binary() +
                         " eval --quiet --device cpu " + args);
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return nlohmann::json::parse(in);
}

/// The metrics the library gives for the features of `samples` and `refs`.
struct Expected {
  double is, fid, sfid, precision, recall;
};
Expected library_metrics(const torch::Tensor& samples, const torch::Tensor& refs) {
  at::set_num_threads(1);
  eval::InceptionExtractor ex(world().weights, torch::kCPU, 100);
  const auto s = ex.extract(samples), r = ex.extract(refs);
  Expected e{};
  e.is = eval::inception_score(s.logits_unbiased);
  e.fid = eval::frechet_distance(eval::compute_feature_stats(s.pool3), eval::compute_feature_stats(r.pool3));
  e.sfid = eval::frechet_distance(eval::compute_feature_stats(s.spatial), eval::compute_feature_stats(r.spatial));
  const auto pr = eval::precision_recall(r.pool3, s.pool3);
  e.precision = pr.precision;
  e.recall = pr.recall;
  return e;
}

const Expected& expected() {
  static const Expected e = library_metrics(world().samples, world().refs);
  return e;
}

void expect_metrics(const nlohmann::json& j, const Expected& e, double rtol, const std::string& what) {
  EXPECT_NEAR(j.at("inception_score").get<double>(), e.is, rtol * std::abs(e.is)) << what;
  EXPECT_NEAR(j.at("fid").get<double>(), e.fid, rtol * std::abs(e.fid)) << what;
  EXPECT_NEAR(j.at("sfid").get<double>(), e.sfid, rtol * std::abs(e.sfid)) << what;
  EXPECT_DOUBLE_EQ(j.at("precision").get<double>(), e.precision) << what;
  EXPECT_DOUBLE_EQ(j.at("recall").get<double>(), e.recall) << what;
}

// Features of the binary and of this process come from the same float32 code with one thread;
// the metrics then agree to float64 rounding. 1e-9 leaves room for a different BLAS path.
constexpr double kRtol = 1e-9;

TEST(EvalCli, NpzBatchesGiveTheLibraryMetricsAndACache) {
  const auto& w = world();
  fs::remove(w.p("samples.npz.inception.safetensors"));
  fs::remove(w.p("ref.npz.inception.safetensors"));
  auto r = run_aim("--samples " + w.p("samples.npz") + " --ref " + w.p("ref.npz") + " --inception " +
                   w.weights + " --json " + w.p("a.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* row : {"Inception Score", "FID", "sFID", "Precision", "Recall", "protocol: ADM evaluator"})
    EXPECT_NE(r.output.find(row), std::string::npos) << row << "\n" << r.output;
  const auto j = read_json(w.p("a.json"));
  const auto& e = expected();
  // The batches differ (brightness), so the numbers are not degenerate.
  EXPECT_GT(e.fid, 1.0);
  EXPECT_GT(e.sfid, 0.1);
  EXPECT_GE(e.is, 1.0);
  expect_metrics(j, e, kRtol, "npz");
  EXPECT_EQ(j.at("num_samples").get<int64_t>(), kSamples);
  EXPECT_EQ(j.at("num_reference").get<int64_t>(), kRefs);
  EXPECT_FALSE(j.at("features").at("samples_cached").get<bool>());
  EXPECT_TRUE(j.at("settings").at("adm_protocol").get<bool>());
  // How many Inception classes the samples' top predictions take, overall and per IS split
  // (one split here): the figures behind the class-order note.
  const auto& classes = j.at("inception_classes");
  EXPECT_GE(classes.at("predicted").get<int64_t>(), 1);
  EXPECT_EQ(classes.at("fewest_in_a_split").get<int64_t>(), classes.at("predicted").get<int64_t>());
  EXPECT_EQ(classes.at("splits").get<int64_t>(), 1);
  EXPECT_EQ(r.output.find("look sorted by class"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(w.p("samples.npz.inception.safetensors")));
  EXPECT_TRUE(fs::exists(w.p("ref.npz.inception.safetensors")));

  // Second run: no weights needed, same numbers bit for bit, default JSON beside the samples.
  r = run_aim("--samples " + w.p("samples.npz") + " --ref " + w.p("ref.npz"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("cached features"), std::string::npos) << r.output;
  const auto j2 = read_json(w.p("samples.npz.eval.json"));
  EXPECT_TRUE(j2.at("features").at("samples_cached").get<bool>());
  EXPECT_TRUE(j2.at("features").at("reference_cached").get<bool>());
  for (const char* k : {"inception_score", "fid", "sfid", "precision", "recall"})
    EXPECT_EQ(j2.at(k).get<double>(), j.at(k).get<double>()) << k;

  // A changed input invalidates its cache: without weights that is an error naming the input.
  write_npz(w.p("samples.npz"), {{"arr_0", w.samples}, {"arr_1", torch::arange(kSamples)}});
  fs::last_write_time(w.p("samples.npz"), fs::last_write_time(w.p("samples.npz")) + std::chrono::seconds(5));
  r = run_aim("--samples " + w.p("samples.npz") + " --ref " + w.p("ref.npz"));
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("--inception"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("samples.npz"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("made for other content"), std::string::npos) << r.output;
}

// The sampling settings aim sample stores in its .npz are reported with the scores, with a note when
// they are not the published FIDs' (the demo preset's filtering gives a much worse FID).
TEST(EvalCli, TheSamplesSettingsAreReportedWithTheScores) {
  const auto& w = world();
  const std::string text = R"({"cfg":"5.000000","checkpoint":"hf/aim-large","preset":"demo","seed":"0",)"
                           R"("temperature":"1.000000","top_k":"600","top_p":"0.980000","cfg_top_p":"1.000000",)"
                           R"("dtype":"bf16"})";
  const auto bytes = torch::from_blob(const_cast<char*>(text.data()), {static_cast<int64_t>(text.size())},
                                      torch::kUInt8).clone();
  write_npz(w.p("demo.npz"), {{"arr_0", w.samples}, {"arr_1", torch::arange(kSamples)}, {"aim_settings", bytes}});
  auto r = run_aim("--samples " + w.p("demo.npz") + " --ref " + w.p("ref.npz") + " --inception " + w.weights +
                   " --json " + w.p("demo.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("sampled    by aim sample: hf/aim-large, preset demo, cfg 5, seed 0, bf16"),
            std::string::npos) << r.output;
  EXPECT_NE(r.output.find("note: sampled with top-k 600, top-p 0.98; the published FIDs sampled without filtering"),
            std::string::npos) << r.output;
  const auto j = read_json(w.p("demo.json"));
  EXPECT_EQ(j.at("sampling").at("preset"), "demo");
  EXPECT_EQ(j.at("sampling").at("top_k"), "600");
  // Batches without settings (other tools' npz) report none.
  r = run_aim("--samples " + w.p("samples.npz") + " --ref " + w.p("ref.npz") + " --inception " + w.weights +
              " --json " + w.p("plain.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("sampled    by"), std::string::npos) << r.output;
  EXPECT_FALSE(read_json(w.p("plain.json")).contains("sampling"));
}

TEST(EvalCli, TheJsonGoesToStandardOutputWithTheTextOnStandardError) {
  const auto& w = world();
  const std::string aim = "env -u AIM_INCEPTION_WEIGHTS OMP_NUM_THREADS=1 " + test::aim_binary() +
                          " eval --device cpu --samples " + w.p("samples.npz") + " --ref " + w.p("ref.npz") +
                          " --inception " + w.weights;
  auto read_text_file = [](const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  // `--json -`: standard output is the JSON alone (a pipe into jq), the table on standard error.
  auto r = test::run_shell("(" + aim + " --json - 2>" + w.p("stderr.txt") + ")");
  ASSERT_EQ(r.code, 0) << r.output << read_text_file(w.p("stderr.txt"));
  const auto j = nlohmann::json::parse(r.output, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.output;
  expect_metrics(j, expected(), kRtol, "--json -");
  EXPECT_NE(read_text_file(w.p("stderr.txt")).find("  FID              "), std::string::npos);
  EXPECT_FALSE(fs::exists("-"));  // not a file named -
  // /dev/stdout redirected to a file, directly and through a link of the user's: written there;
  // the links stay links (a rename over them replaced /dev/stdout itself).
  fs::create_symlink("/proc/self/fd/1", w.p("my_stdout"));
  for (const std::string& name : {std::string("/dev/stdout"), w.p("my_stdout")}) {
    const bool was_link = fs::is_symlink(fs::symlink_status(name));
    r = test::run_shell("(" + aim + " --json " + name + " >" + w.p("out.json") + " 2>" + w.p("stderr.txt") + ")");
    ASSERT_EQ(r.code, 0) << name << "\n" << read_text_file(w.p("stderr.txt"));
    expect_metrics(nlohmann::json::parse(read_text_file(w.p("out.json"))), expected(), kRtol, name);
    EXPECT_EQ(fs::is_symlink(fs::symlink_status(name)), was_link) << name;
  }
  EXPECT_TRUE(fs::is_symlink(fs::symlink_status(w.p("my_stdout"))));
}

TEST(EvalCli, AnImageFolderAndACompressedNpzGiveTheSameNumbers) {
  const auto& w = world();
  const fs::path folder = w.dir / "sample_pngs";
  fs::create_directories(folder / "sub");
  for (int64_t i = 0; i < kSamples; ++i) {
    const auto img = w.samples[i].contiguous();
    Image im(kSize, kSize, std::vector<uint8_t>(img.data_ptr<uint8_t>(), img.data_ptr<uint8_t>() + img.numel()));
    // Sorted by path: 000.png .. 002.png, then sub/003.png ..: the npz's order.
    write_png((i < 3 ? folder : folder / "sub") / (str_cat("00", i) + ".png"), im);
  }
  auto r = run_aim("--samples " + folder.string() + "/ --ref " + w.p("ref.npz") + " --inception " + w.weights +
                   " --json " + w.p("b.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  expect_metrics(read_json(w.p("b.json")), expected(), kRtol, "png folder");
  EXPECT_TRUE(fs::exists(w.dir / "sample_pngs.inception.safetensors"));

  const std::string py = test::python() + " -c \"import numpy as np; d = np.load('" +
                         w.p("ref.npz") + "'); np.savez_compressed('" + w.p("ref_z.npz") + "', **d)\"";
  auto z = test::run_shell(py);
  ASSERT_EQ(z.code, 0) << z.output;
  r = run_aim("--samples " + w.p("samples.npz") + " --ref " + w.p("ref_z.npz") + " --inception " + w.weights +
              " --json " + w.p("c.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  expect_metrics(read_json(w.p("c.json")), expected(), kRtol, "compressed reference");
}

TEST(EvalCli, StoredReferenceStatisticsAreWhatFidUses) {
  const auto& w = world();
  // A reference whose stored statistics are those of the samples: FID and sFID ~ 0, while
  // precision/recall still come from its images.
  at::set_num_threads(1);
  eval::InceptionExtractor ex(w.weights, torch::kCPU, 100);
  const auto f = ex.extract(w.samples);
  const auto st = eval::compute_feature_stats(f.pool3), sp = eval::compute_feature_stats(f.spatial);
  write_npz(w.p("ref_stats.npz"), {{"arr_0", w.refs}, {"mu", st.mu}, {"sigma", st.sigma},
                                   {"mu_s", sp.mu.to(torch::kFloat)}, {"sigma_s", sp.sigma.to(torch::kFloat)}});
  auto r = run_aim("--samples " + w.p("samples.npz") + " --ref " + w.p("ref_stats.npz") + " --inception " +
                   w.weights + " --json " + w.p("d.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("stored mu/sigma"), std::string::npos) << r.output;
  const auto j = read_json(w.p("d.json"));
  EXPECT_EQ(j.at("statistics").at("reference_fid").get<std::string>(), "stored statistics");
  EXPECT_EQ(j.at("statistics").at("sample_fid").get<std::string>(), "images");
  const double trace = st.sigma.trace().item<double>();
  EXPECT_LT(std::abs(j.at("fid").get<double>()), 1e-9 * trace) << "trace " << trace;
  // sFID's stored statistics were rounded to float32: the distance is that rounding's size.
  EXPECT_LT(std::abs(j.at("sfid").get<double>()), 1e-4 * sp.sigma.trace().item<double>());
  EXPECT_DOUBLE_EQ(j.at("precision").get<double>(), expected().precision);
  EXPECT_DOUBLE_EQ(j.at("recall").get<double>(), expected().recall);

  // Half of a pair is an error naming both keys.
  write_npz(w.p("ref_half.npz"), {{"arr_0", w.refs}, {"mu", st.mu}});
  r = run_aim("--samples " + w.p("samples.npz") + " --ref " + w.p("ref_half.npz") + " --inception " + w.weights);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("'mu' but not 'sigma'"), std::string::npos) << r.output;
}

TEST(EvalCli, BadInputsNameTheFileAndKey) {
  const auto& w = world();
  const std::string base = " --inception " + w.weights + " --no-cache";
  auto expect_error = [&](const std::string& args, std::vector<std::string> needles) {
    auto r = run_aim(args);
    EXPECT_NE(r.code, 0) << args << "\n" << r.output;
    for (const auto& n : needles) EXPECT_NE(r.output.find(n), std::string::npos) << n << "\n" << r.output;
  };
  write_npz(w.p("float.npz"), {{"arr_0", w.samples.to(torch::kFloat) / 255}});
  expect_error("--samples " + w.p("float.npz") + " --ref " + w.p("ref.npz") + base,
               {"float.npz", "'arr_0'", "Float", "expected uint8 [N, H, W, 3]"});
  write_npz(w.p("rgba.npz"), {{"arr_0", torch::zeros({kSamples, kSize, kSize, 4}, torch::kByte)}});
  expect_error("--samples " + w.p("rgba.npz") + " --ref " + w.p("ref.npz") + base,
               {"rgba.npz", "[6, 64, 64, 4]"});
  write_npz(w.p("three.npz"), {{"arr_0", w.samples.narrow(0, 0, 3).contiguous()}});
  expect_error("--samples " + w.p("three.npz") + " --ref " + w.p("ref.npz") + base,
               {"three.npz", "3 images", "k = 3", "at least 4"});
  write_npz(w.p("small.npz"), {{"arr_0", test::smooth_images(kSamples, 32, 13, 0.0)}});
  expect_error("--samples " + w.p("small.npz") + " --ref " + w.p("ref.npz") + base,
               {"small.npz", "32x32", "64x64", "--allow-size-mismatch"});
  write_npz(w.p("noarr.npz"), {{"images", w.samples}});
  expect_error("--samples " + w.p("noarr.npz") + " --ref " + w.p("ref.npz") + base,
               {"noarr.npz", "no member 'arr_0'", "images"});
  expect_error("--samples " + w.p("samples.npz") + " --ref " + w.p("ref.npz") + " --no-cache",
               {"--inception", "convert_checkpoint.py"});
  expect_error("--samples " + w.p("samples.npz") + " --ref " + w.p("ref.npz") + base + " --preprocess tf2",
               {"--preprocess", "tf2"});
  expect_error("--samples " + w.p("missing.npz") + " --ref " + w.p("ref.npz") + base, {"missing.npz"});
  expect_error("--samples " + w.p("samples.npz") + " --ref " + w.p("ref.npz") + " --inception " +
                   w.p("ref.npz"),
               {"ref.npz"});

  // What --allow-size-mismatch lets through runs.
  auto r = run_aim("--samples " + w.p("small.npz") + " --ref " + w.p("ref.npz") + base +
                   " --allow-size-mismatch --json " + w.p("e.json"));
  EXPECT_EQ(r.code, 0) << r.output;
}

TEST(EvalCli, TheFidScriptSamplesAndScoresACheckpointOnTheCpu) {
  // scripts/fid.sh, the paper's evaluation, as a user runs it (AIM_DEVICE=cpu: a check on a few
  // samples): the official tiny snapshot with its 128 px tokenizer, the fid preset, random labels,
  // then aim eval; eval.json holds the five numbers and the sampling settings.
  const auto& w = world();
  write_npz(w.p("ref128.npz"), {{"arr_0", test::smooth_images(kRefs, 128, 14, 0.1)}});
  const std::string out = w.p("fid_script");
  const std::string env = "env -u AIM_NPROC OMP_NUM_THREADS=1 AIM_DEVICE=cpu AIM_NUM_SAMPLES=6 AIM_BATCH_SIZE=4 "
                          "AIM_FID_REF=" + w.p("ref128.npz") + " AIM_INCEPTION_WEIGHTS=" + w.weights +
                          " AIM_BUILD_DIR=" + fs::path(test::aim_binary()).parent_path().string() + " ";
  const std::string script = test::source_dir() + "/scripts/fid.sh ";
  const std::string ckpt = (test::fixtures_dir() / "aim" / "mamba2_tiny").string();
  const std::string vq = " --vq " + (test::fixtures_dir() / "vq" / "vq16_tiny").string();
  auto r = test::run_shell(env + script + ckpt + " " + out + vq);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("sampling 6 images on 1 process(es), device cpu"), std::string::npos) << r.output;
  const auto j = read_json(out + "/eval.json");
  // (The Inception Score of the fixture network's saturated softmax is NaN, as ADM's would be.)
  EXPECT_TRUE(j.contains("inception_score")) << j.dump();
  for (const char* key : {"fid", "sfid", "precision", "recall"})
    EXPECT_TRUE(j.contains(key) && j.at(key).is_number() && std::isfinite(j.at(key).get<double>()))
        << key << " " << j.dump();
  EXPECT_EQ(j.at("sampling").at("preset"), "fid") << j.dump();
  EXPECT_EQ(j.at("sampling").at("checkpoint"), ckpt) << j.dump();
  EXPECT_NE(read_text(out + "/eval.txt").find("FID"), std::string::npos);
  // The numbers are aim eval's of the batch it wrote.
  const auto again = run_aim("--samples " + out + "/samples.npz --ref " + w.p("ref128.npz") + " --inception " +
                             w.weights + " --no-cache --json " + w.p("fid_script_again.json"));
  ASSERT_EQ(again.code, 0) << again.output;
  EXPECT_NEAR(read_json(w.p("fid_script_again.json")).at("fid").get<double>(), j.at("fid").get<double>(),
              kRtol * j.at("fid").get<double>());
  // No GPU to run on (none listed, or AIM_NPROC 0) and no AIM_DEVICE=cpu: how to check on the CPU.
  r = test::run_shell(env + "AIM_DEVICE=cuda AIM_NPROC=0 " + script + ckpt + " " + out + "_gpu" + vq);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("AIM_DEVICE=cpu AIM_NUM_SAMPLES=100"), std::string::npos) << r.output;
  r = test::run_shell(env + "AIM_DEVICE=tpu " + script + ckpt + " " + out + "_tpu" + vq);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("AIM_DEVICE: expected cuda or cpu, found 'tpu'"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace aim
