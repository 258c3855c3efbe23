// Causal depthwise conv1d + SiLU, forward and backward, and the one-token update of sampling.
//
// Memory-bound: every kernel reads x (and dout) once from DRAM; the W - 1 neighbours each
// thread also needs are the neighbours' own elements, served from L1/L2. Threads walk the
// unit-stride dimension of x so that a warp's accesses coalesce: channels for the
// channel-last layout the Mamba mixers pass ([B, L, C] memory seen as [B, C, L]), time for a
// contiguous [B, C, L].
//
// In the channel-last layout (the mixers') a thread takes kSteps consecutive time steps of one
// channel instead of one element: it loads the kSteps + W - 1 inputs its outputs read (and, in
// the backward, the dout values) into registers before computing anything, so a warp has
// about a dozen coalesced loads in flight instead of one new value (the neighbours it re-read
// from L1/L2 are now read once). The sums are the one-element kernels' terms in the same order.
// Where the channels come in aligned groups of kVecChannels (the mixers' tensors), a thread
// takes kVecChannels channels and moves each time step's values as one vector: the kernels
// were bound by instruction issue (about 57 instructions per output in the forward, 109 in the
// backward dx, for two bytes moved), which the vector spreads over four channels.
//
// Backward: dx[s] = sum_k w[k] * g[s + (W - 1) - k] with g = dout * silu'(pre); dweight and
// dbias are sums over (batch, time) of g times the input window, reduced per thread over a
// chunk of time steps in registers and written as one partial row per (batch, time chunk) of
// the workspace; a second kernel adds the partial rows in a fixed order, so the gradients are
// the same bits on every run (atomics would add them in the order blocks finish).
#include <cuda_bf16.h>

#include "causal_conv1d.h"
#include "vec_io.cuh"

namespace aim::kernels {

namespace {

constexpr int kThreads = 256;
constexpr int kChannelsPerBlock = 128;  // weight-gradient kernel: one thread per channel
constexpr int kTimeChunk = 64;          // weight-gradient kernel: time steps per thread
constexpr int kSumX = 32, kSumY = 16;   // partial-row sum: columns x row groups per block
constexpr int kSteps = 8;               // channel-last kernels: time steps per thread
// Channel-last kernels: channels per thread where every row is aligned to that many elements
// (one 8-byte bf16 or 16-byte fp32 access per time step), else 1.
constexpr int kVecChannels = 4;
constexpr int kVecThreads = 128;  // their block size

using vec::from_float;
using vec::load_vec;
using vec::store_vec;
using vec::to_float;

__device__ __forceinline__ float sigmoid(float v) { return 1.0f / (1.0f + __expf(-v)); }

struct Index {
  int64_t b, c, t;
};

// Element i of [B, C, L] in walking order: time fastest.
__device__ __forceinline__ Index unflatten(int64_t i, int channels, int len) {
  Index r;
  r.t = i % len;
  const int64_t rest = i / len;
  r.c = rest % channels;
  r.b = rest / channels;
  return r;
}

// pre-activation at (b, c, t); xc points at x[b, c, 0]. kMaxW >= W, unrolled.
template <typename T, int kMaxW>
__device__ __forceinline__ float conv_at(const T* xc, int64_t l_stride, const float* w, float bias,
                                         int width, int64_t t) {
  float acc = bias;
#pragma unroll
  for (int k = 0; k < kMaxW; ++k) {
    if (k < width) {
      const int64_t s = t - (width - 1) + k;
      if (s >= 0) acc += w[k] * to_float(xc[s * l_stride]);
    }
  }
  return acc;
}

// Other layouts (x_c_stride != 1): one output element per thread, time fastest.
template <typename T, int kMaxW>
__global__ void __launch_bounds__(kThreads)
    conv_fwd_kernel(CausalConv1dParams p) {
  const T* x = static_cast<const T*>(p.x);
  T* out = static_cast<T*>(p.out);
  const int64_t total = int64_t(p.batch) * p.channels * p.len;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const Index ix = unflatten(i, p.channels, p.len);
    const T* xc = x + ix.b * p.x_batch_stride + ix.c * p.x_c_stride;
    const float bias = p.bias != nullptr ? p.bias[ix.c] : 0.0f;
    float v = conv_at<T, kMaxW>(xc, p.x_l_stride, p.weight + ix.c * p.width, bias, p.width, ix.t);
    if (p.silu) v = v * sigmoid(v);
    out[ix.b * p.out_batch_stride + ix.c * p.out_c_stride + ix.t * p.out_l_stride] =
        from_float<T>(v);
  }
}

// g = dout * d(out)/d(pre) at (b, c, t).
template <typename T, int kMaxW>
__device__ __forceinline__ float grad_pre(const CausalConv1dParams& p, const T* xc,
                                          const T* dc, const float* w, float bias, int64_t t) {
  float g = to_float(dc[t * p.dout_l_stride]);
  if (p.silu) {
    const float pre = conv_at<T, kMaxW>(xc, p.x_l_stride, w, bias, p.width, t);
    const float s = sigmoid(pre);
    g *= s * (1.0f + pre * (1.0f - s));
  }
  return g;
}

template <typename T, int kMaxW>
__global__ void __launch_bounds__(kThreads)
    conv_bwd_dx_kernel(CausalConv1dParams p) {
  const T* x = static_cast<const T*>(p.x);
  const T* dout = static_cast<const T*>(p.dout);
  T* dx = static_cast<T*>(p.dx);
  const int64_t total = int64_t(p.batch) * p.channels * p.len;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const Index ix = unflatten(i, p.channels, p.len);
    const T* xc = x + ix.b * p.x_batch_stride + ix.c * p.x_c_stride;
    const T* dc = dout + ix.b * p.dout_batch_stride + ix.c * p.dout_c_stride;
    const float* w = p.weight + ix.c * p.width;
    const float bias = p.bias != nullptr ? p.bias[ix.c] : 0.0f;
    float acc = 0.0f;
#pragma unroll
    for (int k = 0; k < kMaxW; ++k) {
      if (k < p.width) {
        const int64_t t = ix.t + (p.width - 1) - k;  // outputs that read x[s] through tap k
        if (t < p.len) acc += w[k] * grad_pre<T, kMaxW>(p, xc, dc, w, bias, t);
      }
    }
    dx[ix.b * p.dx_batch_stride + ix.c * p.dx_c_stride + ix.t * p.dx_l_stride] =
        from_float<T>(acc);
  }
}

// kV channels' values at time step s (zeros outside [0, L)): one access of kV elements.
template <int kV, typename T>
__device__ __forceinline__ void load_step(const T* base, int64_t s, int64_t l_stride, int64_t len, float (&v)[kV]) {
  if (s >= 0 && s < len) {
    load_vec<kV>(base + s * l_stride, v);
  } else {
#pragma unroll
    for (int e = 0; e < kV; ++e) v[e] = 0.0f;
  }
}

// grid (channel blocks, batch, time chunks, at most 65535: a block then walks every gridDim.z-th
// chunk); one thread per kV channels (kV > 1: x and dout have a unit channel stride, rows aligned
// to kV elements) walks its time chunk with the last kMaxW inputs in registers
// (window[e][kMaxW - 1 - j] = x[t - j] of channel c + e), and writes the chunk's partial row.
template <typename T, int kMaxW, int kV>
__global__ void __launch_bounds__(kChannelsPerBlock)
    conv_bwd_dw_kernel(CausalConv1dParams p) {
  const int c = (blockIdx.x * kChannelsPerBlock + threadIdx.x) * kV;
  if (c >= p.channels) return;
  const int64_t b = blockIdx.y;
  const T* xc = static_cast<const T*>(p.x) + b * p.x_batch_stride + c * p.x_c_stride;
  const T* dc = static_cast<const T*>(p.dout) + b * p.dout_batch_stride + c * p.dout_c_stride;
  const int width = p.width;
  const int64_t chunks = (p.len + kTimeChunk - 1) / kTimeChunk;
  float wr[kV][kMaxW];  // wr[e][j] = weight of lag j = w[W - 1 - j]
  float bias[kV];
#pragma unroll
  for (int e = 0; e < kV; ++e) {
#pragma unroll
    for (int j = 0; j < kMaxW; ++j) wr[e][j] = j < width ? p.weight[(c + e) * width + (width - 1 - j)] : 0.0f;
    bias[e] = p.bias != nullptr ? p.bias[c + e] : 0.0f;
  }
  for (int64_t chunk = blockIdx.z; chunk < chunks; chunk += gridDim.z) {
    const int64_t t0 = chunk * kTimeChunk;
    const int64_t t1 = t0 + kTimeChunk < p.len ? t0 + kTimeChunk : p.len;
    float window[kV][kMaxW];
    float dw[kV][kMaxW];
    float db[kV];
#pragma unroll
    for (int j = 0; j < kMaxW; ++j) {
      // The inputs before the chunk, as if x[t0 - 1] had just been loaded: window[e][j] =
      // x[t0 - (kMaxW - j)] (zero before t = 0); window[e][0] is shifted out unread.
      float prior[kV];
      load_step<kV>(xc, j > 0 ? t0 - (kMaxW - j) : -1, p.x_l_stride, p.len, prior);
#pragma unroll
      for (int e = 0; e < kV; ++e) {
        window[e][j] = prior[e];
        dw[e][j] = 0.0f;
      }
    }
#pragma unroll
    for (int e = 0; e < kV; ++e) db[e] = 0.0f;
    // kSteps time steps at a time: their x and dout loads issued together, then the steps in
    // order (the same sums in the same order as one step at a time).
    for (int64_t tb = t0; tb < t1; tb += kSteps) {
      float xn[kSteps][kV], gn[kSteps][kV];
#pragma unroll
      for (int u = 0; u < kSteps; ++u) {
        const int64_t t = tb + u;
        load_step<kV>(xc, t < t1 ? t : -1, p.x_l_stride, p.len, xn[u]);
        load_step<kV>(dc, t < t1 ? t : -1, p.dout_l_stride, p.len, gn[u]);
      }
#pragma unroll
      for (int u = 0; u < kSteps; ++u) {
        if (tb + u >= t1) break;
#pragma unroll
        for (int e = 0; e < kV; ++e) {
#pragma unroll
          for (int j = 0; j + 1 < kMaxW; ++j) window[e][j] = window[e][j + 1];
          window[e][kMaxW - 1] = xn[u][e];
          float g = gn[u][e];
          if (p.silu) {
            float pre = bias[e];
#pragma unroll
            for (int j = 0; j < kMaxW; ++j) pre += wr[e][j] * window[e][kMaxW - 1 - j];
            const float s = sigmoid(pre);
            g *= s * (1.0f + pre * (1.0f - s));
          }
          db[e] += g;
#pragma unroll
          for (int j = 0; j < kMaxW; ++j) dw[e][j] += g * window[e][kMaxW - 1 - j];
        }
      }
    }
    // Partial row (b, chunk): per channel its W weight taps, then the bias.
    float* part = p.workspace + (b * chunks + chunk) * int64_t(p.channels) * (width + 1) +
                  int64_t(c) * (width + 1);
#pragma unroll
    for (int e = 0; e < kV; ++e) {
#pragma unroll
      for (int j = 0; j < kMaxW; ++j) {
        if (j < width) part[e * (width + 1) + width - 1 - j] = dw[e][j];
      }
      part[e * (width + 1) + width] = db[e];
    }
  }
}

// dweight and dbias: column j of the [rows, C * (W + 1)] partial rows summed over the rows.
// Block (kSumX, kSumY): thread (x, y) adds rows y, y + kSumY, ... in order, then thread (x, 0)
// adds the kSumY sums in order. No rows (an empty input): zeros.
__global__ void __launch_bounds__(kSumX * kSumY)
    conv_bwd_dw_sum_kernel(CausalConv1dParams p, int64_t rows) {
  const int64_t cols = int64_t(p.channels) * (p.width + 1);
  const int64_t j = int64_t(blockIdx.x) * kSumX + threadIdx.x;
  float acc = 0.0f;
  if (j < cols) {
    for (int64_t r = threadIdx.y; r < rows; r += kSumY) acc += p.workspace[r * cols + j];
  }
  __shared__ float partial[kSumY][kSumX + 1];
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y != 0 || j >= cols) return;
  float sum = 0.0f;
  for (int y = 0; y < kSumY; ++y) sum += partial[y][threadIdx.x];
  const int64_t c = j / (p.width + 1), tap = j % (p.width + 1);
  if (tap < p.width) {
    p.dweight[c * p.width + tap] = sum;
  } else if (p.dbias != nullptr) {
    p.dbias[c] = sum;
  }
}

// Channel-last layout (x_c_stride == 1): thread (b, c, chunk of kSteps steps from t0). wr[j] is
// tap j - (kMaxW - W) of the weight (taps aligned to the end of a kMaxW window, so that every
// register index is a constant); xv[j] = x[t0 - (kMaxW - 1) + j], zero outside [0, L).
template <typename T, int kMaxW>
__device__ __forceinline__ void load_taps(const CausalConv1dParams& p, int64_t c, float (&wr)[kMaxW],
                                          float* bias) {
#pragma unroll
  for (int j = 0; j < kMaxW; ++j) {
    wr[j] = j >= kMaxW - p.width ? p.weight[c * p.width + (j - (kMaxW - p.width))] : 0.0f;
  }
  *bias = p.bias != nullptr ? p.bias[c] : 0.0f;
}

// Pre-activation of channel e at t = t0 + u from the window xv (xv[u + j][e] =
// x[t - (kMaxW - 1) + j] of that channel): the terms of conv_at in its order, inputs before
// t = 0 skipped as there.
template <int kMaxW, int kN, int kV>
__device__ __forceinline__ float pre_at(const float (&xv)[kN][kV], const float (&wr)[kMaxW], float bias,
                                        int width, int64_t t, int u, int e) {
  float acc = bias;
#pragma unroll
  for (int j = 0; j < kMaxW; ++j) {
    if (j >= kMaxW - width && t - (kMaxW - 1) + j >= 0) acc += wr[j] * xv[u + j][e];
  }
  return acc;
}

// kV channels from c: their kMaxW taps and biases.
template <typename T, int kMaxW, int kV>
__device__ __forceinline__ void load_taps_v(const CausalConv1dParams& p, int64_t c, float (&wr)[kV][kMaxW],
                                            float (&bias)[kV]) {
#pragma unroll
  for (int e = 0; e < kV; ++e) load_taps<T, kMaxW>(p, c + e, wr[e], &bias[e]);
}

// kV channels per thread (kV > 1: out has a unit channel stride, rows aligned to kV elements).
template <typename T, int kMaxW, int kV>
__global__ void __launch_bounds__(kThreads) conv_fwd_steps_kernel(CausalConv1dParams p) {
  constexpr int kIn = kSteps + kMaxW - 1;
  const int64_t c = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kV;
  if (c >= p.channels) return;
  const int64_t b = blockIdx.z;
  const T* xc = static_cast<const T*>(p.x) + b * p.x_batch_stride + c;
  T* oc = static_cast<T*>(p.out) + b * p.out_batch_stride + c * p.out_c_stride;
  float wr[kV][kMaxW], bias[kV];
  load_taps_v<T, kMaxW, kV>(p, c, wr, bias);
  const int64_t chunks = (p.len + kSteps - 1) / kSteps;
  for (int64_t chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
    const int64_t t0 = chunk * kSteps;
    float xv[kIn][kV];
#pragma unroll
    for (int j = 0; j < kIn; ++j) load_step<kV>(xc, t0 - (kMaxW - 1) + j, p.x_l_stride, p.len, xv[j]);
#pragma unroll
    for (int u = 0; u < kSteps; ++u) {
      const int64_t t = t0 + u;
      if (t >= p.len) break;
      float o[kV];
#pragma unroll
      for (int e = 0; e < kV; ++e) {
        float v = pre_at<kMaxW>(xv, wr[e], bias[e], p.width, t, u, e);
        if (p.silu) v = v * sigmoid(v);
        o[e] = v;
      }
      store_vec<kV>(oc + t * p.out_l_stride, o);
    }
  }
}

// dx over kSteps steps from t0 needs g at t0 .. t0 + kSteps + W - 2, hence x from t0 - (W - 1)
// to t0 + kSteps + W - 2 and dout from t0: all loaded first.
// kV channels per thread (kV > 1: dout and dx have a unit channel stride, rows aligned to kV
// elements).
template <typename T, int kMaxW, int kV>
__global__ void __launch_bounds__(kThreads) conv_bwd_dx_steps_kernel(CausalConv1dParams p) {
  constexpr int kG = kSteps + kMaxW - 1;  // g values: t0 .. t0 + kG - 1
  constexpr int kIn = kG + kMaxW - 1;     // x values: t0 - (kMaxW - 1) .. t0 + kG - 1
  const int64_t c = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kV;
  if (c >= p.channels) return;
  const int64_t b = blockIdx.z;
  const T* xc = static_cast<const T*>(p.x) + b * p.x_batch_stride + c;
  const T* dc = static_cast<const T*>(p.dout) + b * p.dout_batch_stride + c * p.dout_c_stride;
  T* xc_out = static_cast<T*>(p.dx) + b * p.dx_batch_stride + c * p.dx_c_stride;
  float wr[kV][kMaxW], bias[kV];
  load_taps_v<T, kMaxW, kV>(p, c, wr, bias);
  const int64_t chunks = (p.len + kSteps - 1) / kSteps;
  for (int64_t chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
    const int64_t t0 = chunk * kSteps;
    float xv[kIn][kV], gv[kG][kV];
#pragma unroll
    for (int j = 0; j < kIn; ++j) {
      // Without the SiLU the pre-activation is not needed: no x.
      load_step<kV>(xc, p.silu ? t0 - (kMaxW - 1) + j : -1, p.x_l_stride, p.len, xv[j]);
    }
#pragma unroll
    for (int u = 0; u < kG; ++u) load_step<kV>(dc, t0 + u, p.dout_l_stride, p.len, gv[u]);
    if (p.silu) {
#pragma unroll
      for (int u = 0; u < kG; ++u) {
#pragma unroll
        for (int e = 0; e < kV; ++e) {
          const float pre = pre_at<kMaxW>(xv, wr[e], bias[e], p.width, t0 + u, u, e);
          const float sg = sigmoid(pre);
          gv[u][e] *= sg * (1.0f + pre * (1.0f - sg));
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kSteps; ++u) {
      const int64_t s = t0 + u;
      if (s >= p.len) break;
      // Tap k = j - (kMaxW - W) reads g at s + (W - 1) - k = s + kMaxW - 1 - j.
      float acc[kV];
#pragma unroll
      for (int e = 0; e < kV; ++e) {
        acc[e] = 0.0f;
#pragma unroll
        for (int j = 0; j < kMaxW; ++j) {
          if (j >= kMaxW - p.width && s + kMaxW - 1 - j < p.len) acc[e] += wr[e][j] * gv[u + kMaxW - 1 - j][e];
        }
      }
      store_vec<kV>(xc_out + s * p.dx_l_stride, acc);
    }
  }
}

// Channel-last grid: (channel blocks, time chunks of kSteps, batch); a block's threads are
// consecutive channels of one (b, chunk), so no thread divides an index (64-bit divisions were a
// few hundred instructions per 8 outputs). Chunks past 65535 loop.
// `per_block` channels a block (threads x channels per thread).
dim3 steps_grid(const CausalConv1dParams& p, int per_block) {
  const int64_t chunks = (p.len + kSteps - 1) / kSteps;
  return dim3(static_cast<unsigned>((p.channels + per_block - 1) / per_block),
              static_cast<unsigned>(chunks < 65535 ? chunks : 65535), static_cast<unsigned>(p.batch));
}

// A [B, C, L] tensor of `elem`-byte elements that kVecChannels channels read as one aligned
// vector at every (b, t): unit channel stride, base and strides multiples of the vector.
bool vec_rows(const void* base, int64_t batch_stride, int64_t c_stride, int64_t l_stride, size_t elem) {
  const size_t bytes = elem * kVecChannels;
  return c_stride == 1 && reinterpret_cast<uintptr_t>(base) % bytes == 0 && batch_stride % kVecChannels == 0 &&
         l_stride % kVecChannels == 0;
}

int grid_for(int64_t total, int threads) {
  // Enough blocks to fill any current GPU several times; the kernels loop over the rest.
  const int64_t blocks = (total + threads - 1) / threads;
  return static_cast<int>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

template <typename T, int kMaxW>
cudaError_t launch_fwd(const CausalConv1dParams& p, cudaStream_t stream) {
  const int64_t total = int64_t(p.batch) * p.channels * p.len;
  if (total == 0) return cudaSuccess;
  if (p.x_c_stride == 1) {
    if (p.channels % kVecChannels == 0 &&
        vec_rows(p.x, p.x_batch_stride, p.x_c_stride, p.x_l_stride, sizeof(T)) &&
        vec_rows(p.out, p.out_batch_stride, p.out_c_stride, p.out_l_stride, sizeof(T))) {
      conv_fwd_steps_kernel<T, kMaxW, kVecChannels>
          <<<steps_grid(p, kVecThreads * kVecChannels), kVecThreads, 0, stream>>>(p);
    } else {
      conv_fwd_steps_kernel<T, kMaxW, 1><<<steps_grid(p, kThreads), kThreads, 0, stream>>>(p);
    }
  } else {
    const int grid = grid_for(total, kThreads);
    conv_fwd_kernel<T, kMaxW><<<grid, kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

int64_t time_chunks(const CausalConv1dParams& p) { return (p.len + kTimeChunk - 1) / kTimeChunk; }

template <typename T, int kMaxW>
cudaError_t launch_bwd(const CausalConv1dParams& p, cudaStream_t stream) {
  if (p.channels == 0) return cudaSuccess;
  const int64_t total = int64_t(p.batch) * p.channels * p.len;
  int64_t rows = 0;
  // Vectors of kVecChannels channels: the weight gradient reads x and dout, dx also writes dx.
  const bool dw_vec = p.channels % kVecChannels == 0 &&
                      vec_rows(p.x, p.x_batch_stride, p.x_c_stride, p.x_l_stride, sizeof(T)) &&
                      vec_rows(p.dout, p.dout_batch_stride, p.dout_c_stride, p.dout_l_stride, sizeof(T));
  const bool vec = dw_vec && vec_rows(p.dx, p.dx_batch_stride, p.dx_c_stride, p.dx_l_stride, sizeof(T));
  if (total > 0) {
    if (p.x_c_stride == 1 && vec) {
      conv_bwd_dx_steps_kernel<T, kMaxW, kVecChannels>
          <<<steps_grid(p, kVecThreads * kVecChannels), kVecThreads, 0, stream>>>(p);
    } else if (p.x_c_stride == 1) {
      conv_bwd_dx_steps_kernel<T, kMaxW, 1><<<steps_grid(p, kThreads), kThreads, 0, stream>>>(p);
    } else {
      conv_bwd_dx_kernel<T, kMaxW><<<grid_for(total, kThreads), kThreads, 0, stream>>>(p);
    }
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    const int per_block = kChannelsPerBlock * (dw_vec ? kVecChannels : 1);
    const int64_t chunks = time_chunks(p);
    const dim3 dw_grid((p.channels + per_block - 1) / per_block, p.batch,
                       static_cast<unsigned>(chunks < 65535 ? chunks : 65535));
    if (dw_vec) {
      conv_bwd_dw_kernel<T, kMaxW, kVecChannels><<<dw_grid, kChannelsPerBlock, 0, stream>>>(p);
    } else {
      conv_bwd_dw_kernel<T, kMaxW, 1><<<dw_grid, kChannelsPerBlock, 0, stream>>>(p);
    }
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    rows = int64_t(p.batch) * time_chunks(p);
  }
  const int64_t cols = int64_t(p.channels) * (p.width + 1);
  const unsigned sum_grid = static_cast<unsigned>((cols + kSumX - 1) / kSumX);
  conv_bwd_dw_sum_kernel<<<sum_grid, dim3(kSumX, kSumY), 0, stream>>>(p, rows);
  return cudaGetLastError();
}

// One thread per (b, c): the window in registers, read and written once (adjacent channels'
// windows are adjacent, so a warp's accesses coalesce). T: x and out; S: the state; TW: weight
// and bias.
template <typename T, typename S, typename TW, int kMaxW>
__global__ void __launch_bounds__(kThreads)
    conv_update_kernel(CausalConv1dUpdateParams p) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(p.batch) * p.channels) return;
  const int64_t b = i / p.channels, c = i % p.channels;
  S* window = static_cast<S*>(p.state) + b * p.state_batch_stride + c * p.state_c_stride;
  const TW* w = static_cast<const TW*>(p.weight) + c * p.width;
  // The incoming value is stored in the state's type, and the sum reads it from there.
  const S incoming =
      from_float<S>(to_float(static_cast<const T*>(p.x)[b * p.x_batch_stride + c * p.x_c_stride]));
  float acc = 0.0f;
#pragma unroll
  for (int k = 0; k < kMaxW; ++k) {
    if (k < p.width) {
      const S v = k + 1 < p.width ? window[k + 1] : incoming;  // read before this slot is written
      window[k] = v;
      acc += to_float(w[k]) * to_float(v);
    }
  }
  if (p.bias != nullptr) acc += to_float(static_cast<const TW*>(p.bias)[c]);
  if (p.silu) acc = acc * sigmoid(acc);
  static_cast<T*>(p.out)[b * p.out_batch_stride + c * p.out_c_stride] = from_float<T>(acc);
}

template <typename T, typename S, typename TW>
cudaError_t launch_update(const CausalConv1dUpdateParams& p, cudaStream_t stream) {
  const int64_t total = int64_t(p.batch) * p.channels;
  if (total == 0) return cudaSuccess;
  const unsigned grid = static_cast<unsigned>((total + kThreads - 1) / kThreads);
  if (p.width <= 4) {
    conv_update_kernel<T, S, TW, 4><<<grid, kThreads, 0, stream>>>(p);
  } else {
    conv_update_kernel<T, S, TW, 8><<<grid, kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

template <typename T, typename S>
cudaError_t launch_update_w(const CausalConv1dUpdateParams& p, cudaStream_t stream) {
  return p.weight_type == ElemType::kBFloat16 ? launch_update<T, S, __nv_bfloat16>(p, stream)
                                              : launch_update<T, S, float>(p, stream);
}

template <typename T>
cudaError_t launch_update_s(const CausalConv1dUpdateParams& p, cudaStream_t stream) {
  return p.state_type == ElemType::kBFloat16 ? launch_update_w<T, __nv_bfloat16>(p, stream)
                                             : launch_update_w<T, float>(p, stream);
}

bool valid(const CausalConv1dParams& p) {
  return p.width >= 1 && p.width <= 8 && p.batch <= 65535 && p.batch >= 0 && p.channels >= 0 &&
         p.len >= 0;
}

}  // namespace

cudaError_t causal_conv1d_fwd_cuda(const CausalConv1dParams& p, ElemType dtype,
                                   cudaStream_t stream) {
  if (!valid(p)) return cudaErrorInvalidValue;
  if (dtype == ElemType::kBFloat16) {
    return p.width <= 4 ? launch_fwd<__nv_bfloat16, 4>(p, stream)
                        : launch_fwd<__nv_bfloat16, 8>(p, stream);
  }
  return p.width <= 4 ? launch_fwd<float, 4>(p, stream) : launch_fwd<float, 8>(p, stream);
}

cudaError_t causal_conv1d_update_cuda(const CausalConv1dUpdateParams& p, ElemType dtype,
                                      cudaStream_t stream) {
  if (p.width < 1 || p.width > 8 || p.batch < 0 || p.channels < 0) return cudaErrorInvalidValue;
  return dtype == ElemType::kBFloat16 ? launch_update_s<__nv_bfloat16>(p, stream)
                                      : launch_update_s<float>(p, stream);
}

int64_t causal_conv1d_bwd_workspace_size(const CausalConv1dParams& p) {
  return int64_t(p.batch) * time_chunks(p) * p.channels * (p.width + 1);
}

cudaError_t causal_conv1d_bwd_cuda(const CausalConv1dParams& p, ElemType dtype,
                                   cudaStream_t stream) {
  if (!valid(p) || p.dweight == nullptr ||
      (causal_conv1d_bwd_workspace_size(p) > 0 && p.workspace == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (dtype == ElemType::kBFloat16) {
    return p.width <= 4 ? launch_bwd<__nv_bfloat16, 4>(p, stream)
                        : launch_bwd<__nv_bfloat16, 8>(p, stream);
  }
  return p.width <= 4 ? launch_bwd<float, 4>(p, stream) : launch_bwd<float, 8>(p, stream);
}

}  // namespace aim::kernels
