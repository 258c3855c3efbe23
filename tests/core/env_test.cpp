// Launch-environment detection for every supported launcher, and malformed values; ScopedEnv.
#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>

#include "aim/core/env.h"
#include "test_util.h"

namespace aim {
namespace {

class LaunchEnvTest : public ::testing::Test {
 protected:
  void TearDown() override {
    for (const char* v : kAll) unsetenv(v);
  }
  static constexpr const char* kAll[] = {
      "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
      "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "SLURM_PROCID", "SLURM_NTASKS",
      "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", "SLURM_STEP_TASKS_PER_NODE",
      "SLURM_NODEID", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"};
};

TEST_F(LaunchEnvTest, EveryLauncher) {
  for (const char* v : kAll) unsetenv(v);
  auto single = detect_launch_env();
  EXPECT_EQ(single.launcher, "single");
  EXPECT_EQ(single.world_size, 1);
  setenv("RANK", "3", 1);
  setenv("WORLD_SIZE", "8", 1);
  setenv("LOCAL_RANK", "1", 1);
  setenv("LOCAL_WORLD_SIZE", "2", 1);
  auto tr = detect_launch_env();
  EXPECT_EQ(tr.launcher, "torchrun");
  EXPECT_EQ(tr.rank, 3);
  EXPECT_EQ(tr.local_rank, 1);
  // A batch script's own variables (no job step): not a rank of anything.
  setenv("SLURM_PROCID", "0", 1);
  setenv("SLURM_NTASKS", "6", 1);
  EXPECT_EQ(detect_launch_env().launcher, "torchrun");
  setenv("SLURM_PROCID", "5", 1);
  setenv("SLURM_STEP_NUM_TASKS", "6", 1);
  auto slurm = detect_launch_env();  // Slurm wins over torchrun-style variables
  EXPECT_EQ(slurm.launcher, "slurm");
  EXPECT_EQ(slurm.rank, 5);
  EXPECT_EQ(slurm.world_size, 6);
  EXPECT_EQ(slurm.local_rank, 5);  // no SLURM_LOCALID: the global rank
  EXPECT_EQ(slurm.local_world_size, 6);
  // srun -N2 -n6 on nodes of 4 + 2 tasks: the second node holds 2.
  setenv("SLURM_LOCALID", "1", 1);
  setenv("SLURM_NODEID", "1", 1);
  setenv("SLURM_STEP_TASKS_PER_NODE", "4,2", 1);
  EXPECT_EQ(detect_launch_env().local_world_size, 2);
  setenv("SLURM_STEP_TASKS_PER_NODE", "3(x2)", 1);
  EXPECT_EQ(detect_launch_env().local_world_size, 3);
  setenv("SLURM_NODEID", "0", 1);
  setenv("SLURM_STEP_TASKS_PER_NODE", "4,2", 1);
  EXPECT_EQ(detect_launch_env().local_world_size, 4);
  setenv("OMPI_COMM_WORLD_RANK", "0", 1);
  setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
  EXPECT_EQ(detect_launch_env().launcher, "openmpi");
}

TEST_F(LaunchEnvTest, MalformedValuesNameTheVariable) {
  setenv("RANK", "two", 1);
  setenv("WORLD_SIZE", "4", 1);
  EXPECT_NE(test::error_of([] { detect_launch_env(); }).find("RANK"), std::string::npos);
  setenv("RANK", "4", 1);
  auto msg = test::error_of([] { detect_launch_env(); });
  EXPECT_NE(msg.find("0 <= rank < size"), std::string::npos) << msg;
}

TEST_F(LaunchEnvTest, OneProcessCommandsRefuseALauncher) {
  for (const char* v : kAll) unsetenv(v);
  EXPECT_NO_THROW(refuse_launcher("eval-loss"));
  setenv("OMPI_COMM_WORLD_RANK", "1", 1);
  setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
  const auto msg = test::error_of([] { refuse_launcher("eval-loss"); });
  EXPECT_NE(msg.find("eval-loss runs as one process, but this is rank 1 of 2 (openmpi)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("HINT: run it without mpirun"), std::string::npos) << msg;
  setenv("OMPI_COMM_WORLD_RANK", "0", 1);
  setenv("OMPI_COMM_WORLD_SIZE", "1", 1);
  EXPECT_NO_THROW(refuse_launcher("eval-loss"));  // a launcher of one process is one process
}

TEST(ScopedEnvTest, SetsUnsetsAndRestoresInReverseOrder) {
  const char* a = "AIM_SCOPED_ENV_TEST_A";
  const char* b = "AIM_SCOPED_ENV_TEST_B";
  unsetenv(a);
  setenv(b, "outer", 1);
  {
    ScopedEnv env(a, "1");
    env.set(b, std::nullopt).set(a, "2");  // a set twice: the first saved value must win
    ASSERT_NE(std::getenv(a), nullptr);
    EXPECT_STREQ(std::getenv(a), "2");
    EXPECT_EQ(std::getenv(b), nullptr);
    {
      const ScopedEnv inner(b, "inner");
      EXPECT_STREQ(std::getenv(b), "inner");
    }
    EXPECT_EQ(std::getenv(b), nullptr);
  }
  EXPECT_EQ(std::getenv(a), nullptr);
  ASSERT_NE(std::getenv(b), nullptr);
  EXPECT_STREQ(std::getenv(b), "outer");
  unsetenv(b);
}

}  // namespace
}  // namespace aim
