#pragma once
// RMS norms of the AiM block, forward and backward.
//
// add_rms_norm, per row n of [N, D], sequence b = n / rows_per_batch:
//   h      = hidden, or hidden * hidden_gate[b] (rounded to bf16 when both are bf16)
//   r      = h + residual              stored as residual_out in its type; the norm reads the
//                                      stored (rounded) value, as the reference does
//   rstd   = 1 / sqrt(mean_j r^2 + eps)                                     saved, fp32
//   xhat   = r * rstd,   normed = xhat * w
//   out    = normed * (1 + scale[b]) + shift[b]                    (unmodulated: out = normed)
// backward, with g = dout * (1 + scale[b]) (unmodulated: g = dout):
//   dxhat  = g * w
//   dr     = rstd * (dxhat - xhat * mean_j(dxhat * xhat)) + dresidual_out
//   dw     = sum_n g * xhat,   dshift[b] = sum_{n in b} dout,   dscale[b] = sum_{n in b} dout * normed
//   dresidual = dr;  dhidden = dr (gated: dr * hidden_gate[b]),  dgate[b] = sum_{n in b} dr * hidden
//
// gated_rms_norm, per row n and group of group_size channels, s = silu(z) (no z: s = 1):
//   norm_before_gate false:  u = x * s,  xhat = u * rstd,  out = xhat * w
//       backward: dxhat = dout * w, du = rstd * (dxhat - xhat * mean(dxhat * xhat)),
//                 dx = du * s, dz = du * x * silu'(z), dw = sum_n dout * xhat
//   norm_before_gate true:   xhat = x * rstd,  out = xhat * w * s
//       backward: dxhat = dout * w * s, dx = rstd * (dxhat - xhat * mean(dxhat * xhat)),
//                 dz = dout * xhat * w * silu'(z), dw = sum_n dout * xhat * s
//   with silu'(z) = sigmoid(z) * (1 + z * (1 - sigmoid(z))).
//
// Grid. Forward: one block per row (per row and group for the gated norm). Each thread keeps
// kPerThread = 8 elements of the row in registers, so a row is read once; a block has
// ceil(D / 8) threads rounded up to a warp (one warp for D <= 256, 1024 for D = 8192).
// Backward: a block walks rows_per_chunk consecutive rows (of one sequence when modulated;
// of one group for the gated norm), with a block sum per row, and keeps its column sums (dw,
// dshift, dscale, dgate) per thread in registers; it writes them once as an fp32 partial row of the
// workspace, and column_sum adds the partial rows in a fixed order: deterministic gradients.
// Precision: fp32 or bf16 tensors (the weight, shift and scale too, each read as stored), every
// sum and product in fp32, outputs rounded once.
// Rows move as 4-element vectors when D (group_size) % 4 == 0 and every pointer and row
// stride is 4-element aligned; otherwise element by element.
#include <cuda_bf16.h>

#include <cstdint>

#include "grid_dependency.cuh"
#include "rms_norm.h"
#include "static_switch.h"
#include "vec_io.cuh"

namespace aim::kernels {

namespace rms {

constexpr int kPerThread = 8;
constexpr int kMaxThreads = kRmsNormMaxDim / kPerThread;
constexpr int kVecWidth = 4;
constexpr int kColumnSumX = 32, kColumnSumY = 16;

using vec::from_float;
using vec::to_float;

/// v as it reads back after a store in T.
template <typename T>
__device__ __forceinline__ float round_to(float v) {
  return to_float(from_float<T>(v));
}

using vec::load_vec;
using vec::Packed;
using vec::store_vec;

// kVec values of a parameter vector (weight, shift, scale) stored as fp32 or bf16, from
// element `offset`: the type is one flag for the whole launch, so the branch is uniform.
template <int kVec>
__device__ __forceinline__ void load_param(const void* base, ElemType type, int64_t offset,
                                           float* out) {
  if (type == ElemType::kBFloat16) {
    load_vec<kVec>(static_cast<const __nv_bfloat16*>(base) + offset, out);
  } else {
    load_vec<kVec>(static_cast<const float*>(base) + offset, out);
  }
}

inline size_t param_bytes(ElemType t) { return t == ElemType::kBFloat16 ? 2 : 4; }

__device__ __forceinline__ float sigmoid(float z) { return 1.f / (1.f + __expf(-z)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum of v over the block, returned to every thread. blockDim.x is a multiple of 32 and every
// thread calls it. Lane 0's warp sums are added in warp order by every thread, so all threads
// get the same value and reruns the same bits. `scratch` is 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  v = warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // every thread has read the previous call's scratch
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.f;
  const int nwarps = blockDim.x / 32;
  for (int w = 0; w < nwarps; ++w) total += scratch[w];
  return total;
}

// First element of slot k of this thread (slots of kVec elements, strided by the block).
template <int kVec>
__device__ __forceinline__ int slot_col(int k) {
  return (k * static_cast<int>(blockDim.x) + static_cast<int>(threadIdx.x)) * kVec;
}

inline int threads_for(int dim) {
  const int t = ((dim + kPerThread - 1) / kPerThread + 31) / 32 * 32;
  return t < 32 ? 32 : t;
}

// A null pointer is no constraint.
inline bool vec_aligned(const void* p, int64_t row_stride, size_t elem_bytes) {
  return p == nullptr ||
         (reinterpret_cast<uintptr_t>(p) % (kVecWidth * elem_bytes) == 0 && row_stride % kVecWidth == 0);
}

// Whether the forward row (add_rms_norm_row) reads hidden, gate, residual and the parameters
// and writes residual_out 4-wide: D % 4 == 0 and each pointer and row stride 4-element
// aligned. Its `out` is the caller's to check.
template <typename Tin, typename Tres>
bool fwd_row_vec_aligned(const AddRmsNormParams& p) {
  return p.dim % kVecWidth == 0 && vec_aligned(p.hidden, p.hidden_row_stride, sizeof(Tin)) &&
         vec_aligned(p.hidden_gate, 0, param_bytes(p.gate_type)) &&
         vec_aligned(p.residual, p.residual_row_stride, sizeof(Tres)) &&
         vec_aligned(p.residual_out, 0, sizeof(Tres)) &&
         vec_aligned(p.weight, 0, param_bytes(p.weight_type)) &&
         vec_aligned(p.shift, 0, param_bytes(p.mod_type)) &&
         vec_aligned(p.scale, 0, param_bytes(p.mod_type));
}

// Backward block layout of add_rms_norm: blocks (chunk, b) for b < batches.
struct AddBwdLayout {
  int rows_per_batch, batches, chunks_per_batch;
};
inline AddBwdLayout add_bwd_layout(const AddRmsNormParams& p) {
  AddBwdLayout l;
  l.rows_per_batch = p.scale != nullptr || p.hidden_gate != nullptr ? p.rows_per_batch : p.rows;
  l.batches = l.rows_per_batch > 0 ? p.rows / l.rows_per_batch : 0;
  l.chunks_per_batch =
      p.rows_per_chunk > 0 ? (l.rows_per_batch + p.rows_per_chunk - 1) / p.rows_per_chunk : 0;
  return l;
}

inline int gated_bwd_chunks(const GatedRmsNormParams& p) {
  return p.rows_per_chunk > 0 ? (p.rows + p.rows_per_chunk - 1) / p.rows_per_chunk : 0;
}

// The backward kernels walk their rows one at a time, each row's loads a round trip before its
// block sum, so every row would wait for DRAM. Rows this far ahead of the current one are asked
// for in L2 (by one thread; a hint, no registers): at the first row, rows 1 .. kAheadRows of the
// chunk; then row n + kAheadRows at row n.
constexpr int kAheadRows = 2;

// Calls fetch(r) for the rows r that row n of [row_begin, row_end) asks for.
template <typename F>
__device__ __forceinline__ void prefetch_ahead(int64_t n, int64_t row_begin, int64_t row_end, F&& fetch) {
  if (threadIdx.x != 0) return;
  for (int64_t r = n == row_begin ? n + 1 : n + kAheadRows; r <= n + kAheadRows && r < row_end; ++r) fetch(r);
}

}  // namespace rms

// ---------------------------------------------------------------- add_rms_norm

namespace rms {

// Row n of the forward pass by the whole block (every thread calls it; kPerThread elements per
// thread, so D <= kPerThread * blockDim.x): residual_out's row (when `residual_out` is not null),
// rstd (when not null) and the normalised, modulated row in Tin at `out` (global or shared
// memory, kVec-aligned). The fused norm + linear kernel (norm_linear.cu) runs the same function,
// so its residual_out and its linear layer's input are this kernel's.
template <typename Tin, typename Tres, int kVec, bool kModulate>
__device__ __forceinline__ void add_rms_norm_row(const AddRmsNormParams& p, int64_t n,
                                                 Tres* residual_out, Tin* out, float* rstd_out,
                                                 float* scratch) {
  constexpr int kIters = kPerThread / kVec;
  const Tin* hidden = static_cast<const Tin*>(p.hidden) + n * p.hidden_row_stride;
  const Tres* residual = p.residual == nullptr
                             ? nullptr
                             : static_cast<const Tres*>(p.residual) + n * p.residual_row_stride;
  const bool gated = p.hidden_gate != nullptr;
  const int64_t gate_row = gated ? n / p.rows_per_batch * p.dim : 0;
  // ATen's product type: bf16 only when both are; the product itself never fused into an FMA.
  const bool round_gated = p.gate_type == ElemType::kBFloat16;

  float r[kPerThread];
  float sumsq = 0.f;
#pragma unroll
  for (int k = 0; k < kIters; ++k) {
    const int c = slot_col<kVec>(k);
    float* rk = r + k * kVec;
    if (c < p.dim) {
      load_vec<kVec>(hidden + c, rk);
      if (gated) {
        float gk[kVec];
        load_param<kVec>(p.hidden_gate, p.gate_type, gate_row + c, gk);
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          const float prod = __fmul_rn(rk[e], gk[e]);
          rk[e] = round_gated ? round_to<Tin>(prod) : prod;
        }
      }
      if (residual != nullptr) {
        float add[kVec];
        load_vec<kVec>(residual + c, add);
#pragma unroll
        for (int e = 0; e < kVec; ++e) rk[e] += add[e];
      }
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        rk[e] = round_to<Tres>(rk[e]);
        sumsq += rk[e] * rk[e];
      }
      if (residual_out != nullptr) store_vec<kVec>(residual_out + c, rk);
    } else {
#pragma unroll
      for (int e = 0; e < kVec; ++e) rk[e] = 0.f;
    }
  }
  const float rstd = rsqrtf(block_sum(sumsq, scratch) / static_cast<float>(p.dim) + p.eps);
  if (rstd_out != nullptr && threadIdx.x == 0) *rstd_out = rstd;

  const int64_t mod_row = kModulate ? n / p.rows_per_batch * p.dim : 0;
#pragma unroll
  for (int k = 0; k < kIters; ++k) {
    const int c = slot_col<kVec>(k);
    if (c < p.dim) {
      const float* rk = r + k * kVec;
      float w[kVec], y[kVec];
      load_param<kVec>(p.weight, p.weight_type, c, w);
#pragma unroll
      for (int e = 0; e < kVec; ++e) y[e] = rk[e] * rstd * w[e];
      if (kModulate) {
        float sh[kVec], sc[kVec];
        load_param<kVec>(p.shift, p.mod_type, mod_row + c, sh);
        load_param<kVec>(p.scale, p.mod_type, mod_row + c, sc);
#pragma unroll
        for (int e = 0; e < kVec; ++e) y[e] = y[e] * (1.f + sc[e]) + sh[e];
      }
      store_vec<kVec>(out + c, y);
    }
  }
}

}  // namespace rms

template <typename Tin, typename Tres, int kVec, bool kModulate>
__global__ void __launch_bounds__(rms::kMaxThreads)
    add_rms_norm_fwd_kernel(AddRmsNormParams p) {
  __shared__ float scratch[32];
  // Everything it reads may come from the previous kernel (a dependent launch starts early only
  // to be resident, and to let the next kernel start early in turn).
  wait_for_prior_grid();
  allow_dependent_grid();
  const int64_t n = blockIdx.x;
  rms::add_rms_norm_row<Tin, Tres, kVec, kModulate>(
      p, n, static_cast<Tres*>(p.residual_out) + n * p.dim, static_cast<Tin*>(p.out) + n * p.dim,
      p.rstd + n, scratch);
}

// Grid (chunks_per_batch, batches). Writes partial row b * chunks_per_batch + chunk of each
// [batches * chunks_per_batch, D] slab of the workspace: dw, then (modulated) dshift, dscale,
// then (gated) dgate.
// With a gate: at most half the threads (D <= kRmsNormMaxGatedBwdDim), so that the fourth
// column sum fits in registers (128 per thread).
template <typename Tin, typename Tres, int kVec, bool kModulate, bool kGated>
__global__ void __launch_bounds__(kGated ? rms::kMaxThreads / 2 : rms::kMaxThreads)
    add_rms_norm_bwd_kernel(AddRmsNormParams p, int rows_per_batch) {
  using namespace rms;
  constexpr int kIters = kPerThread / kVec;
  __shared__ float scratch[32];
  const int chunk = blockIdx.x, b = blockIdx.y;
  const int64_t batch_begin = static_cast<int64_t>(b) * rows_per_batch;
  const int64_t row_begin = batch_begin + static_cast<int64_t>(chunk) * p.rows_per_chunk;
  const int64_t row_end_chunk = row_begin + p.rows_per_chunk;
  const int64_t row_end_batch = batch_begin + rows_per_batch;
  const int64_t row_end = row_end_chunk < row_end_batch ? row_end_chunk : row_end_batch;
  const float inv_dim = 1.f / static_cast<float>(p.dim);
  const int64_t mod_row = kModulate ? static_cast<int64_t>(b) * p.dim : 0;
  const int64_t gate_row = kGated ? static_cast<int64_t>(b) * p.dim : 0;

  float acc_dw[kPerThread], acc_dshift[kPerThread], acc_dscale[kPerThread], acc_dgate[kPerThread];
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) acc_dw[i] = acc_dshift[i] = acc_dscale[i] = acc_dgate[i] = 0.f;

  for (int64_t n = row_begin; n < row_end; ++n) {
    // Rows ahead, and this row's inputs of the second pass (read after the block sum).
    prefetch_ahead(n, row_begin, row_end, [&](int64_t r) {
      prefetch_to_l2(static_cast<const Tres*>(p.residual_out) + r * p.dim, p.dim * int64_t(sizeof(Tres)));
      prefetch_to_l2(static_cast<const Tin*>(p.dout) + r * p.dout_row_stride, p.dim * int64_t(sizeof(Tin)));
    });
    if (threadIdx.x == 0) {
      if (p.dresidual_out != nullptr) {
        prefetch_to_l2(static_cast<const Tres*>(p.dresidual_out) + n * p.dresidual_out_row_stride,
                       p.dim * int64_t(sizeof(Tres)));
      }
      if (kGated) {
        prefetch_to_l2(static_cast<const Tin*>(p.hidden) + n * p.hidden_row_stride, p.dim * int64_t(sizeof(Tin)));
      }
    }
    const float rstd = p.rstd[n];
    const Tres* res = static_cast<const Tres*>(p.residual_out) + n * p.dim;
    const Tin* dout = static_cast<const Tin*>(p.dout) + n * p.dout_row_stride;
    float xhat[kPerThread], dxhat[kPerThread];
    float dot = 0.f;
#pragma unroll
    for (int k = 0; k < kIters; ++k) {
      const int c = slot_col<kVec>(k);
      float* xk = xhat + k * kVec;
      float* dk = dxhat + k * kVec;
      if (c < p.dim) {
        float dy[kVec], w[kVec], sc[kVec];
        load_vec<kVec>(res + c, xk);
        load_vec<kVec>(dout + c, dy);
        load_param<kVec>(p.weight, p.weight_type, c, w);
        if (kModulate) load_param<kVec>(p.scale, p.mod_type, mod_row + c, sc);
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          const int i = k * kVec + e;
          xk[e] *= rstd;
          float g = dy[e];
          if (kModulate) {
            acc_dshift[i] += dy[e];
            acc_dscale[i] += dy[e] * (xk[e] * w[e]);
            g *= 1.f + sc[e];
          }
          acc_dw[i] += g * xk[e];
          dk[e] = g * w[e];
          dot += dk[e] * xk[e];
        }
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) xk[e] = dk[e] = 0.f;
      }
    }
    const float mean = block_sum(dot, scratch) * inv_dim;
    const Tres* dres_out =
        p.dresidual_out == nullptr
            ? nullptr
            : static_cast<const Tres*>(p.dresidual_out) + n * p.dresidual_out_row_stride;
#pragma unroll
    for (int k = 0; k < kIters; ++k) {
      const int c = slot_col<kVec>(k);
      if (c < p.dim) {
        const float* xk = xhat + k * kVec;
        const float* dk = dxhat + k * kVec;
        float d[kVec];
#pragma unroll
        for (int e = 0; e < kVec; ++e) d[e] = rstd * (dk[e] - xk[e] * mean);
        if (dres_out != nullptr) {
          float extra[kVec];
          load_vec<kVec>(dres_out + c, extra);
#pragma unroll
          for (int e = 0; e < kVec; ++e) d[e] += extra[e];
        }
        if (p.dresidual != nullptr) {
          store_vec<kVec>(static_cast<Tres*>(p.dresidual) + n * p.dim + c, d);
        }
        if (kGated) {
          // h = hidden * gate: dhidden = dr * gate, dgate += dr * hidden.
          float gk[kVec], hk[kVec];
          load_param<kVec>(p.hidden_gate, p.gate_type, gate_row + c, gk);
          load_vec<kVec>(static_cast<const Tin*>(p.hidden) + n * p.hidden_row_stride + c, hk);
#pragma unroll
          for (int e = 0; e < kVec; ++e) {
            acc_dgate[k * kVec + e] += d[e] * hk[e];
            d[e] = __fmul_rn(d[e], gk[e]);
          }
        }
        if (p.dhidden != nullptr) store_vec<kVec>(static_cast<Tin*>(p.dhidden) + n * p.dim + c, d);
      }
    }
  }

  const int64_t partials = static_cast<int64_t>(gridDim.x) * gridDim.y;
  const int64_t slot = static_cast<int64_t>(b) * gridDim.x + chunk;
#pragma unroll
  for (int k = 0; k < kIters; ++k) {
    const int c = slot_col<kVec>(k);
    if (c < p.dim) {
      store_vec<kVec>(p.workspace + slot * p.dim + c, acc_dw + k * kVec);
      if (kModulate) {
        store_vec<kVec>(p.workspace + (partials + slot) * p.dim + c, acc_dshift + k * kVec);
        store_vec<kVec>(p.workspace + (2 * partials + slot) * p.dim + c, acc_dscale + k * kVec);
      }
      if (kGated) {
        const int64_t slab = kModulate ? 3 : 1;
        store_vec<kVec>(p.workspace + (slab * partials + slot) * p.dim + c, acc_dgate + k * kVec);
      }
    }
  }
}

template <typename Tin, typename Tres>
cudaError_t add_rms_norm_fwd_launch(const AddRmsNormParams& p, cudaStream_t stream) {
  using namespace rms;
  const bool vec = fwd_row_vec_aligned<Tin, Tres>(p) && vec_aligned(p.out, 0, sizeof(Tin));
  const dim3 grid(p.rows), block(threads_for(p.dim));
  cudaError_t err = cudaSuccess;
  BOOL_SWITCH(vec, kVec4, [&] {
    BOOL_SWITCH(p.scale != nullptr, kModulate, [&] {
      err = launch_maybe_dependent(p.dependent_launch, add_rms_norm_fwd_kernel<Tin, Tres, kVec4 ? kVecWidth : 1, kModulate>,
                                   grid, block, 0, stream, p);
    });
  });
  return err;
}

// The partial-sum pass only; add_rms_norm_bwd_cuda then adds the partial rows.
template <typename Tin, typename Tres>
cudaError_t add_rms_norm_bwd_launch(const AddRmsNormParams& p, cudaStream_t stream) {
  using namespace rms;
  const AddBwdLayout l = add_bwd_layout(p);
  const bool vec = p.dim % kVecWidth == 0 && vec_aligned(p.residual_out, 0, sizeof(Tres)) &&
                   vec_aligned(p.dout, p.dout_row_stride, sizeof(Tin)) &&
                   vec_aligned(p.dresidual_out, p.dresidual_out_row_stride, sizeof(Tres)) &&
                   vec_aligned(p.dhidden, 0, sizeof(Tin)) && vec_aligned(p.dresidual, 0, sizeof(Tres)) &&
                   vec_aligned(p.weight, 0, param_bytes(p.weight_type)) &&
                   vec_aligned(p.scale, 0, param_bytes(p.mod_type)) &&
                   vec_aligned(p.hidden_gate, 0, param_bytes(p.gate_type)) &&
                   (p.hidden_gate == nullptr ||
                    vec_aligned(p.hidden, p.hidden_row_stride, sizeof(Tin))) &&
                   vec_aligned(p.workspace, 0, sizeof(float));
  const dim3 grid(l.chunks_per_batch, l.batches), block(threads_for(p.dim));
  BOOL_SWITCH(vec, kVec4, [&] {
    BOOL_SWITCH(p.scale != nullptr, kModulate, [&] {
      BOOL_SWITCH(p.hidden_gate != nullptr, kGated, [&] {
        add_rms_norm_bwd_kernel<Tin, Tres, kVec4 ? kVecWidth : 1, kModulate, kGated>
            <<<grid, block, 0, stream>>>(p, l.rows_per_batch);
      });
    });
  });
  return cudaGetLastError();
}

// ---------------------------------------------------------------- gated_rms_norm

// Grid (N, ngroups).
template <typename T, int kVec>
__global__ void __launch_bounds__(rms::kMaxThreads)
    gated_rms_norm_fwd_kernel(GatedRmsNormParams p) {
  using namespace rms;
  constexpr int kIters = kPerThread / kVec;
  __shared__ float scratch[32];
  const int64_t n = blockIdx.x;
  const int g = blockIdx.y;
  const int64_t col0 = static_cast<int64_t>(g) * p.group_size;
  const bool gated = p.z != nullptr;
  const T* x = static_cast<const T*>(p.x) + n * p.x_row_stride + col0;
  const T* z = gated ? static_cast<const T*>(p.z) + n * p.z_row_stride + col0 : nullptr;
  T* out = static_cast<T*>(p.out) + n * p.dim + col0;

  float u[kPerThread], gate[kPerThread];
  float sumsq = 0.f;
#pragma unroll
  for (int k = 0; k < kIters; ++k) {
    const int c = slot_col<kVec>(k);
    float* uk = u + k * kVec;
    float* sk = gate + k * kVec;
    if (c < p.group_size) {
      load_vec<kVec>(x + c, uk);
      if (gated) {
        load_vec<kVec>(z + c, sk);
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          sk[e] *= sigmoid(sk[e]);
          if (!p.norm_before_gate) uk[e] *= sk[e];
        }
      }
#pragma unroll
      for (int e = 0; e < kVec; ++e) sumsq += uk[e] * uk[e];
    } else {
#pragma unroll
      for (int e = 0; e < kVec; ++e) uk[e] = sk[e] = 0.f;
    }
  }
  const float rstd =
      rsqrtf(block_sum(sumsq, scratch) / static_cast<float>(p.group_size) + p.eps);
  if (threadIdx.x == 0) p.rstd[n * gridDim.y + g] = rstd;
#pragma unroll
  for (int k = 0; k < kIters; ++k) {
    const int c = slot_col<kVec>(k);
    if (c < p.group_size) {
      const float* uk = u + k * kVec;
      const float* sk = gate + k * kVec;
      float w[kVec], y[kVec];
      load_param<kVec>(p.weight, p.weight_type, col0 + c, w);
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        y[e] = uk[e] * rstd * w[e];
        if (gated && p.norm_before_gate) y[e] *= sk[e];
      }
      store_vec<kVec>(out + c, y);
    }
  }
}

// Grid (chunks, ngroups). Writes columns [g * group_size, (g + 1) * group_size) of partial
// row `chunk` of the [chunks, E] workspace.
template <typename T, int kVec>
__global__ void __launch_bounds__(rms::kMaxThreads)
    gated_rms_norm_bwd_kernel(GatedRmsNormParams p) {
  using namespace rms;
  constexpr int kIters = kPerThread / kVec;
  __shared__ float scratch[32];
  const int chunk = blockIdx.x, g = blockIdx.y;
  const int64_t col0 = static_cast<int64_t>(g) * p.group_size;
  const int64_t row_begin = static_cast<int64_t>(chunk) * p.rows_per_chunk;
  const int64_t row_end_chunk = row_begin + p.rows_per_chunk;
  const int64_t row_end = row_end_chunk < p.rows ? row_end_chunk : p.rows;
  const bool gated = p.z != nullptr;
  const float inv_group = 1.f / static_cast<float>(p.group_size);

  float acc_dw[kPerThread];
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) acc_dw[i] = 0.f;

  for (int64_t n = row_begin; n < row_end; ++n) {
    prefetch_ahead(n, row_begin, row_end, [&](int64_t r) {
      const int64_t bytes = p.group_size * int64_t(sizeof(T));
      prefetch_to_l2(static_cast<const T*>(p.x) + r * p.x_row_stride + col0, bytes);
      prefetch_to_l2(static_cast<const T*>(p.dout) + r * p.dout_row_stride + col0, bytes);
      if (gated) prefetch_to_l2(static_cast<const T*>(p.z) + r * p.z_row_stride + col0, bytes);
    });
    const float rstd = p.rstd[n * gridDim.y + g];
    const T* x = static_cast<const T*>(p.x) + n * p.x_row_stride + col0;
    const T* z = gated ? static_cast<const T*>(p.z) + n * p.z_row_stride + col0 : nullptr;
    const T* dout = static_cast<const T*>(p.dout) + n * p.dout_row_stride + col0;
    // Per element: xhat, dxhat, and what the second pass needs besides du:
    //   gate first: dx = du * dx_factor, dz = du * dz_value;  norm first: dx = du, dz = dz_value.
    float xhat[kPerThread], dxhat[kPerThread], dx_factor[kPerThread], dz_value[kPerThread];
    float dot = 0.f;
#pragma unroll
    for (int k = 0; k < kIters; ++k) {
      const int c = slot_col<kVec>(k);
      if (c < p.group_size) {
        float xv[kVec], zv[kVec], dy[kVec], w[kVec];
        load_vec<kVec>(x + c, xv);
        load_vec<kVec>(dout + c, dy);
        load_param<kVec>(p.weight, p.weight_type, col0 + c, w);
        if (gated) load_vec<kVec>(z + c, zv);
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          const int i = k * kVec + e;
          float s = 1.f, ds = 0.f;
          if (gated) {
            const float sig = sigmoid(zv[e]);
            s = zv[e] * sig;
            ds = sig * (1.f + zv[e] * (1.f - sig));
          }
          if (!p.norm_before_gate) {
            xhat[i] = xv[e] * s * rstd;
            acc_dw[i] += dy[e] * xhat[i];
            dxhat[i] = dy[e] * w[e];
            dx_factor[i] = s;
            dz_value[i] = xv[e] * ds;
          } else {
            xhat[i] = xv[e] * rstd;
            acc_dw[i] += dy[e] * xhat[i] * s;
            dxhat[i] = dy[e] * w[e] * s;
            dx_factor[i] = 1.f;
            dz_value[i] = dy[e] * xhat[i] * w[e] * ds;
          }
          dot += dxhat[i] * xhat[i];
        }
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          const int i = k * kVec + e;
          xhat[i] = dxhat[i] = dx_factor[i] = dz_value[i] = 0.f;
        }
      }
    }
    const float mean = block_sum(dot, scratch) * inv_group;
    T* dx = p.dx == nullptr ? nullptr : static_cast<T*>(p.dx) + n * p.dx_row_stride + col0;
    T* dz = p.dz == nullptr ? nullptr : static_cast<T*>(p.dz) + n * p.dz_row_stride + col0;
#pragma unroll
    for (int k = 0; k < kIters; ++k) {
      const int c = slot_col<kVec>(k);
      if (c < p.group_size) {
        float dxv[kVec], dzv[kVec];
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          const int i = k * kVec + e;
          const float du = rstd * (dxhat[i] - xhat[i] * mean);
          dxv[e] = du * dx_factor[i];
          dzv[e] = p.norm_before_gate ? dz_value[i] : du * dz_value[i];
        }
        if (dx != nullptr) store_vec<kVec>(dx + c, dxv);
        if (dz != nullptr) store_vec<kVec>(dz + c, dzv);
      }
    }
  }

  float* part = p.workspace + static_cast<int64_t>(chunk) * p.dim + col0;
#pragma unroll
  for (int k = 0; k < kIters; ++k) {
    const int c = slot_col<kVec>(k);
    if (c < p.group_size) store_vec<kVec>(part + c, acc_dw + k * kVec);
  }
}

template <typename T>
cudaError_t gated_rms_norm_fwd_launch(const GatedRmsNormParams& p, cudaStream_t stream) {
  using namespace rms;
  const bool vec = p.group_size % kVecWidth == 0 && vec_aligned(p.x, p.x_row_stride, sizeof(T)) &&
                   vec_aligned(p.z, p.z_row_stride, sizeof(T)) && vec_aligned(p.out, 0, sizeof(T)) &&
                   vec_aligned(p.weight, 0, param_bytes(p.weight_type));
  const dim3 grid(p.rows, p.dim / p.group_size), block(threads_for(p.group_size));
  BOOL_SWITCH(vec, kVec4, [&] {
    gated_rms_norm_fwd_kernel<T, kVec4 ? kVecWidth : 1><<<grid, block, 0, stream>>>(p);
  });
  return cudaGetLastError();
}

// The partial-sum pass only; gated_rms_norm_bwd_cuda then adds the partial rows.
template <typename T>
cudaError_t gated_rms_norm_bwd_launch(const GatedRmsNormParams& p, cudaStream_t stream) {
  using namespace rms;
  const bool vec = p.group_size % kVecWidth == 0 && vec_aligned(p.x, p.x_row_stride, sizeof(T)) &&
                   vec_aligned(p.z, p.z_row_stride, sizeof(T)) &&
                   vec_aligned(p.dout, p.dout_row_stride, sizeof(T)) &&
                   vec_aligned(p.dx, p.dx_row_stride, sizeof(T)) &&
                   vec_aligned(p.dz, p.dz_row_stride, sizeof(T)) &&
                   vec_aligned(p.weight, 0, param_bytes(p.weight_type)) &&
                   vec_aligned(p.workspace, 0, sizeof(float));
  const dim3 grid(gated_bwd_chunks(p), p.dim / p.group_size), block(threads_for(p.group_size));
  BOOL_SWITCH(vec, kVec4, [&] {
    gated_rms_norm_bwd_kernel<T, kVec4 ? kVecWidth : 1><<<grid, block, 0, stream>>>(p);
  });
  return cudaGetLastError();
}

}  // namespace aim::kernels
