// The decoding step's block input and in_proj in one launch, for a few rows (a small sampling
// batch, where the step is bound by launches and weight reads, not by arithmetic).
//
// Per launch, rows m < M (M <= kNormLinearMaxRows), dim D, out_features N:
//   x[m]      = add_rms_norm_row(m)     the fused add + RMSNorm + adaLN modulate of
//                                       rms_norm_kernel.cuh, rounded to the input type as the
//                                       norm kernel's output is; residual_out by block 0
//   out[m, o] = sum_j x[m, j] * weight[o, j] + bias[o]          fp32 sums, rounded once
//
// Grid: enough blocks for every warp to own kOut output features per pass (at most
// kBlocksPerSm per SM; more features walk a grid stride). Every block first normalises all M
// rows into shared memory (the rows are a few KB; recomputing them per block costs L2 reads,
// while a separate norm launch costs a kernel's latency on the serial path of a token). Then
// each warp reads its kOut weight rows in 16-byte vectors, lane-strided so a warp's loads are
// contiguous, kUnroll vectors per lane in flight per feature, and multiplies them with the M
// rows read from shared memory (one 16-byte read per row serves kOut features). The first
// weight vectors are loaded before the norm, so the norm's latency overlaps the first loads;
// launched as a dependent of the previous kernel (grid_dependency.cuh), before the block waits
// for that kernel, which wrote the rows, and with each warp's first kOut weight rows asked for
// in L2.
// A warp sums its lanes' partial dot products with shuffles; lane 0 writes the kOut x M values.
#include <cuda_bf16.h>

#include <cstdint>

#include "device_query.h"
#include "grid_dependency.cuh"
#include "norm_linear.h"
#include "rms_norm_kernel.cuh"

namespace aim::kernels {

namespace {

constexpr int kThreads = kNormLinearThreads;
constexpr int kOut = 4;     // output features per warp and pass
constexpr int kUnroll = 2;  // 16-byte weight vectors per lane and feature in flight
// Blocks per SM the grid is sized for, and the register bound that lets them fit (at most 128
// registers a thread at 256 threads): without it <bf16, fp32 residual, 8 rows> took 141, one
// block fitted per SM, and AiM-L's in_proj at 5-8 rows (137 blocks) ran as 132 + a tail of 5.
// The bound costs that instance a few spilled values outside the weight loop.
constexpr int kBlocksPerSm = 2;
constexpr int kMaxSmemBytes = 96 * 1024;
constexpr int kScratchFloats = 32;  // the norm's block reduction, static shared memory
static_assert(kNormLinearMaxDim == rms::kPerThread * kThreads,
              "a row must fit the norm's registers");

// Elements of a 16-byte vector.
template <typename T>
struct Vec16 {
  static constexpr int kElems = static_cast<int>(16 / sizeof(T));
};

int padded_rows(int rows) { return rows <= 1 ? 1 : rows <= 2 ? 2 : rows <= 4 ? 4 : 8; }

// kUnroll vectors of the kOut weight rows from output feature o0 and vector v0 of a row, as
// floats; rows past N and vectors past the row's end read as zeros.
template <typename Tin>
__device__ __forceinline__ void load_weights(const Tin* weight, int64_t o0, int v0, int lane,
                                             int out_features, int vecs, int dim,
                                             float (&w)[kOut][kUnroll][Vec16<Tin>::kElems]) {
  constexpr int kW = Vec16<Tin>::kElems;
#pragma unroll
  for (int j = 0; j < kOut; ++j) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int v = v0 + u * 32 + lane;
      if (o0 + j < out_features && v < vecs) {
        rms::load_vec<kW>(weight + (o0 + j) * dim + static_cast<int64_t>(v) * kW, w[j][u]);
      } else {
#pragma unroll
        for (int e = 0; e < kW; ++e) w[j][u][e] = 0.f;
      }
    }
  }
}

template <typename Tin, typename Tres, int kRows>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) norm_linear_kernel(NormLinearParams p, bool vec4) {
  using namespace rms;
  constexpr int kW = Vec16<Tin>::kElems;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ float scratch[kScratchFloats];
  Tin* xs = reinterpret_cast<Tin*>(smem);  // [kRows, D]
  const AddRmsNormParams& norm = p.norm;
  const int dim = norm.dim, rows = norm.rows, out_features = p.out_features;
  const int vecs = dim / kW;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  constexpr int nwarps = kThreads / 32;
  const Tin* weight = static_cast<const Tin*>(p.weight);
  const Tin* bias = static_cast<const Tin*>(p.bias);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * nwarps * kOut;
  int64_t o0 = (static_cast<int64_t>(blockIdx.x) * nwarps + warp) * kOut;

  float w[kOut][kUnroll][kW];
  if (p.dependent_launch && lane == 0 && o0 < out_features) {
    // The warp's first kOut weight rows are contiguous.
    const int64_t n = out_features - o0 < kOut ? out_features - o0 : kOut;
    prefetch_to_l2(weight + o0 * dim, n * dim * static_cast<int64_t>(sizeof(Tin)));
  }
  if (o0 < out_features) load_weights<Tin>(weight, o0, 0, lane, out_features, vecs, dim, w);
  // Nothing above reads what the previous kernel writes (the rows come after the wait).
  wait_for_prior_grid();
  allow_dependent_grid();

  // The rows, normalised into shared memory; padding rows are zeros.
  for (int m = 0; m < rows; ++m) {
    Tres* res_out = blockIdx.x == 0 ? static_cast<Tres*>(norm.residual_out) + static_cast<int64_t>(m) * dim
                                    : nullptr;
    Tin* x = xs + static_cast<int64_t>(m) * dim;
    if (vec4) {
      if (norm.scale != nullptr) {
        add_rms_norm_row<Tin, Tres, kVecWidth, true>(norm, m, res_out, x, nullptr, scratch);
      } else {
        add_rms_norm_row<Tin, Tres, kVecWidth, false>(norm, m, res_out, x, nullptr, scratch);
      }
    } else if (norm.scale != nullptr) {
      add_rms_norm_row<Tin, Tres, 1, true>(norm, m, res_out, x, nullptr, scratch);
    } else {
      add_rms_norm_row<Tin, Tres, 1, false>(norm, m, res_out, x, nullptr, scratch);
    }
  }
  for (int i = threadIdx.x; i < (kRows - rows) * dim; i += blockDim.x) {
    xs[static_cast<int64_t>(rows) * dim + i] = from_float<Tin>(0.f);
  }
  __syncthreads();

  for (; o0 < out_features; o0 += stride) {
    float acc[kOut][kRows];
#pragma unroll
    for (int j = 0; j < kOut; ++j) {
#pragma unroll
      for (int m = 0; m < kRows; ++m) acc[j][m] = 0.f;
    }
    for (int v0 = 0; v0 < vecs; v0 += 32 * kUnroll) {
      if (v0 > 0) load_weights<Tin>(weight, o0, v0, lane, out_features, vecs, dim, w);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int v = v0 + u * 32 + lane;
        if (v >= vecs) continue;
#pragma unroll
        for (int m = 0; m < kRows; ++m) {
          float x[kW];
          load_vec<kW>(xs + static_cast<int64_t>(m) * dim + static_cast<int64_t>(v) * kW, x);
#pragma unroll
          for (int j = 0; j < kOut; ++j) {
#pragma unroll
            for (int e = 0; e < kW; ++e) acc[j][m] += w[j][u][e] * x[e];
          }
        }
      }
    }
    // The next pass's first vectors load while this pass's sums reduce.
    const int64_t next = o0 + stride;
    if (next < out_features) load_weights<Tin>(weight, next, 0, lane, out_features, vecs, dim, w);
#pragma unroll
    for (int j = 0; j < kOut; ++j) {
#pragma unroll
      for (int m = 0; m < kRows; ++m) acc[j][m] = warp_sum(acc[j][m]);
    }
    if (lane == 0) {
#pragma unroll
      for (int j = 0; j < kOut; ++j) {
        const int64_t o = o0 + j;
        if (o >= out_features) continue;
        const float b = bias != nullptr ? to_float(bias[o]) : 0.f;
#pragma unroll
        for (int m = 0; m < kRows; ++m) {
          if (m < rows) static_cast<Tin*>(p.out)[static_cast<int64_t>(m) * out_features + o] =
              from_float<Tin>(acc[j][m] + b);
        }
      }
    }
  }
}

template <typename Tin, typename Tres, int kRows>
cudaError_t launch(const NormLinearParams& p, cudaStream_t stream) {
  constexpr int warps = kThreads / 32;
  const int64_t wanted = (static_cast<int64_t>(p.out_features) + warps * kOut - 1) / (warps * kOut);
  const int64_t cap = static_cast<int64_t>(current_sm_count()) * kBlocksPerSm;
  const int blocks = static_cast<int>(wanted < cap ? wanted : cap);
  const size_t smem = static_cast<size_t>(kRows) * p.norm.dim * sizeof(Tin);
  // The rows' out is shared memory, 16-byte aligned.
  const bool vec4 = rms::fwd_row_vec_aligned<Tin, Tres>(p.norm);
  auto* kernel = norm_linear_kernel<Tin, Tres, kRows>;
  // fp32 rows reach 48 KiB (8 rows of 1536: AiM-XL), the kernel's scratch counting too; this
  // kernel runs in captured decoding steps.
  static DynamicSmemOptIn opt_in;
  const cudaError_t err = opt_in.ensure(kernel, smem, sizeof(float) * kScratchFloats);
  if (err != cudaSuccess) return err;
  return launch_maybe_dependent(p.dependent_launch, kernel, dim3(blocks), dim3(kThreads), smem, stream, p, vec4);
}

template <typename Tin, typename Tres>
cudaError_t launch_rows(const NormLinearParams& p, cudaStream_t stream) {
  switch (padded_rows(p.norm.rows)) {
    case 1: return launch<Tin, Tres, 1>(p, stream);
    case 2: return launch<Tin, Tres, 2>(p, stream);
    case 4: return launch<Tin, Tres, 4>(p, stream);
    default: return launch<Tin, Tres, 8>(p, stream);
  }
}

}  // namespace

bool norm_linear_supported(int rows, int dim, ElemType in) {
  const int per_vec = static_cast<int>(16 / rms::param_bytes(in));
  return rows >= 1 && rows <= kNormLinearMaxRows && dim >= 1 && dim <= kNormLinearMaxDim &&
         dim % per_vec == 0 &&
         static_cast<size_t>(padded_rows(rows)) * dim * rms::param_bytes(in) <= kMaxSmemBytes;
}

cudaError_t norm_linear_cuda(const NormLinearParams& p, ElemType in, ElemType res,
                             cudaStream_t stream) {
  const AddRmsNormParams& n = p.norm;
  if (!norm_linear_supported(n.rows, n.dim, in) || p.out_features < 1 || p.weight == nullptr ||
      p.out == nullptr || n.hidden == nullptr || n.residual_out == nullptr ||
      n.weight == nullptr || (n.shift == nullptr) != (n.scale == nullptr) ||
      reinterpret_cast<uintptr_t>(p.weight) % 16 != 0) {
    return cudaErrorInvalidValue;
  }
  if ((n.scale != nullptr || n.hidden_gate != nullptr) &&
      (n.rows_per_batch < 1 || n.rows % n.rows_per_batch != 0)) {
    return cudaErrorInvalidValue;
  }
  if (in == ElemType::kFloat32) {
    if (res != ElemType::kFloat32) return cudaErrorInvalidValue;
    return launch_rows<float, float>(p, stream);
  }
  return res == ElemType::kFloat32 ? launch_rows<__nv_bfloat16, float>(p, stream)
                                   : launch_rows<__nv_bfloat16, __nv_bfloat16>(p, stream);
}

}  // namespace aim::kernels
