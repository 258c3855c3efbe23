// Host entries of the RMS norm kernels: argument checks, the instantiation for the element
// types, and the column sums that finish the backward passes.
#include <algorithm>

#include "device_query.h"
#include "rms_norm_kernel.cuh"

namespace aim::kernels {

extern template cudaError_t add_rms_norm_fwd_launch<float, float>(const AddRmsNormParams&,
                                                                  cudaStream_t);
extern template cudaError_t add_rms_norm_fwd_launch<__nv_bfloat16, float>(
    const AddRmsNormParams&, cudaStream_t);
extern template cudaError_t add_rms_norm_fwd_launch<__nv_bfloat16, __nv_bfloat16>(
    const AddRmsNormParams&, cudaStream_t);
extern template cudaError_t add_rms_norm_bwd_launch<float, float>(const AddRmsNormParams&,
                                                                  cudaStream_t);
extern template cudaError_t add_rms_norm_bwd_launch<__nv_bfloat16, float>(
    const AddRmsNormParams&, cudaStream_t);
extern template cudaError_t add_rms_norm_bwd_launch<__nv_bfloat16, __nv_bfloat16>(
    const AddRmsNormParams&, cudaStream_t);
extern template cudaError_t gated_rms_norm_fwd_launch<float>(const GatedRmsNormParams&,
                                                             cudaStream_t);
extern template cudaError_t gated_rms_norm_fwd_launch<__nv_bfloat16>(const GatedRmsNormParams&,
                                                                     cudaStream_t);
extern template cudaError_t gated_rms_norm_bwd_launch<float>(const GatedRmsNormParams&,
                                                             cudaStream_t);
extern template cudaError_t gated_rms_norm_bwd_launch<__nv_bfloat16>(const GatedRmsNormParams&,
                                                                     cudaStream_t);

namespace {

constexpr int kMaxGridY = 65535;
constexpr int kMinRowsPerChunk = 4;
constexpr int kBlocksPerSm = 4;

// out[g, j] = sum over i < rows_per_group of in[g * rows_per_group + i, j], rows of dim floats.
struct ColumnSumTask {
  const float* in = nullptr;
  float* out = nullptr;
  int groups = 0, rows_per_group = 0;
};
struct ColumnSumParams {
  ColumnSumTask tasks[4];
  int dim = 0;
};

// Grid (ceil(dim / 32), max groups, tasks), block (32, 16): thread (x, y) adds rows y, y + 16,
// ... of column j in order, then thread (x, 0) adds the 16 sums in order. The order is fixed,
// so the sums are the same bits on every run.
__global__ void rms_norm_column_sum_kernel(ColumnSumParams p) {
  using namespace rms;
  // Constant indices keep the params in the constant bank (blockIdx.z < 4).
  const ColumnSumTask t = blockIdx.z == 0   ? p.tasks[0]
                          : blockIdx.z == 1 ? p.tasks[1]
                          : blockIdx.z == 2 ? p.tasks[2]
                                            : p.tasks[3];
  const int g = blockIdx.y;
  if (g >= t.groups) return;
  const int j = blockIdx.x * kColumnSumX + threadIdx.x;
  float acc = 0.f;
  if (j < p.dim) {
    const float* in = t.in + static_cast<int64_t>(g) * t.rows_per_group * p.dim + j;
#pragma unroll 4
    for (int i = threadIdx.y; i < t.rows_per_group; i += kColumnSumY) {
      acc += in[static_cast<int64_t>(i) * p.dim];
    }
  }
  __shared__ float partial[kColumnSumY][kColumnSumX + 1];
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && j < p.dim) {
    float sum = 0.f;
    for (int y = 0; y < kColumnSumY; ++y) sum += partial[y][threadIdx.x];
    t.out[static_cast<int64_t>(g) * p.dim + j] = sum;
  }
}

cudaError_t column_sum_launch(const ColumnSumParams& p, int ntasks, cudaStream_t stream) {
  int groups = 0;
  for (int i = 0; i < ntasks; ++i) groups = std::max(groups, p.tasks[i].groups);
  const dim3 grid((p.dim + rms::kColumnSumX - 1) / rms::kColumnSumX, groups, ntasks);
  const dim3 block(rms::kColumnSumX, rms::kColumnSumY);
  rms_norm_column_sum_kernel<<<grid, block, 0, stream>>>(p);
  return cudaGetLastError();
}

bool add_common_ok(const AddRmsNormParams& p, ElemType in) {
  if (p.rows < 1 || p.dim < 1 || p.dim > kRmsNormMaxDim || p.weight == nullptr) return false;
  if (p.hidden_gate != nullptr && p.gate_type == ElemType::kBFloat16 && in != ElemType::kBFloat16) {
    return false;
  }
  if (p.scale == nullptr && p.hidden_gate == nullptr) return true;
  return p.rows_per_batch >= 1 && p.rows % p.rows_per_batch == 0 &&
         p.rows / p.rows_per_batch <= kMaxGridY;
}

bool gated_common_ok(const GatedRmsNormParams& p) {
  return p.rows >= 1 && p.group_size >= 1 && p.group_size <= kRmsNormMaxDim &&
         p.dim % p.group_size == 0 && p.dim / p.group_size <= kMaxGridY && p.weight != nullptr &&
         p.x != nullptr;
}

}  // namespace

cudaError_t add_rms_norm_fwd_cuda(const AddRmsNormParams& p, ElemType in, ElemType res,
                                  cudaStream_t stream) {
  if (!add_common_ok(p, in) || p.hidden == nullptr || p.out == nullptr || p.residual_out == nullptr ||
      p.rstd == nullptr || (p.shift == nullptr) != (p.scale == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (in == ElemType::kFloat32) {
    if (res != ElemType::kFloat32) return cudaErrorInvalidValue;
    return add_rms_norm_fwd_launch<float, float>(p, stream);
  }
  return res == ElemType::kFloat32 ? add_rms_norm_fwd_launch<__nv_bfloat16, float>(p, stream)
                                   : add_rms_norm_fwd_launch<__nv_bfloat16, __nv_bfloat16>(p, stream);
}

cudaError_t add_rms_norm_bwd_cuda(const AddRmsNormParams& p, ElemType in, ElemType res,
                                  cudaStream_t stream) {
  if (!add_common_ok(p, in) || p.residual_out == nullptr || p.rstd == nullptr || p.dout == nullptr ||
      p.dweight == nullptr || p.workspace == nullptr || p.rows_per_chunk < 1 ||
      (p.scale != nullptr && (p.dshift == nullptr || p.dscale == nullptr)) ||
      (p.hidden_gate != nullptr &&
       (p.dgate == nullptr || p.hidden == nullptr || p.dim > kRmsNormMaxGatedBwdDim))) {
    return cudaErrorInvalidValue;
  }
  cudaError_t err;
  if (in == ElemType::kFloat32) {
    if (res != ElemType::kFloat32) return cudaErrorInvalidValue;
    err = add_rms_norm_bwd_launch<float, float>(p, stream);
  } else {
    err = res == ElemType::kFloat32
              ? add_rms_norm_bwd_launch<__nv_bfloat16, float>(p, stream)
              : add_rms_norm_bwd_launch<__nv_bfloat16, __nv_bfloat16>(p, stream);
  }
  if (err != cudaSuccess) return err;

  const rms::AddBwdLayout l = rms::add_bwd_layout(p);
  const int64_t partials = static_cast<int64_t>(l.batches) * l.chunks_per_batch;
  ColumnSumParams sum;
  sum.dim = p.dim;
  sum.tasks[0] = {p.workspace, p.dweight, 1, static_cast<int>(partials)};
  int ntasks = 1;
  if (p.scale != nullptr) {
    sum.tasks[1] = {p.workspace + partials * p.dim, p.dshift, l.batches, l.chunks_per_batch};
    sum.tasks[2] = {p.workspace + 2 * partials * p.dim, p.dscale, l.batches, l.chunks_per_batch};
    ntasks = 3;
  }
  if (p.hidden_gate != nullptr) {
    sum.tasks[ntasks] = {p.workspace + ntasks * partials * p.dim, p.dgate, l.batches,
                         l.chunks_per_batch};
    ++ntasks;
  }
  return column_sum_launch(sum, ntasks, stream);
}

cudaError_t gated_rms_norm_fwd_cuda(const GatedRmsNormParams& p, ElemType dtype,
                                    cudaStream_t stream) {
  if (!gated_common_ok(p) || p.out == nullptr || p.rstd == nullptr) return cudaErrorInvalidValue;
  return dtype == ElemType::kBFloat16 ? gated_rms_norm_fwd_launch<__nv_bfloat16>(p, stream)
                                      : gated_rms_norm_fwd_launch<float>(p, stream);
}

cudaError_t gated_rms_norm_bwd_cuda(const GatedRmsNormParams& p, ElemType dtype,
                                    cudaStream_t stream) {
  if (!gated_common_ok(p) || p.rstd == nullptr || p.dout == nullptr || p.dweight == nullptr ||
      p.workspace == nullptr || p.rows_per_chunk < 1 || (p.dz != nullptr && p.z == nullptr) ||
      (p.dx != nullptr && p.dx_row_stride < p.dim) || (p.dz != nullptr && p.dz_row_stride < p.dim)) {
    return cudaErrorInvalidValue;
  }
  const cudaError_t err = dtype == ElemType::kBFloat16
                              ? gated_rms_norm_bwd_launch<__nv_bfloat16>(p, stream)
                              : gated_rms_norm_bwd_launch<float>(p, stream);
  if (err != cudaSuccess) return err;
  ColumnSumParams sum;
  sum.dim = p.dim;
  sum.tasks[0] = {p.workspace, p.dweight, 1, rms::gated_bwd_chunks(p)};
  return column_sum_launch(sum, 1, stream);
}

int rms_norm_bwd_rows_per_chunk(int64_t rows) {
  const int sms = current_sm_count();
  const int64_t blocks = static_cast<int64_t>(kBlocksPerSm) * sms;
  return static_cast<int>(std::max<int64_t>(kMinRowsPerChunk, (rows + blocks - 1) / blocks));
}

int64_t add_rms_norm_bwd_workspace_size(const AddRmsNormParams& p) {
  const rms::AddBwdLayout l = rms::add_bwd_layout(p);
  const int64_t stats = (p.scale != nullptr ? 3 : 1) + (p.hidden_gate != nullptr ? 1 : 0);
  return stats * l.batches * l.chunks_per_batch * p.dim;
}

int64_t gated_rms_norm_bwd_workspace_size(const GatedRmsNormParams& p) {
  return static_cast<int64_t>(rms::gated_bwd_chunks(p)) * p.dim;
}

}  // namespace aim::kernels
