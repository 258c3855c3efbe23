// Installs the emulated CUDA kernels (the adapters built in aim::ops::cuda_emu) as dispatch's
// kernel table for the whole of aim_emu_tests: every op on CPU tensors that a GPU would run
// through a kernel runs through the emulated one (aim/ops/dispatch.h, set_emulated_kernels).
// The model-level tests built into this binary (the official-fixture parity tests) thereby run
// the model, its loss, gradients and recurrent decoding through the kernels.
#include <gtest/gtest.h>

#include "aim/ops/dispatch.h"
#include "ops/conv1d_cuda.h"
#include "ops/kernel_table.h"
#include "ops/linear_cuda.h"
#include "ops/loss_cuda.h"
#include "ops/norms_cuda.h"
#include "ops/sampling_cuda.h"
#include "ops/selective_scan_cuda.h"
#include "ops/ssd_scan_cuda.h"

namespace aim {
namespace {

namespace k = ops::cuda_emu;

const ops::KernelTable kEmulated{
    k::causal_conv1d_supported,
    k::causal_conv1d,
    k::causal_conv1d_update_supported,
    k::causal_conv1d_update,
    k::linear_supported,
    k::linear,
    k::linear_cross_entropy_supported,
    k::linear_cross_entropy,
    k::add_rms_norm_supported,
    k::add_rms_norm_modulate,
    k::add_rms_norm_linear_supported,
    k::add_rms_norm_modulate_linear,
    k::gated_rms_norm_supported,
    k::gated_rms_norm,
    k::sample_tokens_keyed_supported,
    k::sample_tokens_keyed,
    k::selective_scan_supported,
    k::selective_scan,
    k::selective_state_update_supported,
    k::selective_state_update,
    k::ssd_scan_supported,
    k::ssd_scan,
    k::ssd_state_update_supported,
    k::ssd_state_update,
    k::ssd_decode_step_supported,
    k::ssd_decode_step,
};

class EmulatedKernels : public ::testing::Environment {
 public:
  void SetUp() override { ops::set_emulated_kernels(&kEmulated); }
  void TearDown() override { ops::set_emulated_kernels(nullptr); }
};

[[maybe_unused]] ::testing::Environment* const kEnvironment =
    ::testing::AddGlobalTestEnvironment(new EmulatedKernels);

}  // namespace
}  // namespace aim
