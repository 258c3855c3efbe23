// Softmax cross-entropy over a [rows, vocab] chunk of logits, gradient written in place.
//
// One block per row: pass 1 keeps a running (max, sum of exp) per thread over a strided slice
// of the row and merges the pairs across the block; pass 2 overwrites each logit with
// (exp(logit - lse) - [j == target]) * inv_count. The row is read twice and written once; the
// fp32 [tokens, vocab] logits and their separate gradient never exist.
#include <cuda_bf16.h>

#include <cfloat>

#include "cross_entropy.h"
#include "vec_io.cuh"

namespace aim::kernels {

namespace {

constexpr int kThreads = 512;

using vec::from_float;
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

template <typename T>
__global__ void __launch_bounds__(kThreads) softmax_xent_kernel(SoftmaxXentParams p) {
  const int row = blockIdx.x;
  T* x = static_cast<T*>(p.logits) + int64_t(row) * p.row_stride;
  const int64_t target = p.targets[row];
  const bool ignored = target == p.ignore_index;

  float m = -FLT_MAX, s = 0.0f;
  for (int j = threadIdx.x; j < p.vocab; j += kThreads) {
    const float v = to_float(x[j]);
    if (v > m) {
      s = s * __expf(m - v) + 1.0f;
      m = v;
    } else {
      s += __expf(v - m);
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
      if (!ignored && target >= 0 && target < p.vocab) loss = lse - to_float(x[target]);
      p.losses[row] = loss;
    }
  }
  __syncthreads();
  const float lse = row_lse;
  const float scale = ignored ? 0.0f : *p.inv_count;
  for (int j = threadIdx.x; j < p.vocab; j += kThreads) {
    const float prob = __expf(to_float(x[j]) - lse);
    const float g = (prob - (j == target ? 1.0f : 0.0f)) * scale;
    x[j] = from_float<T>(g);
  }
}

}  // namespace

cudaError_t softmax_xent_fwd_bwd_cuda(const SoftmaxXentParams& p, ElemType dtype,
                                      cudaStream_t stream) {
  if (p.rows < 0 || p.vocab <= 0) return cudaErrorInvalidValue;
  if (p.rows == 0) return cudaSuccess;
  if (dtype == ElemType::kBFloat16) {
    softmax_xent_kernel<__nv_bfloat16><<<p.rows, kThreads, 0, stream>>>(p);
  } else {
    softmax_xent_kernel<float><<<p.rows, kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace aim::kernels
