// Heartbeats between ranks that meet only in a folder: the file changes while its writer lives,
// goes when it ends, and rank 0's watch counts the silence by its own clock.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "aim/core/error.h"
#include "aim/core/liveness.h"

namespace aim {
namespace {

namespace fs = std::filesystem;

struct ScopedSilence {
  explicit ScopedSilence(const char* v) { ::setenv("AIM_RANK_SILENCE_S", v, 1); }
  ~ScopedSilence() { ::unsetenv("AIM_RANK_SILENCE_S"); }
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(Liveness, TheSilenceLimitComesFromTheEnvironment) {
  ::unsetenv("AIM_RANK_SILENCE_S");
  EXPECT_DOUBLE_EQ(rank_silence_limit_s(), 600.0);
  {
    ScopedSilence s("2.5");
    EXPECT_DOUBLE_EQ(rank_silence_limit_s(), 2.5);
  }
  for (const char* bad : {"0", "-3", "ten", "5s"}) {
    ScopedSilence s(bad);
    try {
      rank_silence_limit_s();
      ADD_FAILURE() << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("AIM_RANK_SILENCE_S: expected a positive number of seconds, found '") +
                                           bad + "'"),
                std::string::npos)
          << e.what();
    }
  }
}

TEST(Liveness, AHeartbeatChangesWhileItLivesAndGoesWithIt) {
  ScopedSilence s("0.5");  // a beat every 0.1 s
  const fs::path dir = fs::temp_directory_path() / ("aim_liveness_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path file = dir / "rank-1.alive";
  HeartbeatWatch watch;
  EXPECT_EQ(watch.quiet_s(file.string()), 0.0);  // the first look starts the count
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  EXPECT_GE(watch.quiet_s(file.string()), 0.15);  // still missing: the same (empty) content
  {
    Heartbeat beat(file.string());
    const std::string first = slurp(file);  // written at once
    EXPECT_NE(first.find(" pid " + std::to_string(::getpid())), std::string::npos) << first;
    EXPECT_EQ(watch.quiet_s(file.string()), 0.0);  // appeared: a change
    std::string later = first;
    for (int i = 0; i < 100 && later == first; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      later = slurp(file);
    }
    EXPECT_NE(later, first);
    EXPECT_EQ(watch.quiet_s(file.string()), 0.0);
  }
  EXPECT_FALSE(fs::exists(file));
  // Nothing else is left in the folder (temporary files renamed or removed).
  EXPECT_TRUE(fs::is_empty(dir));
  // A folder that is gone (the work assembled and removed) is not made again.
  fs::remove_all(dir);
  {
    Heartbeat beat((dir / "rank-2.alive").string());
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  EXPECT_FALSE(fs::exists(dir));
}

TEST(Liveness, AWatchCountsFromTheLastChange) {
  const fs::path file = fs::temp_directory_path() / ("aim_liveness_watch_" + std::to_string(::getpid()));
  std::ofstream(file) << "1";
  HeartbeatWatch watch;
  EXPECT_EQ(watch.quiet_s(file.string()), 0.0);
  std::this_thread::sleep_for(std::chrono::milliseconds(120));
  const double quiet = watch.quiet_s(file.string());
  EXPECT_GE(quiet, 0.12);
  EXPECT_LT(quiet, 60.0);
  std::ofstream(file) << "2";
  EXPECT_EQ(watch.quiet_s(file.string()), 0.0);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_GE(watch.quiet_s(file.string()), 0.05);
  EXPECT_TRUE(watch.appeared(file.string()));
  fs::remove(file);
  EXPECT_EQ(watch.quiet_s(file.string()), 0.0);  // gone: a change too
  EXPECT_TRUE(watch.appeared(file.string()));     // and remembered as once there
  EXPECT_FALSE(watch.appeared(file.string() + ".never"));
  watch.quiet_s(file.string() + ".never");
  EXPECT_FALSE(watch.appeared(file.string() + ".never"));
}

}  // namespace
}  // namespace aim
