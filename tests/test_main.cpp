#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  // Deterministic and quiet on small CI machines. One thread where ThreadSanitizer watches the
  // emulated kernels (LibTorch's OpenMP workers synchronise in ways it does not see).
#if defined(AIM_TEST_ONE_THREAD)
  torch::set_num_threads(1);
#else
  torch::set_num_threads(std::max(1, static_cast<int>(std::thread::hardware_concurrency())));
#endif
  const int rc = RUN_ALL_TESTS();
  if (GTEST_FLAG_GET(list_tests)) return rc;
  // ctest runs one suite per process (tests/gtest_suites.cmake). A filter that selects nothing
  // would pass there without running a test, so it is an error; an entry whose tests all
  // skipped (GPU tests on a CPU machine) says so in a line ctest reports as "skipped".
  const auto* unit = ::testing::UnitTest::GetInstance();
  if (unit->test_to_run_count() == 0) {
    std::fprintf(stderr, "no test matches --gtest_filter=%s (of %d tests)\n",
                 GTEST_FLAG_GET(filter).c_str(), unit->total_test_count());
    return 1;
  }
  if (rc == 0 && unit->skipped_test_count() == unit->test_to_run_count())
    std::printf("All %d selected tests were skipped\n", unit->test_to_run_count());
  return rc;
}
