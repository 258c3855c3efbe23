#pragma once
// What `train.precision` means on the device a run trains on.
#include <string>

#include <torch/types.h>

namespace aim::train {

/// The arithmetic a training run uses.
struct Precision {
  bool bf16 = false;  ///< bf16 autocast with fp32 master weights; else plain fp32
  /// One line for the run's header: the setting, and for "auto" what it chose and why.
  std::string summary;
  /// Non-empty when the setting is known to be slow on this device (shown as a warning).
  std::string warning;
};

/// Resolves `train.precision` ("bf16", "fp32" or "auto") for `device`. "auto" is bf16 where the
/// device multiplies bf16 in hardware faster than fp32: a CUDA device of compute capability 8.0
/// or later, or a CPU with AMX-BF16. Elsewhere it is fp32: on CPUs without AMX the demo's AiM
/// step in bf16 ran at 0.81x fp32's speed with AVX512-BF16, and ATen's bf16 matmul at 1/69 of
/// fp32's with AVX2 only (docs/perf.md).
Precision resolve_precision(const std::string& setting, const torch::Device& device);

/// CPU features as ATen's cpuinfo reports them (CPUID).
bool cpu_has_amx_bf16();
bool cpu_has_avx512_bf16();

}  // namespace aim::train
