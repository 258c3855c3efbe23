// The small-batch linear kernel (kernels/skinny_linear.cu) through ops::linear on CUDA tensors,
// against the product in fp64 of the same bf16 values (tests/ops/linear_cases.h: within 2^-7 of
// each value plus 1e-5, twice bf16's rounding of the kernel's fp32 sums), outputs poisoned before
// every launch, the same bits twice.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "aim/ops/linear.h"
#include "ops/linear_cases.h"
#include "test_util.h"
#ifdef AIM_WITH_CUDA
#include "ops/linear_cuda.h"
#endif

namespace aim {
namespace {

class LinearCuda : public test::CudaKernelTest<::testing::TestWithParam<test::LinearCase>> {};

TEST_P(LinearCuda, MatchesTheProductInFp64) {
#ifdef AIM_WITH_CUDA
  test::check_linear(
      GetParam(), torch::kCUDA,
      [](const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) { return ops::linear(x, w, b); },
      ops::cuda::linear_supported);
#endif
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinearCuda, ::testing::ValuesIn(test::linear_cases()),
                         [](const auto& info) { return test::linear_case_name(info.param); });

}  // namespace
}  // namespace aim
