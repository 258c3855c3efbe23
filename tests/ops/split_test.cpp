// ops::split_last_dim: the values of split_with_sizes; a backward that concatenates the parts'
// gradients, or, when they arrive as adjacent slices of one buffer, passes that buffer on
// without a copy. ops::packed_along_last_dim: which layouts count as packed.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "aim/ops/split.h"

namespace aim {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// Identity on three tensors whose backward returns their gradients as slices of one fresh
// buffer, [.., a | b | c] (as the SSD scan kernels' backward does for x, B and C), and records
// the buffer's address.
struct PackedGradIdentity : public torch::autograd::Function<PackedGradIdentity> {
  static inline const void* last_buffer = nullptr;
  static tensor_list forward(AutogradContext*, const torch::Tensor& a, const torch::Tensor& b,
                             const torch::Tensor& c) {
    return {a.clone(), b.clone(), c.clone()};
  }
  static tensor_list backward(AutogradContext*, tensor_list grads) {
    const int64_t wa = grads[0].size(-1), wb = grads[1].size(-1), wc = grads[2].size(-1);
    auto shape = grads[0].sizes().vec();
    shape.back() = wa + wb + wc;
    auto buffer = torch::empty(shape, grads[0].options());
    buffer.narrow(-1, 0, wa).copy_(grads[0]);
    buffer.narrow(-1, wa, wb).copy_(grads[1]);
    buffer.narrow(-1, wa + wb, wc).copy_(grads[2]);
    last_buffer = buffer.data_ptr();
    return {buffer.narrow(-1, 0, wa), buffer.narrow(-1, wa, wb), buffer.narrow(-1, wa + wb, wc)};
  }
};

TEST(SplitLastDim, ValuesAndConcatenatedGradientsAreSplitWithSizes) {
  torch::manual_seed(1);
  const auto base = torch::randn({3, 5, 9}, torch::kDouble);
  auto t1 = base.clone().requires_grad_(true), t2 = base.clone().requires_grad_(true);
  const std::vector<int64_t> sizes{4, 2, 3};
  const auto mine = ops::split_last_dim(t1.transpose(0, 1), sizes);
  const auto theirs = t2.transpose(0, 1).split_with_sizes(sizes, -1);
  ASSERT_EQ(mine.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(torch::equal(mine[i], theirs[i])) << "part " << i;
  // Each part used differently, the middle one not at all (no gradient: zeros).
  const auto w0 = torch::randn({5, 3, 4}, torch::kDouble), w2 = torch::randn({5, 3, 3}, torch::kDouble);
  ((mine[0] * w0).sum() + (mine[2] * mine[2] * w2).sum()).backward();
  ((theirs[0] * w0).sum() + (theirs[2] * theirs[2] * w2).sum()).backward();
  EXPECT_TRUE(torch::equal(t1.grad(), t2.grad()));
  EXPECT_TRUE(torch::equal(t1.grad().narrow(-1, 4, 2), torch::zeros({3, 5, 2}, torch::kDouble)));
}

TEST(SplitLastDim, PackedGradientsPassWithoutACopy) {
  torch::manual_seed(2);
  auto t = torch::randn({2, 6, 11}, torch::kFloat).requires_grad_(true);
  const auto parts = ops::split_last_dim(t, {5, 3, 3});
  const auto outs = PackedGradIdentity::apply(parts[0], parts[1], parts[2]);
  const auto w = torch::randn({2, 6, 11});
  const auto loss = (outs[0] * w.narrow(-1, 0, 5)).sum() + (outs[1] * w.narrow(-1, 5, 3)).sum() +
                    (outs[2] * w.narrow(-1, 8, 3)).sum();
  const auto grad = torch::autograd::grad({loss}, {t})[0];
  EXPECT_EQ(grad.data_ptr(), PackedGradIdentity::last_buffer) << "the packed gradient was copied";
  EXPECT_TRUE(torch::equal(grad, w));
}

TEST(SplitLastDim, PackedLayoutsAreRecognisedAndOthersNot) {
  const auto buf = torch::randn({4, 7, 10});
  auto slices = [&](const torch::Tensor& b, std::vector<int64_t> at) {
    std::vector<torch::Tensor> out;
    for (size_t i = 0; i + 1 < at.size(); ++i) out.push_back(b.narrow(-1, at[i], at[i + 1] - at[i]));
    return out;
  };
  EXPECT_TRUE(ops::packed_along_last_dim(slices(buf, {0, 4, 7, 10})));
  EXPECT_TRUE(ops::packed_along_last_dim(slices(buf, {2, 4, 7})));  // a window of the rows
  auto out_of_order = slices(buf, {0, 4, 7, 10});
  std::swap(out_of_order[1], out_of_order[2]);
  EXPECT_FALSE(ops::packed_along_last_dim(out_of_order));
  EXPECT_FALSE(ops::packed_along_last_dim({buf.narrow(-1, 0, 4), buf.narrow(-1, 5, 5)}));  // a gap
  EXPECT_FALSE(ops::packed_along_last_dim({buf.narrow(-1, 0, 4), buf.narrow(-1, 4, 6).clone()}));
  EXPECT_FALSE(ops::packed_along_last_dim({buf.narrow(-1, 0, 4), torch::Tensor()}));
  // Rows 10 wide at a stride of 5: the covering view would overlap itself.
  const auto flat = torch::randn({40});
  EXPECT_FALSE(ops::packed_along_last_dim(
      {flat.as_strided({6, 5}, {5, 1}, 0), flat.as_strided({6, 5}, {5, 1}, 5)}));
  // A strided last dimension is not a slice of rows.
  const auto t = torch::randn({10, 4});
  EXPECT_FALSE(ops::packed_along_last_dim({t.t().narrow(-1, 0, 5), t.t().narrow(-1, 5, 5)}));
}

TEST(SplitLastDim, SizesThatDoNotAddUpNameBoth) {
  const auto t = torch::randn({2, 7});
  try {
    ops::split_last_dim(t, {3, 3});
    ADD_FAILURE() << "sizes adding up to 6 were accepted for a last dimension of 7";
  } catch (const std::exception& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("add up to 6"), std::string::npos) << what;
    EXPECT_NE(what.find("last dimension 7"), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace aim
