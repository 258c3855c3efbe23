#pragma once
// What the selective-scan kernels share: the thread mapping of a block onto (channel, state)
// pairs, element conversions, the delta transform, warp sums and tile moves between a strided
// [rows, time] slice of global memory and shared memory.
//
// Mapping: a block of kThreads threads covers `channels_per_block` consecutive channels of one
// sequence. Each channel gets G consecutive lanes of a warp (G a power of two, 4..32); lane j
// of a channel owns the states n = j, j + G, j + 2G, ... (at most kStates of them), so a warp
// holds 32 / G whole channels and every sum over a channel's states is a butterfly over G
// lanes. kStates is 4 for N <= 128 and 8 for N <= 256; G = ceil(N / kStates) rounded up to a
// power of two, at least 4 so that a block never spans more than 32 channels.
#include <cuda_bf16.h>

#include <cstdint>

#include "device_query.h"
#include "selective_scan.h"
#include "vec_io.cuh"

namespace aim::kernels::sscan {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = kSelectiveScanChunk;
constexpr float kLog2e = 1.4426950408889634f;
// torch.nn.functional.softplus's default threshold: above it softplus(x) = x and its slope 1.
constexpr float kSoftplusThreshold = 20.f;

/// States per lane for d_state N: 4 up to N = 128, else 8.
__host__ __device__ inline int states_per_lane(int dstate) { return dstate <= 128 ? 4 : 8; }

/// Lanes per channel G for d_state N and kStates states per lane.
__host__ __device__ inline int lanes_per_channel(int dstate, int states) {
  const int need = (dstate + states - 1) / states;
  int g = 4;
  while (g < need) g *= 2;
  return g;
}

using vec::from_float;
using vec::to_float;

__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + __expf(-v)); }

/// delta' = softplus(delta + bias) (or delta + bias) and d delta' / d delta.
template <bool kSoftplus>
__device__ __forceinline__ void transform_delta(float raw, float* delta, float* slope) {
  if (kSoftplus) {
    if (raw <= kSoftplusThreshold) {
      *delta = log1pf(__expf(raw));
      *slope = sigmoid(raw);
    } else {
      *delta = raw;
      *slope = 1.f;
    }
  } else {
    *delta = raw;
    *slope = 1.f;
  }
}

/// Sum over the G lanes of a channel; every lane of the warp calls it with the same G.
__device__ __forceinline__ float lane_group_sum(float v, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

/// Sum over the channels of a warp for a fixed lane-in-channel j: afterwards lanes j < G hold
/// the sums. Every lane of the warp calls it with the same G.
__device__ __forceinline__ float warp_channel_sum(float v, int lanes) {
  for (int offset = lanes; offset < 32; offset *= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

/// Calls f(r, t, v, valid) for every element of a [rows, cols] tile whose element (r, t) sits
/// at src[r * row_stride + t * col_stride], with v its value as float, or 0 and valid false for
/// r >= rows_valid or t >= cols_valid. Threads walk the axis with unit stride in global memory
/// (time for a contiguous [.., L], rows for the channel-last layout), so the loads coalesce.
template <typename T, typename F>
__device__ __forceinline__ void load_tile(const T* src, int64_t row_stride, int64_t col_stride,
                                          int rows, int cols, int rows_valid, int cols_valid,
                                          F&& f) {
  const bool time_fastest = col_stride == 1 || row_stride != 1;
  const int count = rows * cols;
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    const int r = time_fastest ? i / cols : i % rows;
    const int t = time_fastest ? i % cols : i / rows;
    const bool valid = r < rows_valid && t < cols_valid;
    const float v = valid ? to_float(src[r * row_stride + t * col_stride]) : 0.f;
    f(r, t, v, valid);
  }
}

/// Writes tile[r * tile_stride + t] to dst[r * row_stride + t * col_stride] for r < rows_valid,
/// t < cols_valid of a [rows, cols] tile, walking the unit-stride axis of dst.
template <typename T>
__device__ __forceinline__ void store_tile(T* dst, int64_t row_stride, int64_t col_stride,
                                           const float* tile, int tile_stride, int rows,
                                           int cols, int rows_valid, int cols_valid) {
  const bool time_fastest = col_stride == 1 || row_stride != 1;
  const int count = rows * cols;
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    const int r = time_fastest ? i / cols : i % rows;
    const int t = time_fastest ? i % cols : i / rows;
    if (r < rows_valid && t < cols_valid) {
      dst[r * row_stride + t * col_stride] = from_float<T>(tile[r * tile_stride + t]);
    }
  }
}

}  // namespace aim::kernels::sscan
