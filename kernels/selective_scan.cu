// Host entries of the selective-scan kernels: argument checks, the instantiation for the
// element type, the backward's block count and workspace, and the fixed-order sums of its
// partials.
#include <algorithm>

#include "device_query.h"
#include "selective_scan_bwd_kernel.cuh"
#include "selective_scan_fwd_kernel.cuh"
#include "selective_scan_update_kernel.cuh"

namespace aim::kernels {

extern template cudaError_t selective_scan_fwd_launch<float>(const SelectiveScanParams&,
                                                             cudaStream_t);
extern template cudaError_t selective_scan_fwd_launch<__nv_bfloat16>(const SelectiveScanParams&,
                                                                     cudaStream_t);
extern template cudaError_t selective_scan_bwd_launch<float>(const SelectiveScanParams&,
                                                             cudaStream_t);
extern template cudaError_t selective_scan_bwd_launch<__nv_bfloat16>(const SelectiveScanParams&,
                                                                     cudaStream_t);
extern template cudaError_t selective_state_update_launch<float>(
    const SelectiveStateUpdateParams&, cudaStream_t);
extern template cudaError_t selective_state_update_launch<__nv_bfloat16>(
    const SelectiveStateUpdateParams&, cudaStream_t);

namespace {

constexpr int kMaxGridY = 65535;
constexpr int kSumThreads = 256;
constexpr int kMaxSumBlocksX = 1024;
// Backward blocks aimed for per SM (about two waves of the kernel's 4 resident blocks).
constexpr int kBwdBlocksPerSm = 8;
// Cap on the dB + dC partials (floats): 128 MiB.
constexpr int64_t kBwdPartialBudget = int64_t{32} << 20;

// out[o, i] = sum over k < parts of in[o, k, i] (rows of `inner` floats), k in order: the
// same bits on every run.
struct SumTask {
  const float* in = nullptr;
  float* out = nullptr;
  int outer = 0, parts = 0;
  int64_t inner = 0;
};
struct SumParams {
  SumTask tasks[5];
};

// Grid (x, max outer, tasks); a grid-stride loop over i.
__global__ void selective_scan_sum_kernel(SumParams p) {
  SumTask t;
  switch (blockIdx.z) {  // constant indices keep the params in the constant bank
    case 0: t = p.tasks[0]; break;
    case 1: t = p.tasks[1]; break;
    case 2: t = p.tasks[2]; break;
    case 3: t = p.tasks[3]; break;
    default: t = p.tasks[4]; break;
  }
  const int o = blockIdx.y;
  if (o >= t.outer) return;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < t.inner;
       i += step) {
    const float* in = t.in + static_cast<int64_t>(o) * t.parts * t.inner + i;
    float acc = 0.f;
    for (int k = 0; k < t.parts; ++k) acc += in[k * t.inner];
    t.out[static_cast<int64_t>(o) * t.inner + i] = acc;
  }
}

bool common_ok(const SelectiveScanParams& p) {
  return p.batch >= 1 && p.batch <= kMaxGridY && p.channels >= 1 && p.len >= 1 &&
         p.dstate >= 1 && p.dstate <= kSelectiveScanMaxDstate && p.u != nullptr &&
         p.delta != nullptr && p.Bm != nullptr && p.Cm != nullptr && p.A != nullptr;
}

}  // namespace

int selective_scan_chunks(int len) { return (len + kSelectiveScanChunk - 1) / kSelectiveScanChunk; }

cudaError_t selective_scan_fwd_cuda(const SelectiveScanParams& p, ElemType dtype,
                                    cudaStream_t stream) {
  if (!common_ok(p) || p.y == nullptr) return cudaErrorInvalidValue;
  return dtype == ElemType::kBFloat16 ? selective_scan_fwd_launch<__nv_bfloat16>(p, stream)
                                      : selective_scan_fwd_launch<float>(p, stream);
}

int selective_scan_bwd_groups_per_block(const SelectiveScanParams& p) {
  SelectiveScanParams one = p;
  one.bwd_groups_per_block = 1;
  const sscan::BwdLayout l = sscan::bwd_layout(one);
  const int64_t groups = std::max(l.groups, 1);
  const int64_t target = static_cast<int64_t>(kBwdBlocksPerSm) * current_sm_count();
  int64_t gpb = std::max<int64_t>(1, (p.batch * groups + target - 1) / target);
  const int64_t per_block = 2 * static_cast<int64_t>(p.len) * p.dstate;
  const int64_t max_blocks =
      std::max<int64_t>(1, kBwdPartialBudget / std::max<int64_t>(1, per_block * p.batch));
  gpb = std::max(gpb, (groups + max_blocks - 1) / max_blocks);
  return static_cast<int>(std::min(gpb, groups));
}

int64_t selective_scan_bwd_workspace_size(const SelectiveScanParams& p) {
  return sscan::bwd_workspace(p).total;
}

cudaError_t selective_scan_bwd_cuda(const SelectiveScanParams& p, ElemType dtype,
                                    cudaStream_t stream) {
  if (!common_ok(p) || p.chunk_states == nullptr || p.dout == nullptr || p.du == nullptr ||
      p.ddelta == nullptr || (p.z != nullptr && p.dz == nullptr) || p.dA == nullptr ||
      p.dB == nullptr || p.dC == nullptr || p.workspace == nullptr ||
      p.bwd_groups_per_block < 1) {
    return cudaErrorInvalidValue;
  }
  const cudaError_t err = dtype == ElemType::kBFloat16
                              ? selective_scan_bwd_launch<__nv_bfloat16>(p, stream)
                              : selective_scan_bwd_launch<float>(p, stream);
  if (err != cudaSuccess) return err;

  const sscan::BwdLayout l = sscan::bwd_layout(p);
  const sscan::BwdWorkspace w = sscan::bwd_workspace(p);
  const int64_t bc_inner = static_cast<int64_t>(p.len) * p.dstate;
  SumParams sum;
  int ntasks = 0;
  sum.tasks[ntasks++] = {p.workspace, p.dB, p.batch, l.nblk, bc_inner};
  sum.tasks[ntasks++] = {p.workspace + w.part_bc, p.dC, p.batch, l.nblk, bc_inner};
  sum.tasks[ntasks++] = {p.workspace + w.a_offset, p.dA, 1, p.batch,
                         static_cast<int64_t>(p.channels) * p.dstate};
  if (p.dD != nullptr) {
    sum.tasks[ntasks++] = {p.workspace + w.d_offset, p.dD, 1, p.batch, p.channels};
  }
  if (p.ddelta_bias != nullptr) {
    sum.tasks[ntasks++] = {p.workspace + w.bias_offset, p.ddelta_bias, 1, p.batch, p.channels};
  }
  const int64_t inner = std::max(bc_inner, static_cast<int64_t>(p.channels) * p.dstate);
  const int blocks_x = static_cast<int>(
      std::min<int64_t>(kMaxSumBlocksX, (inner + kSumThreads - 1) / kSumThreads));
  const dim3 grid(blocks_x, p.batch, ntasks);
  selective_scan_sum_kernel<<<grid, kSumThreads, 0, stream>>>(sum);
  return cudaGetLastError();
}

cudaError_t selective_state_update_cuda(const SelectiveStateUpdateParams& p, ElemType dtype,
                                        cudaStream_t stream) {
  if (p.batch < 1 || p.batch > kMaxGridY || p.channels < 1 || p.dstate < 1 ||
      p.state == nullptr || p.u == nullptr || p.delta == nullptr || p.Bm == nullptr ||
      p.Cm == nullptr || p.A == nullptr || p.y == nullptr) {
    return cudaErrorInvalidValue;
  }
  return dtype == ElemType::kBFloat16 ? selective_state_update_launch<__nv_bfloat16>(p, stream)
                                      : selective_state_update_launch<float>(p, stream);
}

}  // namespace aim::kernels
