#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <thread>

namespace {

// One line per skipped test, "[ aim skip ] Suite.Test: reason", so that scripts/test.sh can add
// up, after ctest's summary, the cases that skipped inside entries ctest counts as passed (a
// suite whose CPU cases pass and whose GPU cases skip is one passed entry).
class SkipReasonPrinter : public ::testing::EmptyTestEventListener {
 public:
  // Called with gtest's own lock held: only remember the reason here.
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.skipped() || !reason_.empty()) return;
    reason_ = result.message();
    reason_ = reason_.substr(0, reason_.find('\n'));
    if (reason_.empty()) reason_ = "(no reason given)";
  }
  void OnTestEnd(const ::testing::TestInfo& test) override {
    if (test.result()->Skipped())
      std::printf("[ aim skip ] %s.%s: %s\n", test.test_suite_name(), test.name(),
                  reason_.empty() ? "(no reason given)" : reason_.c_str());
    reason_.clear();
  }

 private:
  std::string reason_;
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::UnitTest::GetInstance()->listeners().Append(new SkipReasonPrinter);
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
