// Mamba2's one-token step between in_proj and out_proj, in one launch (decoding):
//
//   xBC  = silu(conv(window shifted by one, xBC_in))     per channel of x, B and C
//   dt'  = softplus(dt + dt_bias),  s = exp(dt' A) s + dt' x B,  y = <s, C> + D x
//   out  = gated_rms_norm(y, z)                          over groups of norm_group_size channels
//
// the same math, rounding points and order as the three kernels it replaces
// (causal_conv1d_update, ssd_state_update, gated_rms_norm): the conv output is rounded to the
// element type before the state update reads it, y before the norm reads it.
//
// Grid (H * splits, B): block (h, s) owns rows [s R, (s + 1) R) of head h's state (R = P /
// splits), the conv windows of those x channels, and computes the conv of its group's B and C
// itself (2N channels, from L2; cheaper than a launch). The conv windows of B and C are shared
// by every block of the sequence, so they are shifted only after all of them have read them, and
// the norm needs every head's y: each block writes y (in T) into `out` and, when its rows lie in
// one norm group, the sum of squares of its gated y into `norm_partials`, then counts itself in
// with an atomic on the sequence's counter; the last block to arrive shifts the B/C windows,
// adds each group's block sums (one per thread, then a fixed tree; or, when a block's rows span
// groups, sums the squares over the row itself), normalises the whole row in place (reading y
// and z again from L2, in a fixed order, so the result does not depend on which block was last)
// and resets the counter. No block waits for another.
//
// Besides the state, a step's reads are small and dependent (a conv window, its weights, y and z
// of the norm): on an H200 the kernel took the same 29 us at 32 rows of AiM-L with an fp32
// state, a bf16 one, and 1, 2 or 4 state rows in flight per warp, a fixed chain of latencies
// rather than the 16 us its state needs (docs/perf.md, 2026-12-04). So the chain is kept short:
// a thread issues all the reads of two conv channels before it uses any, and the last block
// reads each thread's share of the block sums and of the B/C windows at once, and a norm pass
// 16 bytes of y, z and weight at a time where they are aligned. At AiM-L's 2048-wide row the
// last block's part is then about five round trips to L2 (the arrival atomic, the shift, the
// sums, the norm pass's two vectors a thread one after the other) where it was about nine at 32
// rows and fifteen at 2.
//
// A block first asks for its state rows in L2 (one bulk prefetch), so that they arrive while
// the conv runs; launched as a dependent of the previous kernel (in_proj; grid_dependency.cuh),
// it does so before it waits for in_proj's output (the state is this kernel's own, written at
// the previous token).
#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

#include "device_query.h"
#include "grid_dependency.cuh"
#include "ssd_state_update_kernel.cuh"  // load_as_float, store_from_float
#include "ssd_step.h"
#include "vec_io.cuh"

namespace aim::kernels {

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kMinRows = 16;  // rows per block when a head is split (B/C conv is per block)

__device__ __forceinline__ float load_elem(const void* base, ElemType t, int64_t i) {
  return t == ElemType::kBFloat16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i])
                                  : static_cast<const float*>(base)[i];
}
__device__ __forceinline__ float round_elem(ElemType t, float v) {
  return t == ElemType::kBFloat16 ? __bfloat162float(__float2bfloat16(v)) : v;
}
template <typename T>
__device__ __forceinline__ float round_to(float v) {
  T r;
  store_from_float(&r, v);
  return load_as_float(&r);
}
__device__ __forceinline__ float sigmoid(float v) { return 1.0f / (1.0f + __expf(-v)); }

// Sum over the block, the same bits in every thread (warp sums added in warp order). Every
// thread calls it; `scratch` may be reused by the next call.
__device__ float block_sum(float v, float* scratch) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  __syncthreads();  // the previous call's readers are done with scratch
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < kWarps; ++w) total += scratch[w];
  return total;
}

// The incoming value of channel c, rounded to the conv state's type (it is stored there, and
// the sum reads it from there, as in causal_conv1d_update).
template <typename T>
__device__ __forceinline__ float conv_incoming(const SsdStepParams& p, int b, int64_t c) {
  return round_elem(p.conv_state_type,
                    load_as_float(static_cast<const T*>(p.xbc) + b * p.xbc_batch_stride + c));
}

// What one channel's conv reads, every load issued before any value is used (one branch per
// stored type, then predicated loads): the window's newest W - 1 values (win[k] = slot k + 1),
// the incoming value, the W weights and the bias. A decoding step is a chain of such small
// reads, so their latencies, not their bytes, are its cost.
// kW: the most taps the instantiation takes (4 or kSsdStepMaxWidth), which sizes the registers.
template <int kW>
struct ConvInputs {
  float win[kW];  // the last never read (a conv's newest tap is the incoming value)
  float weight[kW];
  float bias;
  float incoming;
};

// kForConv false: only what the shift needs (the window and the incoming value).
template <typename T, int kW, bool kForConv = true>
__device__ __forceinline__ ConvInputs<kW> load_conv_inputs(const SsdStepParams& p, int b, int64_t c) {
  ConvInputs<kW> in{};
  const int64_t window = b * p.conv_state_batch_stride + c * p.conv_state_c_stride;
  if (p.conv_state_type == ElemType::kBFloat16) {
    const auto* s = static_cast<const __nv_bfloat16*>(p.conv_state) + window;
#pragma unroll
    for (int k = 0; k + 1 < kW; ++k) in.win[k] = k + 1 < p.width ? __bfloat162float(s[k + 1]) : 0.f;
  } else {
    const auto* s = static_cast<const float*>(p.conv_state) + window;
#pragma unroll
    for (int k = 0; k + 1 < kW; ++k) in.win[k] = k + 1 < p.width ? s[k + 1] : 0.f;
  }
  if constexpr (kForConv) {
    if (p.conv_weight_type == ElemType::kBFloat16) {
      const auto* w = static_cast<const __nv_bfloat16*>(p.conv_weight) + c * p.width;
#pragma unroll
      for (int k = 0; k < kW; ++k) in.weight[k] = k < p.width ? __bfloat162float(w[k]) : 0.f;
    } else {
      const auto* w = static_cast<const float*>(p.conv_weight) + c * p.width;
#pragma unroll
      for (int k = 0; k < kW; ++k) in.weight[k] = k < p.width ? w[k] : 0.f;
    }
    if (p.conv_bias != nullptr) in.bias = load_elem(p.conv_bias, p.conv_weight_type, c);
  }
  in.incoming = conv_incoming<T>(p, b, c);
  return in;
}

// The channel's conv output (SiLU, rounded to T): taps in order, the newest on the incoming value.
template <typename T, int kW>
__device__ __forceinline__ float conv_output(const SsdStepParams& p, const ConvInputs<kW>& in) {
  float acc = 0.f;
#pragma unroll
  for (int k = 0; k < kW; ++k) {
    if (k < p.width) acc += in.weight[k] * (k + 1 < p.width ? in.win[k] : in.incoming);
  }
  if (p.conv_bias != nullptr) acc += in.bias;
  return round_to<T>(acc * sigmoid(acc));
}

// Shifts the channel's window left by one and appends the incoming value, from the values
// already loaded (stored values are written back as they were read: exact in either type).
template <int kW>
__device__ __forceinline__ void conv_shift(const SsdStepParams& p, int b, int64_t c, const ConvInputs<kW>& in) {
  const int64_t window = b * p.conv_state_batch_stride + c * p.conv_state_c_stride;
  if (p.conv_state_type == ElemType::kBFloat16) {
    auto* s = static_cast<__nv_bfloat16*>(p.conv_state) + window;
#pragma unroll
    for (int k = 0; k + 1 < kW; ++k) {
      if (k + 1 < p.width) s[k] = __float2bfloat16(in.win[k]);
    }
    s[p.width - 1] = __float2bfloat16(in.incoming);
  } else {
    auto* s = static_cast<float*>(p.conv_state) + window;
#pragma unroll
    for (int k = 0; k + 1 < kW; ++k) {
      if (k + 1 < p.width) s[k] = in.win[k];
    }
    s[p.width - 1] = in.incoming;
  }
}

// Channels of the gated norm's passes a thread reads before using any (predicated past the
// group): 4 keeps the kernel at or under 56 registers at N <= 128 (9 blocks per SM: AiM-L's 1024
// blocks of 16 images with guidance in one wave), 8 took it to 64-72.
constexpr int kNormBatch = 4;
// 16-byte vectors of each of y, z and the weight a thread reads before using any, where they
// are aligned: AiM-L's 2048 channels in two passes. Two vectors (one pass) took AiM's
// instantiation from 56 to 64 registers and its bf16-state one from 48 to 72 (7 blocks per SM:
// the 1024 blocks of 16 images in two waves).
constexpr int kNormVecs = 1;

// kV elements of T read past L1 (what other blocks of the launch wrote), as one access.
template <int kV, typename T>
__device__ __forceinline__ vec::Packed<T, kV> load_cg_packed(const T* p) {
  vec::Packed<T, kV> out;
  if constexpr (kV == 1) {
    out.v[0] = __ldcg(p);
  } else {
    static_assert(sizeof(out) == 16, "16-byte vectors");
    const uint4 raw = __ldcg(reinterpret_cast<const uint4*>(p));
    memcpy(static_cast<void*>(&out), &raw, sizeof(out));  // the bits as they are
  }
  return out;
}

// One pass of the gated norm over a group of G channels (y: the group's slice of out; z and
// weight likewise): a thread takes units threadIdx.x + k blockDim.x of kV channels, kBatch units
// at a time with all their loads issued first. kScale false: returns the thread's sum of the
// squares of the gated y (its channels in order); true: writes the normalised, gated y back over
// y, rounded to T (weight unused when false).
template <int kV, int kBatch, bool kScale, typename T, typename W>
__device__ __forceinline__ float gated_norm_pass(T* y, const T* z, const W* weight, int G, const SsdStepParams& p,
                                                 float rstd) {
  const bool gate_first = !p.norm_before_gate;
  float sumsq = 0.f;
  for (int u0 = threadIdx.x; u0 * kV < G; u0 += kBatch * blockDim.x) {
    vec::Packed<T, kV> yv[kBatch]{}, zv[kBatch]{};
    vec::Packed<W, kV> wv[kBatch]{};
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int c = (u0 + j * blockDim.x) * kV;
      if (c < G) {
        yv[j] = load_cg_packed<kV>(y + c);
        if (kScale || gate_first) zv[j] = *reinterpret_cast<const vec::Packed<T, kV>*>(z + c);
        if (kScale) wv[j] = *reinterpret_cast<const vec::Packed<W, kV>*>(weight + c);
      }
    }
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int c = (u0 + j * blockDim.x) * kV;
      if (c >= G) continue;
      float o[kV];
#pragma unroll
      for (int e = 0; e < kV; ++e) {
        float v = vec::to_float(yv[j].v[e]);
        float gate = 0.f;
        if (kScale || gate_first) {
          const float zf = vec::to_float(zv[j].v[e]);
          gate = zf * sigmoid(zf);
        }
        if (gate_first) v *= gate;
        if (kScale) {
          o[e] = v * rstd * vec::to_float(wv[j].v[e]);
          if (!gate_first) o[e] *= gate;
        } else {
          sumsq += v * v;
        }
      }
      if (kScale) vec::store_vec<kV>(y + c, o);
    }
  }
  return sumsq;
}

// Counts a block in on its sequence's arrival counter: one atomic add with release and acquire
// semantics at device scope (PTX `atom.acq_rel.gpu`). It releases what the calling thread did
// before it, and what its block did before a barrier it passed, and in the thread that reads the
// last count it acquires the other blocks' releases. The SASS is one MEMBAR.ALL.GPU, the atomic
// and an L1 invalidation; the fences of the same two patterns (`__threadfence`, fence.sc) gave a
// MEMBAR.SC.GPU and an L1 invalidation on each side. The emulator's memory model has relaxed
// atomics and fences, so there the fences stand in: the same release and acquire patterns.
__device__ __forceinline__ unsigned arrive_acq_rel(unsigned* counter) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
  unsigned old;
  asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;"
               : "=r"(old)
               : "l"(__cvta_generic_to_global(counter))
               : "memory");
  return old;
#else
  __threadfence();
  const unsigned old = atomicAdd(counter, 1u);
  __threadfence();
  return old;
#endif
}

// kRows: state rows a warp updates at a time; kLaneElems: a row's elements per lane (N <= 32
// kLaneElems).
template <typename T, typename S, int kRows, int kLaneElems, int kW>
__global__ void __launch_bounds__(kThreads) ssd_step_kernel(SsdStepParams p) {
  __shared__ float xs[kSsdStepMaxHeaddim];
  __shared__ float zs[kSsdStepMaxHeaddim];
  __shared__ float bc[2 * kSsdStepMaxDstate];
  __shared__ float scratch[kWarps];
  __shared__ unsigned last;
  const int b = blockIdx.y;
  const int splits = gridDim.x / p.nheads;
  const int h = blockIdx.x / splits;
  const int rows = p.headdim / splits, p0 = (blockIdx.x % splits) * rows;
  const int64_t E = int64_t(p.nheads) * p.headdim;
  const int64_t gn = int64_t(p.ngroups) * p.dstate;
  const int g = h / (p.nheads / p.ngroups);
  const int N = p.dstate;
  // The block's rows lie in one norm group (channels h P + p0 .. + rows, aligned to rows): it
  // sums the squares of its gated y itself.
  const bool own_sumsq = p.norm_partials != nullptr && p.norm_group_size % rows == 0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  S* head_state = static_cast<S*>(p.ssm_state) + (int64_t(b) * p.nheads + h) * p.headdim * p.dstate;
  // The block's state rows (contiguous) on their way to L2 while the conv runs, and in a
  // dependent launch already while the previous kernel finishes: nothing between this kernel at
  // the previous token and this launch writes them (the caller's promise with dependent_launch;
  // in a plain launch every earlier kernel has completed). No registers are held for them.
  if (threadIdx.x == 0) {
    prefetch_to_l2(head_state + int64_t(p0) * p.dstate, int64_t(rows) * p.dstate * sizeof(S));
  }
  wait_for_prior_grid();
  allow_dependent_grid();

  // in_proj's dt and the head's A and dt bias, loaded now so that their latency overlaps the
  // conv's.
  float dt = load_as_float(static_cast<const T*>(p.dt) + b * p.dt_batch_stride + h);
  const float A = p.A[h];
  const float dt_bias = p.dt_bias != nullptr ? p.dt_bias[h] : 0.f;
  const T* z = static_cast<const T*>(p.z) + b * p.z_batch_stride;
  if (own_sumsq && !p.norm_before_gate) {
    for (int i = threadIdx.x; i < rows; i += blockDim.x) zs[i] = load_as_float(z + int64_t(h) * p.headdim + p0 + i);
  }

  // The conv of this block's x channels (their windows are this block's alone) and of its
  // group's B and C channels (shared: shifted by the last block). A thread takes two channels at
  // a time, both channels' reads issued before either is used (AiM-L at 16 images: 320 channels
  // on 128 threads, two latencies instead of three).
  const int nconv = rows + 2 * N;
  auto conv_channel = [&](int i) -> int64_t {
    return i < rows       ? int64_t(h) * p.headdim + p0 + i
           : i < rows + N ? E + int64_t(g) * N + (i - rows)
                          : E + gn + int64_t(g) * N + (i - rows - N);
  };
  auto conv_finish = [&](int i, int64_t c, const ConvInputs<kW>& in) {
    const float v = conv_output<T>(p, in);
    if (i < rows) {
      xs[i] = v;
      conv_shift(p, b, c, in);
    } else {
      bc[i - rows] = v;
    }
  };
  for (int i = threadIdx.x; i < nconv; i += 2 * blockDim.x) {
    const int i2 = i + blockDim.x;
    const int64_t c = conv_channel(i), c2 = conv_channel(i2);
    const ConvInputs<kW> in = load_conv_inputs<T, kW>(p, b, c);
    const ConvInputs<kW> in2 = i2 < nconv ? load_conv_inputs<T, kW>(p, b, c2) : ConvInputs<kW>{};
    conv_finish(i, c, in);
    if (i2 < nconv) conv_finish(i2, c2, in2);
  }
  __syncthreads();

  // The state update of rows [p0, p0 + rows): a warp per row, lanes over N (n = lane + 32 k,
  // as ssd_state_update_kernel), kRows rows per warp at a time: every state element of the kRows
  // rows is loaded before any is updated, so that each warp keeps kRows rows of reads in flight
  // (the loads of a row cannot pass the stores of the previous one: the compiler cannot tell
  // that they do not overlap). Per row the same operations and order of the sum as one row at a
  // time; y rounded to T into `out`.
  if (p.dt_bias != nullptr) dt += dt_bias;
  if (p.dt_softplus) dt = dt <= 20.f ? log1pf(expf(dt)) : dt;
  const float decay = expf(dt * A);
  T* out = static_cast<T*>(p.out) + b * E;
  float own_sq = 0.f;  // lane 0: the squares of this warp's gated y (own_sumsq)
  for (int r0 = warp; r0 < rows; r0 += kWarps * kRows) {
    float held[kRows][kLaneElems];
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      const int r = r0 + j * kWarps;
      const S* s = head_state + int64_t(p0 + r) * p.dstate;
#pragma unroll
      for (int k = 0; k < kLaneElems; ++k) {
        const int n = lane + 32 * k;
        held[j][k] = r < rows && n < N ? load_as_float(s + n) : 0.f;
      }
    }
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      const int r = r0 + j * kWarps, row = p0 + r;
      if (r >= rows) break;  // the same for the whole warp
      const float x = xs[r], dtx = dt * x;
      S* s = head_state + int64_t(row) * p.dstate;
      float acc = 0.f;
#pragma unroll
      for (int k = 0; k < kLaneElems; ++k) {
        const int n = lane + 32 * k;
        if (n < N) {
          const float next = held[j][k] * decay + dtx * bc[n];
          store_from_float(s + n, next);
          acc += next * bc[N + n];
        }
      }
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
      if (lane == 0) {
        if (p.D != nullptr) acc += x * (p.d_per_channel ? p.D[h * p.headdim + row] : p.D[h]);
        store_from_float(out + int64_t(h) * p.headdim + row, acc);
        if (own_sumsq) {
          // y as stored, gated as the norm gates it.
          float v = round_to<T>(acc);
          if (!p.norm_before_gate) v *= zs[r] * sigmoid(zs[r]);
          own_sq += v * v;
        }
      }
    }
  }

  if (own_sumsq) {
    const float total = block_sum(own_sq, scratch);  // warps in order
    if (threadIdx.x == 0) p.norm_partials[int64_t(b) * gridDim.x + blockIdx.x] = total;
  }

  // Count in; only the sequence's last block goes on. Thread 0 counts the block in after the
  // block's barrier, so the release covers every thread's y (and the block's sum); in the last
  // block its acquire sees every other block's, and the barrier after it passes them on to the
  // block's threads.
  __syncthreads();
  if (threadIdx.x == 0) last = arrive_acq_rel(p.arrivals + b) == gridDim.x - 1 ? 1u : 0u;
  __syncthreads();
  if (last == 0) return;

  // Every block of the sequence has read the B/C windows: shift them, two channels a thread at
  // a time with both channels' reads issued first (2 G N = 256 channels in AiM: one round trip).
  for (int64_t c = E + threadIdx.x; c < E + 2 * gn; c += 2 * blockDim.x) {
    const int64_t c2 = c + blockDim.x;
    const ConvInputs<kW> in = load_conv_inputs<T, kW, false>(p, b, c);
    const ConvInputs<kW> in2 = c2 < E + 2 * gn ? load_conv_inputs<T, kW, false>(p, b, c2) : ConvInputs<kW>{};
    conv_shift(p, b, c, in);
    if (c2 < E + 2 * gn) conv_shift(p, b, c2, in2);
  }
  // The gated RMSNorm of the row, group by group; y is read past L1 (other blocks wrote it).
  // Where the row's y, z and the norm weight sit on 16-byte boundaries (AiM's in_proj rows), a
  // thread moves 16 bytes of each at a time (AiM-L: 2048 channels, two vectors per thread, a
  // round trip each); otherwise single channels, kNormBatch at a time.
  const int G = p.norm_group_size;
  constexpr int kV = 16 / sizeof(T);
  const bool bf16_weight = p.norm_weight_type == ElemType::kBFloat16;
  const bool vector_norm = G % kV == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0 &&
                           reinterpret_cast<uintptr_t>(z) % 16 == 0 &&
                           reinterpret_cast<uintptr_t>(p.norm_weight) % (kV * (bf16_weight ? 2 : 4)) == 0;
  for (int64_t g0 = 0; g0 < E; g0 += G) {
    float sumsq = 0.f;
    if (own_sumsq) {
      // The group's blocks are k = g0 / rows .. + G / rows (block k starts at channel k rows),
      // written by other blocks: read past L1, one per thread, added by the same tree whichever
      // block is last.
      const float* part = p.norm_partials + int64_t(b) * gridDim.x + g0 / rows;
      for (int k = threadIdx.x; k < G / rows; k += blockDim.x) sumsq += __ldcg(part + k);
    } else {
      sumsq = vector_norm ? gated_norm_pass<kV, kNormVecs, false, T, T>(out + g0, z + g0, nullptr, G, p, 0.f)
                          : gated_norm_pass<1, kNormBatch, false, T, T>(out + g0, z + g0, nullptr, G, p, 0.f);
    }
    const float rstd = rsqrtf(block_sum(sumsq, scratch) / static_cast<float>(G) + p.eps);
    auto scale_pass = [&](const auto* weight) {
      if (vector_norm) {
        gated_norm_pass<kV, kNormVecs, true>(out + g0, z + g0, weight + g0, G, p, rstd);
      } else {
        gated_norm_pass<1, kNormBatch, true>(out + g0, z + g0, weight + g0, G, p, rstd);
      }
    };
    if (bf16_weight) {
      scale_pass(static_cast<const __nv_bfloat16*>(p.norm_weight));
    } else {
      scale_pass(static_cast<const float*>(p.norm_weight));
    }
  }
  // Back to zero for the next step with an atomic, like the increments before it: within a
  // grid the counter is touched only by atomics, which never race with each other.
  if (threadIdx.x == 0) atomicExch(p.arrivals + b, 0u);
}

// Splits of a head: the fewest (a power of two dividing P, at least kMinRows rows each) that
// give two blocks per SM, so that small batches still spread the state over the device.
int splits_for(const SsdStepParams& p) {
  const int sms = current_sm_count();
  int splits = 1;
  while (int64_t(p.batch) * p.nheads * splits < 2 * int64_t(sms) && p.headdim % (2 * splits) == 0 &&
         p.headdim / (2 * splits) >= kMinRows) {
    splits *= 2;
  }
  return splits;
}

template <typename T, typename S, int kLaneElems, int kW>
cudaError_t launch_rows(const SsdStepParams& p, cudaStream_t stream) {
  const int splits = splits_for(p);
  const dim3 grid(p.nheads * splits, p.batch);
  // 1 KiB of state per warp in flight at N = 128 unless asked otherwise.
  const int rows = p.rows_in_flight > 0 ? p.rows_in_flight : sizeof(S) == 2 ? 4 : 2;
  auto* kernel = rows == 1   ? &ssd_step_kernel<T, S, 1, kLaneElems, kW>
                 : rows == 2 ? &ssd_step_kernel<T, S, 2, kLaneElems, kW>
                             : &ssd_step_kernel<T, S, 4, kLaneElems, kW>;
  return launch_maybe_dependent(p.dependent_launch, kernel, grid, dim3(kThreads), 0, stream, p);
}

template <typename T, typename S>
cudaError_t launch(const SsdStepParams& p, cudaStream_t stream) {
  static_assert(kSsdStepMaxDstate == 8 * 32, "a lane holds at most 8 elements of a row");
  // Conv registers sized for 4 taps (every AiM config) or for the most.
  if (p.width <= 4) {
    return p.dstate <= 4 * 32 ? launch_rows<T, S, 4, 4>(p, stream) : launch_rows<T, S, 8, 4>(p, stream);
  }
  return p.dstate <= 4 * 32 ? launch_rows<T, S, 4, kSsdStepMaxWidth>(p, stream)
                            : launch_rows<T, S, 8, kSsdStepMaxWidth>(p, stream);
}

template <typename T>
cudaError_t launch_t(const SsdStepParams& p, cudaStream_t stream) {
  return p.ssm_state_type == ElemType::kBFloat16 ? launch<T, __nv_bfloat16>(p, stream)
                                                 : launch<T, float>(p, stream);
}

}  // namespace

cudaError_t ssd_step_cuda(const SsdStepParams& p, ElemType dtype, cudaStream_t stream) {
  if (p.batch < 0 || p.batch > 65535 || p.nheads < 1 || p.headdim < 1 ||
      p.headdim > kSsdStepMaxHeaddim || p.dstate < 1 || p.dstate > kSsdStepMaxDstate ||
      p.ngroups < 1 || p.nheads % p.ngroups != 0 || p.width < 1 || p.width > kSsdStepMaxWidth ||
      p.norm_group_size < 1 || (int64_t(p.nheads) * p.headdim) % p.norm_group_size != 0 ||
      (p.rows_in_flight != 0 && p.rows_in_flight != 1 && p.rows_in_flight != 2 && p.rows_in_flight != 4) ||
      int64_t(p.nheads) * kSsdStepMaxHeaddim > (int64_t(1) << 31) - 1) {
    return cudaErrorInvalidValue;
  }
  if (p.batch == 0) return cudaSuccess;
  return dtype == ElemType::kBFloat16 ? launch_t<__nv_bfloat16>(p, stream)
                                      : launch_t<float>(p, stream);
}

}  // namespace aim::kernels
