// LlamaGen's reconstruction SSIM (skimage's structural_similarity, data_range 2 on [0, 1]
// images) against a direct per-window evaluation of the same definition.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "aim/eval/vq_eval.h"

namespace aim {
namespace {

/// Every 7x7 window that fits, channel by channel: sample (N - 1) covariances, C1 = (0.01 R)^2,
/// C2 = (0.03 R)^2 with R = 2, the mean of the map over windows and channels.
double naive_ssim(const torch::Tensor& a, const torch::Tensor& b) {
  const auto x = a.to(torch::kDouble) / 255.0, y = b.to(torch::kDouble) / 255.0;  // [H, W, 3]
  const int64_t h = x.size(0), w = x.size(1), k = 7;
  const double c1 = 0.02 * 0.02, c2 = 0.06 * 0.06, n = k * k;
  double sum = 0;
  int64_t count = 0;
  auto xa = x.accessor<double, 3>(), ya = y.accessor<double, 3>();
  for (int64_t c = 0; c < 3; ++c) {
    for (int64_t i = 0; i + k <= h; ++i) {
      for (int64_t j = 0; j + k <= w; ++j) {
        double mx = 0, my = 0;
        for (int64_t u = 0; u < k; ++u)
          for (int64_t v = 0; v < k; ++v) mx += xa[i + u][j + v][c], my += ya[i + u][j + v][c];
        mx /= n;
        my /= n;
        double vx = 0, vy = 0, vxy = 0;
        for (int64_t u = 0; u < k; ++u) {
          for (int64_t v = 0; v < k; ++v) {
            const double dx = xa[i + u][j + v][c] - mx, dy = ya[i + u][j + v][c] - my;
            vx += dx * dx;
            vy += dy * dy;
            vxy += dx * dy;
          }
        }
        vx /= n - 1;
        vy /= n - 1;
        vxy /= n - 1;
        sum += ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2));
        ++count;
      }
    }
  }
  return sum / static_cast<double>(count);
}

TEST(SsimLlamaGen, EqualsTheDefinitionWindowByWindow) {
  torch::manual_seed(3);
  const auto a = torch::randint(0, 256, {2, 13, 11, 3}, torch::kUInt8);
  const auto noise = torch::randint(-40, 41, {2, 13, 11, 3}, torch::kInt);
  const auto b = (a.to(torch::kInt) + noise).clamp(0, 255).to(torch::kUInt8);
  const auto s = ssim_llamagen(a, b);
  ASSERT_EQ(s.sizes(), (std::vector<int64_t>{2}));
  for (int64_t i = 0; i < 2; ++i) {
    const double expected = naive_ssim(a[i], b[i]);
    EXPECT_NEAR(s[i].item<double>(), expected, 1e-12) << "image " << i;
    EXPECT_GT(expected, 0.0);
    EXPECT_LT(expected, 1.0);
  }
  EXPECT_NEAR(ssim_llamagen(a, a).min().item<double>(), 1.0, 1e-12);
  EXPECT_ANY_THROW(ssim_llamagen(a, b.narrow(1, 0, 12)));
}

}  // namespace
}  // namespace aim
