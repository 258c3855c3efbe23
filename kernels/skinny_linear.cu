// The decoding step's linear layers (in_proj, out_proj, lm_head) for a sampling batch's few
// rows, where a token's step reads every weight once and the products are a few multiply-adds
// per weight: the time is the weight read. cuBLAS's GEMM tiles such an M x K x N product along
// N only, 32 or 64 features a tile, so out_proj (N = d_model) keeps a quarter of the SMs busy
// and in_proj's tiles run in a wave and a few stragglers (the H200 profile, docs/perf.md).
//
// Here a block of kWarps warps computes kCols output features (16, or 8 when 16 would leave
// SMs idle) for all M rows, and its warps split K: warp w takes the 32-wide steps w, w + kWarps,
// ... of the reduction. Per step a lane loads 16 bytes of each of its weight rows (row g of an
// 8-feature tile, elements 8q .. 8q + 7 of the step; g = lane / 4, q = lane % 4) and 16 bytes
// of the x rows g and g + 8 of each 16-row tile, and the warp runs two mma.m16n8k16 products
// per (row tile, feature tile). The step's 32 elements go to the two products' k positions by
// one permutation that both operands share (a sum does not care about its order): lane q's
// elements 8q + 4s + {0, 1} are product s's k = 2q, 2q + 1 and 8q + 4s + {2, 3} its k = 2q + 8,
// 2q + 9, which are exactly the A and B fragment registers the lane holds in product s. So every
// operand arrives by one 16-byte load, with no shared memory and no barrier on the way.
// A lane keeps kUnroll steps' weight vectors in flight, and loads the next kUnroll steps' before
// it uses the current ones. The warps' partial sums meet in shared
// memory and are added in warp order (deterministic), plus the bias, rounded to bf16 once.
// Launched as a dependent of the previous kernel (grid_dependency.cuh), a block asks for its
// whole weight slice in L2 and loads its first batch of weights before it waits for that kernel,
// which wrote x.
// Blocks past the first wave (two blocks per SM) start only as blocks of that wave end, and
// each then waits a whole DRAM round trip for its weights with few loads in flight on the
// device: AiM-L's in_proj at 32 rows has 274 blocks for 264 slots on an H100 or H200, and the
// lm_head four waves. So every block also asks for the weight slice of the block one wave after
// it in L2, and that block finds its weights there.
#include <cuda_bf16.h>

#include <cstdint>

#include "device_query.h"
#include "grid_dependency.cuh"
#include "skinny_linear.h"
#include "static_switch.h"
#include "warp_mma.cuh"

namespace aim::kernels {

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kStep = 32;  // K elements per step of a warp
constexpr unsigned kFullMask = 0xffffffffu;

// 16 bytes of a tensor read once (the weights): not kept in L1.
__device__ __forceinline__ uint4 load_once(const __nv_bfloat16* p) {
#if defined(__CUDACC__)
  return __ldcs(reinterpret_cast<const uint4*>(p));
#else
  return *reinterpret_cast<const uint4*>(p);
#endif
}

__device__ __forceinline__ uint4 load_vec(const __nv_bfloat16* p) { return *reinterpret_cast<const uint4*>(p); }

// kMT 16-row tiles (M <= 16 kMT), kNT 8-feature tiles per block (kCols = 8 kNT).
// Blocks resident at once per SM: what __launch_bounds__ asks ptxas to allow (at most 128
// registers); wave_blocks = kBlocksPerSm x SMs.
constexpr int kBlocksPerSm = 2;

template <int kMT, int kNT>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    skinny_linear_kernel(const SkinnyLinearParams p, const int wave_blocks) {
  using T = __nv_bfloat16;
  namespace wm = warp_mma;
  constexpr int kCols = 8 * kNT;
  constexpr int kRows = 16 * kMT;
  // Steps in flight per lane: the weight vectors are what DRAM latency waits on.
  constexpr int kUnroll = kMT >= 4 ? 2 : kNT == 1 ? 8 : 4;
  // The warps' sums; rows kLdp floats apart, so a warp's float2 stores hit distinct banks.
  constexpr int kLdp = kCols == 16 ? 24 : kCols;
  __shared__ float part[kWarps][kRows * kLdp];

  const int tid = threadIdx.x, lane = tid & 31;
  const int warp = __shfl_sync(kFullMask, tid >> 5, 0);
  const int g = lane >> 2, q = lane & 3;
  const int M = p.rows, K = p.in_features, N = p.out_features;
  const int n0 = blockIdx.x * kCols;
  const int steps = K / kStep;
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.weight);

  // This lane's weight rows (one per feature tile) and x rows (g and g + 8 of each row tile).
  const T* wrow[kNT];
  bool wok[kNT];
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
    const int n = n0 + 8 * nt + g;
    wok[nt] = n < N;
    wrow[nt] = w + static_cast<int64_t>(wok[nt] ? n : 0) * K + 8 * q;
  }
  const T* xrow[kMT][2];
  bool xok[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int m = 16 * mt + g + 8 * hf;
      xok[mt][hf] = m < M;
      xrow[mt][hf] = x + (xok[mt][hf] ? m : 0) * p.x_row_stride + 8 * q;
    }

  float acc[kMT][kNT][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.f;

  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  // kUnroll steps' weight vectors from step s0 (zeros past K or N).
  auto load_weights = [&](int s0, uint4 (&wv)[kUnroll][kNT]) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int s = s0 + u * kWarps;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
        wv[u][nt] = s < steps && wok[nt] ? load_once(wrow[nt] + s * kStep) : zero;
      }
    }
  };
  constexpr int kStride = kWarps * kUnroll;
  // A block's kCols weight rows are contiguous.
  auto prefetch_slice = [&](int64_t first) {
    const int64_t cols = N - first < kCols ? N - first : kCols;
    prefetch_to_l2(w + first * K, cols * K * static_cast<int64_t>(sizeof(T)));
  };
  if (tid == 0) {
    if (p.dependent_launch && n0 < N) prefetch_slice(n0);
    const int64_t later = (static_cast<int64_t>(blockIdx.x) + wave_blocks) * kCols;
    if (later < N) prefetch_slice(later);
  }
  uint4 wv[kUnroll][kNT];
  load_weights(warp, wv);
  // Nothing above reads what the previous kernel writes (x comes after the wait).
  wait_for_prior_grid();
  allow_dependent_grid();
  for (int s0 = warp; s0 < steps; s0 += kStride) {
    // The next batch's weights are on their way while this batch's x loads and products run.
    uint4 wn[kUnroll][kNT];
    load_weights(s0 + kStride, wn);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int s = s0 + u * kWarps;
      if (s < steps) {
        uint4 xv[kMT][2];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) xv[mt][hf] = xok[mt][hf] ? load_vec(xrow[mt][hf] + s * kStep) : zero;
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          // Product 0 takes the vectors' words x, y; product 1 z, w (see the top of the file).
          const uint32_t a0[4] = {xv[mt][0].x, xv[mt][1].x, xv[mt][0].y, xv[mt][1].y};
          const uint32_t a1[4] = {xv[mt][0].z, xv[mt][1].z, xv[mt][0].w, xv[mt][1].w};
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt) {
            wm::mma_bf16(acc[mt][nt], a0, wv[u][nt].x, wv[u][nt].y);
            wm::mma_bf16(acc[mt][nt], a1, wv[u][nt].z, wv[u][nt].w);
          }
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) wv[u][nt] = wn[u][nt];
  }

  // acc[mt][nt][e]: row 16 mt + g + 8 (e / 2), feature 8 nt + 2 q + e % 2 of the block.
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int r = 16 * mt + g + 8 * hf, c = 8 * nt + 2 * q;
        *reinterpret_cast<float2*>(&part[warp][r * kLdp + c]) =
            make_float2(acc[mt][nt][2 * hf], acc[mt][nt][2 * hf + 1]);
      }
  __syncthreads();
  const T* bias = static_cast<const T*>(p.bias);
  T* out = static_cast<T*>(p.out);
  for (int i = tid; i < M * kCols; i += kThreads) {
    const int r = i / kCols, c = i % kCols, n = n0 + c;
    if (n >= N) continue;
    float v = 0.f;
#pragma unroll
    for (int k = 0; k < kWarps; ++k) v += part[k][r * kLdp + c];
    if (bias != nullptr) v += __bfloat162float(bias[n]);
    out[r * p.out_row_stride + n] = __float2bfloat16(v);
  }
}

}  // namespace

bool skinny_linear_supported(int rows, int in_features, int out_features) {
  return rows >= 1 && rows <= kSkinnyLinearMaxRows && in_features >= kStep && in_features % kStep == 0 &&
         out_features >= 1;
}

cudaError_t skinny_linear_cuda(const SkinnyLinearParams& p, cudaStream_t stream) {
  if (!skinny_linear_supported(p.rows, p.in_features, p.out_features) || p.x_row_stride % 8 != 0 ||
      reinterpret_cast<uintptr_t>(p.x) % 16 != 0 || reinterpret_cast<uintptr_t>(p.weight) % 16 != 0) {
    return cudaErrorInvalidValue;
  }
  // 16 features a block where that still gives every SM a block, else 8.
  const bool wide = (p.out_features + 15) / 16 >= current_sm_count();
  const int mt = p.rows <= 16 ? 1 : p.rows <= 32 ? 2 : 4;
  cudaError_t err = cudaSuccess;
  auto launch = [&](auto kernel, int cols) {
    const dim3 grid(static_cast<unsigned>((p.out_features + cols - 1) / cols));
    err = launch_maybe_dependent(p.dependent_launch, kernel, grid, dim3(kThreads), 0, stream, p,
                                 kBlocksPerSm * current_sm_count());
  };
  BOOL_SWITCH(wide, kWide, [&] {
    constexpr int kNT = kWide ? 2 : 1;
    if (mt == 1) launch(&skinny_linear_kernel<1, kNT>, 8 * kNT);
    if (mt == 2) launch(&skinny_linear_kernel<2, kNT>, 8 * kNT);
    if (mt == 4) launch(&skinny_linear_kernel<4, kNT>, 8 * kNT);
  });
  return err;
}

}  // namespace aim::kernels
