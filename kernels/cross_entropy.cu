// Softmax cross-entropy over a [rows, vocab] chunk of logits, gradient written in place.
//
// One block per row: pass 1 keeps a running (max, sum of exp) per thread over a strided slice
// of the row and merges the pairs across the block; pass 2 overwrites each logit with
// (exp(logit - lse) - [j == target]) * inv_count. The row is read twice and written once; the
// fp32 [tokens, vocab] logits and their separate gradient never exist. Both passes move 16 bytes
// per load and store where the rows are 16-byte aligned (AiM's), four loads per thread in flight.
#include <cuda_bf16.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>

#include "cross_entropy.h"
#include "vec_io.cuh"

namespace aim::kernels {

namespace {

constexpr int kThreads = 512;

using vec::to_float;

// (m, s) represents s * exp(m): merge two such partial sums.
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  if (m2 > m) {
    s = s * __expf(m - m2) + s2;
    m = m2;
  } else if (m2 != -FLT_MAX) {
    s = s + s2 * __expf(m2 - m);
  }
}

// A thread's loads in flight per pass: kBatch vectors of kV elements (bf16 rows of AiM's 16384
// logits: 8-element vectors, the row's 2048 in one batch of 4 per thread).
constexpr int kBatch = 4;

template <int kV, typename T>
__device__ __forceinline__ void load_batch(const T* x, int i0, int nvec, float (&v)[kBatch][kV]) {
#pragma unroll
  for (int k = 0; k < kBatch; ++k) {
    const int i = i0 + k * kThreads;
    if (i < nvec) {
      vec::load_vec<kV>(x + int64_t(i) * kV, v[k]);
    } else {
#pragma unroll
      for (int e = 0; e < kV; ++e) v[k][e] = -INFINITY;  // adds exp(-inf) = 0
    }
  }
}

// kV: elements per load (1, or 16 bytes' worth where the rows allow it).
template <typename T, int kV>
__global__ void __launch_bounds__(kThreads) softmax_xent_kernel(SoftmaxXentParams p) {
  const int row = blockIdx.x;
  T* x = static_cast<T*>(p.logits) + int64_t(row) * p.row_stride;
  const int64_t target = p.targets[row];
  const bool ignored = target == p.ignore_index;
  const int nvec = p.vocab / kV;

  // Pass 1: a running (max, sum of exp) per thread, a batch at a time: the batch's loads are
  // issued together, then its maximum rescales the sum once and its exps are added.
  float m = -FLT_MAX, s = 0.0f;
  for (int i0 = threadIdx.x; i0 < nvec; i0 += kThreads * kBatch) {
    float v[kBatch][kV];
    load_batch<kV>(x, i0, nvec, v);
    float bm = -FLT_MAX;
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
#pragma unroll
      for (int e = 0; e < kV; ++e) bm = fmaxf(bm, v[k][e]);
    }
    if (bm > m) {
      s *= __expf(m - bm);
      m = bm;
    }
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
#pragma unroll
      for (int e = 0; e < kV; ++e) s += __expf(v[k][e] - m);
    }
  }
  // Warp merge, then one pair per warp through shared memory.
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, offset);
    const float s2 = __shfl_xor_sync(0xffffffffu, s, offset);
    merge(m, s, m2, s2);
  }
  __shared__ float warp_m[kThreads / 32];
  __shared__ float warp_s[kThreads / 32];
  __shared__ float row_lse;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    warp_m[warp] = m;
    warp_s[warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    m = lane < kThreads / 32 ? warp_m[lane] : -FLT_MAX;
    s = lane < kThreads / 32 ? warp_s[lane] : 0.0f;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, offset);
      const float s2 = __shfl_xor_sync(0xffffffffu, s, offset);
      merge(m, s, m2, s2);
    }
    if (lane == 0) {
      const float lse = m + __logf(s);
      row_lse = lse;
      float loss = 0.0f;
      // A target outside [0, vocab) that is not ignore_index: NaN, where the reference raises
      // (an error here would need a synchronisation), so that the mean cannot hide it.
      if (!ignored)
        loss = target >= 0 && target < p.vocab ? lse - to_float(x[target]) : std::numeric_limits<float>::quiet_NaN();
      p.losses[row] = loss;
    }
  }
  __syncthreads();
  // Pass 2: each logit becomes its gradient, a batch of loads at a time.
  const float lse = row_lse;
  const float scale = ignored ? 0.0f : *p.inv_count;
  for (int i0 = threadIdx.x; i0 < nvec; i0 += kThreads * kBatch) {
    float v[kBatch][kV];
    load_batch<kV>(x, i0, nvec, v);
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int i = i0 + k * kThreads;
      if (i >= nvec) break;
      float g[kV];
#pragma unroll
      for (int e = 0; e < kV; ++e) {
        const int64_t j = int64_t(i) * kV + e;
        g[e] = (__expf(v[k][e] - lse) - (j == target ? 1.0f : 0.0f)) * scale;
      }
      vec::store_vec<kV>(x + int64_t(i) * kV, g);
    }
  }
}

template <typename T>
void launch(const SoftmaxXentParams& p, cudaStream_t stream) {
  constexpr int kV = 16 / sizeof(T);
  const bool vectors = p.vocab % kV == 0 && p.row_stride % kV == 0 &&
                       reinterpret_cast<uintptr_t>(p.logits) % 16 == 0;
  if (vectors) {
    softmax_xent_kernel<T, kV><<<p.rows, kThreads, 0, stream>>>(p);
  } else {
    softmax_xent_kernel<T, 1><<<p.rows, kThreads, 0, stream>>>(p);
  }
}

}  // namespace

cudaError_t softmax_xent_fwd_bwd_cuda(const SoftmaxXentParams& p, ElemType dtype,
                                      cudaStream_t stream) {
  if (p.rows < 0 || p.vocab <= 0) return cudaErrorInvalidValue;
  if (p.rows == 0) return cudaSuccess;
  if (dtype == ElemType::kBFloat16) {
    launch<__nv_bfloat16>(p, stream);
  } else {
    launch<float>(p, stream);
  }
  return cudaGetLastError();
}

}  // namespace aim::kernels
