#include <gtest/gtest.h>
#include <torch/torch.h>
TEST(Smoke, Torch) { EXPECT_EQ(torch::ones({2}).sum().item<float>(), 2.f); }
