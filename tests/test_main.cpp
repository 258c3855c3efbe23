#include <gtest/gtest.h>
#include <torch/torch.h>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  // Deterministic and quiet on small CI machines. One thread where ThreadSanitizer watches the
  // emulated kernels (LibTorch's OpenMP workers synchronise in ways it does not see).
#if defined(AIM_TEST_ONE_THREAD)
  torch::set_num_threads(1);
#else
  torch::set_num_threads(std::max(1, static_cast<int>(std::thread::hardware_concurrency())));
#endif
  return RUN_ALL_TESTS();
}
