// The `aim` executable as a user runs it: output, error messages and exit codes.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <sys/wait.h>

#include "test_util.h"

namespace aim {
namespace {

struct RunResult {
  int code = -1;
  std::string output;  // stdout and stderr
};

RunResult run_aim(const std::string& args) {
  RunResult r;
  const std::string cmd = std::string(AIM_BINARY_PATH) + " " + args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buf{};
  while (fgets(buf.data(), buf.size(), pipe)) r.output += buf.data();
  const int status = pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
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
}

TEST(Cli, InfoReadsAnOfficialSnapshotDirectory) {
  auto dir = test::fixtures_dir() / "aim" / "mamba2_tiny";
  auto r = run_aim("info " + dir.string());
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("config.json"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("language-model parameters"), std::string::npos) << r.output;
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
  EXPECT_NE(r.output.find("model.n_layer"), std::string::npos) << r.output;
  r = run_aim("info /nonexistent/config.yaml");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("/nonexistent/config.yaml"), std::string::npos) << r.output;
  std::filesystem::remove(tmp);
}

TEST(Cli, VersionNamesTheBuild) {
  auto r = run_aim("--version");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.output.find("LibTorch"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace aim
