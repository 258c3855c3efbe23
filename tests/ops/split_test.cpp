// ops::split_last_dim: the values of split_with_sizes; a backward that concatenates the parts'
// gradients when their consumers did not write them into one buffer.
// ops::split_grad_slot: which views get a place in the split's gradient buffer, once per pass;
// gradients right whether or not every consumer writes there, with no concatenation when they
// all do; a place handed out and kept elsewhere never overwritten.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "aim/ops/split.h"
#include "test_util.h"

namespace aim {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

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

// y = a * x, whose backward writes dx into x's place from split_grad_slot when it gets one (as
// the gated norm, conv and scan kernels' backward do), and counts the places it got.
struct ScaleIntoSlot : public torch::autograd::Function<ScaleIntoSlot> {
  static inline int places = 0;
  static inline const void* last_place = nullptr;
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, double a) {
    ctx->save_for_backward({x});
    ctx->saved_data["a"] = a;
    return x * a;
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto x = ctx->get_saved_variables()[0];
    const auto dx = grads[0] * ctx->saved_data["a"].toDouble();
    auto place = ops::split_grad_slot(x);
    if (!place.defined()) return {dx, torch::Tensor()};
    ++places;
    last_place = place.storage().data();
    place.copy_(dx);
    return {place, torch::Tensor()};
  }
};

// t [2, 5, 9], an op's output, split {3, 2, 4}; the loss weights.
struct SlotCase {
  torch::Tensor leaf, t, w;
  std::vector<torch::Tensor> parts;
  SlotCase() {
    leaf = torch::randn({2, 5, 9}, torch::kDouble).requires_grad_(true);
    t = leaf * 1.0;
    w = torch::randn({2, 5, 9}, torch::kDouble);
    parts = ops::split_last_dim(t, {3, 2, 4});
  }
  torch::Tensor w_part(int64_t start, int64_t width) const { return w.narrow(-1, start, width); }
};

TEST(SplitGradSlot, ConsumersWritingTheirPlacesLeaveNothingToConcatenate) {
  torch::manual_seed(3);
  SlotCase c;
  // Part 0 as it is, part 1 transposed, part 2 with its last dimension split in two.
  const auto y0 = ScaleIntoSlot::apply(c.parts[0], 2.0);
  const auto y1 = ScaleIntoSlot::apply(c.parts[1].transpose(0, 1), 3.0);
  const auto y2 = ScaleIntoSlot::apply(c.parts[2].reshape({2, 5, 2, 2}), 5.0);
  const auto loss = (y0 * c.w_part(0, 3)).sum() + (y1 * c.w_part(3, 2).transpose(0, 1)).sum() +
                    (y2 * c.w_part(5, 4).reshape({2, 5, 2, 2})).sum();
  ScaleIntoSlot::places = 0;
  test::OpCounter cats("aten::cat");
  const auto grad = torch::autograd::grad({loss}, {c.t})[0];
  EXPECT_EQ(ScaleIntoSlot::places, 3);
  EXPECT_EQ(cats.count(), 0);
  EXPECT_EQ(grad.storage().data(), ScaleIntoSlot::last_place) << "the buffer was copied";
  const auto expected = torch::cat({2 * c.w_part(0, 3), 3 * c.w_part(3, 2), 5 * c.w_part(5, 4)}, -1);
  EXPECT_TRUE(torch::equal(grad, expected));
}

TEST(SplitGradSlot, PartsWithoutAPlaceAreCopiedIntoTheBuffer) {
  torch::manual_seed(4);
  SlotCase c;
  // Part 0 written in place, part 1 by ATen, part 2 unused (zeros).
  const auto y0 = ScaleIntoSlot::apply(c.parts[0], 2.0);
  const auto loss = (y0 * c.w_part(0, 3)).sum() + (c.parts[1] * c.parts[1] * c.w_part(3, 2)).sum();
  test::OpCounter cats("aten::cat");
  const auto grad = torch::autograd::grad({loss}, {c.t})[0];
  EXPECT_EQ(cats.count(), 0);
  EXPECT_EQ(grad.storage().data(), ScaleIntoSlot::last_place);
  const auto p1 = c.parts[1].detach();
  const auto expected =
      torch::cat({2 * c.w_part(0, 3), 2 * p1 * c.w_part(3, 2), torch::zeros({2, 5, 4}, torch::kDouble)}, -1);
  EXPECT_TRUE(torch::allclose(grad, expected, 0, 1e-12));
}

TEST(SplitGradSlot, APartWithTwoConsumersGetsOnePlaceAndTheRightSum) {
  torch::manual_seed(5);
  SlotCase c;
  ScaleIntoSlot::places = 0;
  const auto ya = ScaleIntoSlot::apply(c.parts[0], 2.0);
  const auto yb = ScaleIntoSlot::apply(c.parts[0], 3.0);
  const auto y2 = ScaleIntoSlot::apply(c.parts[2], 5.0);
  const auto loss = ((ya + yb) * c.w_part(0, 3)).sum() + (y2 * c.w_part(5, 4)).sum();
  const auto grad = torch::autograd::grad({loss}, {c.t})[0];
  EXPECT_EQ(ScaleIntoSlot::places, 2);  // part 0 once, part 2
  const auto expected = torch::cat({5 * c.w_part(0, 3), torch::zeros({2, 5, 2}, torch::kDouble),
                                    5 * c.w_part(5, 4)}, -1);
  EXPECT_TRUE(torch::allclose(grad, expected, 0, 1e-12));
}

TEST(SplitGradSlot, EveryBackwardPassStartsAfresh) {
  torch::manual_seed(6);
  SlotCase c;
  const auto y0 = ScaleIntoSlot::apply(c.parts[0], 2.0);
  const auto y2 = ScaleIntoSlot::apply(c.parts[2].transpose(1, 2), 5.0);
  const auto loss = (y0 * c.w_part(0, 3)).sum() + (y2 * c.w_part(5, 4).transpose(1, 2)).sum();
  const auto expected =
      torch::cat({2 * c.w_part(0, 3), torch::zeros({2, 5, 2}, torch::kDouble), 5 * c.w_part(5, 4)}, -1);
  for (int pass = 0; pass < 3; ++pass) {
    ScaleIntoSlot::places = 0;
    test::OpCounter cats("aten::cat");
    const auto grad = torch::autograd::grad({loss}, {c.t}, {}, /*retain_graph=*/true)[0];
    EXPECT_EQ(ScaleIntoSlot::places, 2) << "pass " << pass;
    EXPECT_EQ(cats.count(), 0) << "pass " << pass;
    EXPECT_TRUE(torch::equal(grad, expected)) << "pass " << pass;
  }
}

TEST(SplitGradSlot, APlaceKeptFromAnEarlierPassIsNeverWritten) {
  torch::manual_seed(7);
  SlotCase c;
  const auto y0 = ScaleIntoSlot::apply(c.parts[0], 2.0);
  const auto y1 = ScaleIntoSlot::apply(c.parts[1], 3.0);
  const auto loss = (y0 * c.w_part(0, 3)).sum() + (y1 * c.w_part(3, 2)).sum();
  // The gradient of part 0 alone: its place, which the caller keeps; the split does not run.
  const auto kept = torch::autograd::grad({loss}, {c.parts[0]}, {}, /*retain_graph=*/true)[0];
  const auto kept_value = kept.clone();
  EXPECT_EQ(kept.storage().data(), ScaleIntoSlot::last_place);
  const auto grad = torch::autograd::grad({loss}, {c.t})[0];
  EXPECT_TRUE(torch::equal(kept, kept_value)) << "a place the caller kept was overwritten";
  const auto expected =
      torch::cat({2 * c.w_part(0, 3), 3 * c.w_part(3, 2), torch::zeros({2, 5, 4}, torch::kDouble)}, -1);
  EXPECT_TRUE(torch::equal(grad, expected));
  EXPECT_NE(grad.storage().data(), kept.storage().data());
}

TEST(SplitGradSlot, OnlyViewsOverAWholePartGetAPlace) {
  auto t = torch::randn({4, 6, 10}).requires_grad_(true);
  const auto parts = ops::split_last_dim(t * 1.0f, {4, 6});
  // Not over a whole part: a narrower view, one reaching into the next part, another dtype.
  EXPECT_FALSE(ops::split_grad_slot(parts[0].narrow(1, 0, 5)).defined());
  EXPECT_FALSE(ops::split_grad_slot(parts[0].as_strided({4, 6, 4}, {60, 10, 1}, 1)).defined());
  EXPECT_FALSE(ops::split_grad_slot(parts[0].to(torch::kDouble)).defined());
  // Not from a split: t itself, a tensor without a graph, a copy of a part.
  EXPECT_FALSE(ops::split_grad_slot(t).defined());
  EXPECT_FALSE(ops::split_grad_slot(torch::randn({4, 6, 4})).defined());
  EXPECT_FALSE(ops::split_grad_slot(parts[1].clone()).defined());
  // A permuted view of part 1: a place of its sizes and strides in a buffer of t's layout.
  const auto view = parts[1].permute({2, 0, 1});
  const auto place = ops::split_grad_slot(view);
  ASSERT_TRUE(place.defined());
  EXPECT_EQ(place.sizes(), view.sizes());
  EXPECT_EQ(place.strides(), view.strides());
  EXPECT_EQ(place.storage_offset(), 4);  // column 4 of row 0
  EXPECT_NE(place.storage().data(), t.storage().data());
  // Handed out once: not again for the same part, however viewed.
  EXPECT_FALSE(ops::split_grad_slot(parts[1]).defined());
  EXPECT_TRUE(ops::split_grad_slot(parts[0]).defined());
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
