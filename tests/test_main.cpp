#include <gtest/gtest.h>
#include <torch/torch.h>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  // Deterministic and quiet on small CI machines.
  torch::set_num_threads(std::max(1, static_cast<int>(std::thread::hardware_concurrency())));
  return RUN_ALL_TESTS();
}
