#pragma once
// Which implementation an op runs. The hand-written kernels (CUDA, and the CPU scan kernel) are
// the default; the plain LibTorch references (namespace aim::ops::ref) are the oracle and the
// fallback.
//
//   AIM_CUDA_KERNELS=0   run the references on CUDA too (benchmarks "without kernels", bisecting)
//   AIM_CPU_KERNELS=0    run the references on the CPU too
//   AIM_CPU_ISA=avx2     run the CPU kernels' AVX2 + FMA code (or `baseline`, `avx512`) where the
//                        CPU has better: comparing the paths (default: the best the CPU has)
//   AIM_POISON_OUTPUTS=1 fill every kernel output with NaN before the launch, so an element a
//                        kernel forgets to write fails the tests instead of passing on stale memory
namespace aim::ops {

/// True unless AIM_CUDA_KERNELS=0 or set_cuda_kernels(false).
bool cuda_kernels_enabled();
void set_cuda_kernels(bool enabled);

/// True unless AIM_CPU_KERNELS=0 or set_cpu_kernels(false).
bool cpu_kernels_enabled();
void set_cpu_kernels(bool enabled);

/// The instruction set the CPU kernels run on: "avx512", "avx2" (with FMA) or "baseline".
const char* cpu_kernel_isa();

/// The CUDA kernels for CPU tensors: tests/emu installs the kernels run by its CPU emulator
/// (struct in src/ops/kernel_table.h) so that whole models run through the kernel code in CI;
/// dispatch then uses them where it would use the CUDA kernels on a GPU, under the same switch.
/// Null (the default) uninstalls.
struct KernelTable;
void set_emulated_kernels(const KernelTable* table);

/// True when AIM_POISON_OUTPUTS=1 or set_poison_outputs(true); tests turn it on.
bool poison_outputs();
void set_poison_outputs(bool enabled);

/// A kernel's own on/off switch, read from the environment now (so a benchmark can compare both
/// settings in one process): `name`=1 true, 0 false, unset or empty `fallback`; any other value
/// is an error naming the variable and the value found.
bool env_switch(const char* name, bool fallback);

/// While one is alive on this thread, the decoding step's kernels (the norms, fused norm +
/// in_proj, the small-batch linear, Mamba2's fused step, the sampling kernel) launch on sm_90
/// and later as programmatic dependents of the previous kernel in the stream: their blocks start
/// while it finishes, load the layer's weights (or ask for them, and the fused step for its
/// state rows, in L2) and then wait for it (kernels/grid_dependency.cuh). Whoever opens one promises that, until it closes, nothing
/// launched on the stream writes a weight those kernels read, or a recurrent state, except those
/// kernels themselves: true of a model's decoding step (AimModel::step), which opens one, not of
/// arbitrary code (a test that fills a weight and calls an op at once). AIM_PDL=0 turns it off
/// (bisecting; `bench_sample` with and without).
/// DependentLaunchScope(false) turns them off until it closes (around a weight converted right
/// before its use).
class DependentLaunchScope {
 public:
  explicit DependentLaunchScope(bool enabled = true);
  ~DependentLaunchScope();
  DependentLaunchScope(const DependentLaunchScope&) = delete;
  DependentLaunchScope& operator=(const DependentLaunchScope&) = delete;

 private:
  bool outer_;
};

/// Inside a DependentLaunchScope on this thread, unless AIM_PDL=0.
bool dependent_launch_enabled();

}  // namespace aim::ops
