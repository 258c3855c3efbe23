#pragma once
// Helpers of the emulated-kernel tests.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "aim/ops/dispatch.h"
#include "emu_runtime.h"
#include "test_util.h"

namespace aim::test::emu {

inline std::string dtype_tag(torch::ScalarType t) { return t == torch::kBFloat16 ? "bf16" : "fp32"; }

/// Base of the emulated-kernel tests: outputs are poisoned (NaN) for the test's duration, so
/// elements a kernel leaves unwritten show up, as in the GPU tests.
template <typename Base = ::testing::Test>
class EmulatedKernelTest : public Base {
 protected:
  void SetUp() override { ops::set_poison_outputs(true); }
  void TearDown() override { ops::set_poison_outputs(false); }
};

}  // namespace aim::test::emu
