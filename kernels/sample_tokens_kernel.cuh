#pragma once
// Next-token selection, fused: guidance, temperature, top-k, top-p and the draw.
//
// Per row b of [B, V]:
//   g_j = uncond_j + (cond_j - uncond_j) * cfg      fp32, each op rounded (ops::cfg_combine)
//   top_k == 1:  token = argmax_j g_j, the lowest index on ties (torch argmax; NaN wins)
//   otherwise:   x_j = g_j / temperature            fp32 IEEE division (ATen's CPU division)
//                e_j = exp(double(x_j) - double(max x))            fp64, e_max = 1
//                w_j = round(e_j * 2^s), s = 62 - ceil(log2 n)    64-bit fixed point
// with n = V (k under top-k), so every sum of weights is an exact integer below 2^63: sums,
// prefix sums and comparisons are exact and order-free (deterministic run to run), and a
// token whose e_j < 2^-(s+1) (>= 33 nats below the maximum for n <= 32768) has weight 0.
//   Rank order: value descending, ties by ascending vocabulary index.
//   top-k (1 < k < V):  the first k in rank order.
//   top-p (p < 1):      walking the kept set from the end of the rank order, tokens are
//                       removed while the removed weight stays <= R = floor((1 - p) * W)
//                       (W the weight after top-k), never the first in rank order.
//   draw:               h = the 53 bits of keyed_uniform (u = h 2^-53), W the weight after the
//                       filters, t = floor(u W) = (h W) >> 53 exactly; the token is the first
//                       kept one, in rank order under top-k and in vocabulary order otherwise,
//                       whose inclusive prefix weight exceeds t.
//
// Agreement with ops::ref::sample_tokens (on the CPU): the same definition in fp64
// probabilities. The integer weights differ from the reference's probabilities by at most
// n 2^-(s+1) <= 2^-33 (n <= 32768) of the kept mass, plus the reference's own fp64 rounding
// (~n 1e-16); so tokens are equal unless u lies within 1e-9 of a boundary of the inverse CDF
// or the top-p cut's cumulative mass lies within 1e-9 of 1 - top_p. Tied logits: torch's topk
// and sort leave their order unspecified; this kernel breaks ties by the rank order above.
// Logits must be finite (-inf allowed, with one finite logit per row); otherwise the token is
// some index in [0, V). The fast-math build flushes denormal logits to zero.
//
// Grid: one block of kThreads per row. The filtered modes keep x in shared memory (dynamic, V
// floats); the row is read from global memory once. Modes (compile-time):
//   kGreedy  one pass, block argmax.
//   kAll     (top_k 0, top_p 1): block argmax, then the draw in vocabulary order: each warp
//            owns a contiguous segment of 32-wide tiles; pass 1 sums every warp's weight, one
//            thread scans the 16 sums and picks the warp whose segment holds t, pass 2 walks
//            that warp's tiles with warp prefix sums and a ballot.
//   kTopK    radix select of the k-th largest order key (digits of 11, 11 and 10 bits, count
//            histograms), gather of the k candidates (ties at the k-th value: the lowest
//            indices, ranked in vocabulary order), bitonic sort of <= 1024 packed (key, index)
//            keys, then top-p and the draw with one block scan over the sorted weights.
//   kTopP    (top_k 0, p < 1): the same radix walk over weight histograms, from the smallest
//            key up, finds the key T where the removed weight crosses R and how many of the
//            tokens tied at T go; then the vocabulary-order draw over the kept tokens.
// No sort of the row in any mode.
#include <atomic>
#include <cuda_bf16.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "device_query.h"
#include "grid_dependency.cuh"
#include "keyed_uniform.h"
#include "sample_tokens.h"
#include "static_switch.h"
#include "vec_io.cuh"

namespace aim::kernels {

namespace sampling {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 2048;  // widest radix digit: 11 bits
constexpr unsigned kFullMask = 0xffffffffu;
static_assert(kSampleMaxTopK == 2 * kThreads, "two sorted candidates per thread");
static_assert(kBins % kThreads == 0 && (kBins / 2) % kThreads == 0, "whole bins per thread");

enum class Mode { kGreedy, kAll, kTopK, kTopP };

using u64 = unsigned long long;

struct Shared {
  union {
    struct {
      uint32_t count[kBins];
      u64 mass[kBins];
    } hist;                     // radix select
    u64 cand[kSampleMaxTopK];   // top-k: packed (~key << 32 | index), sorted ascending
  } buf;
  u64 scan[kWarps + 1];
  u64 warp_weight[kWarps];
  uint32_t warp_ties[kWarps];
  float arg_v[kWarps + 1];
  int arg_i[kWarps + 1];
  u64 u53, sel_before, draw_offset, target, kept_total;
  uint32_t sel_bin;
  int draw_warp, result, n_keep, n_greater;
};
static_assert(sizeof(Shared) <= kSampleStaticSmemBytes, "kSampleStaticSmemBytes too small");

using vec::to_float;

template <typename T, bool kUncond>
__device__ __forceinline__ float guided_logit(const T* cond, const T* uncond, int j, float cfg) {
  const float c = to_float(cond[j]);
  if constexpr (kUncond) {
    const float u = to_float(uncond[j]);
    return __fadd_rn(u, __fmul_rn(__fsub_rn(c, u), cfg));
  } else {
    return c;
  }
}

// Unsigned key with the order of the floats; -0 and +0 share one key.
__device__ __forceinline__ uint32_t order_key(float v) {
  uint32_t b = __float_as_uint(v);
  if ((b << 1) == 0u) b = 0u;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ u64 fixed_weight(float x, float max_x, double scale) {
  return __double2ull_rn(exp(static_cast<double>(x) - static_cast<double>(max_x)) * scale);
}

// 2^(62 - ceil(log2 n)): n weights of at most this sum below 2^63.
__device__ __forceinline__ double weight_scale(int n) {
  const int log2n = n <= 1 ? 0 : 32 - __clz(n - 1);
  return static_cast<double>(1ull << (62 - log2n));
}

// floor(n 2^-53 * total), exact.
__device__ __forceinline__ u64 draw_target(u64 u53, u64 total) { return __umul64hi(u53 << 11, total); }

// Removable weight of top-p: floor((1 - p) * total), at most total - 1 (the first token stays).
__device__ __forceinline__ u64 top_p_budget(double top_p, u64 total) {
  if (total == 0) return 0;
  const u64 r = __double2ull_rd((1.0 - top_p) * static_cast<double>(total));
  return r < total ? r : total - 1;
}

__device__ __forceinline__ int lane_id() { return threadIdx.x & 31; }
__device__ __forceinline__ unsigned lanes_below(int lane) { return (1u << lane) - 1u; }

__device__ __forceinline__ u64 warp_sum(u64 v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ u64 warp_inclusive_scan(u64 v, int lane) {
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const u64 t = __shfl_up_sync(kFullMask, v, o);
    if (lane >= o) v += t;
  }
  return v;
}

// Exclusive prefix of v over the threads of the block; `total` gets the block's sum.
__device__ __forceinline__ u64 block_exclusive_scan(u64 v, Shared& s, u64& total) {
  const int lane = lane_id(), warp = threadIdx.x >> 5;
  const u64 incl = warp_inclusive_scan(v, lane);
  if (lane == 31) s.scan[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const u64 w = lane < kWarps ? s.scan[lane] : 0ull;
    const u64 wi = warp_inclusive_scan(w, lane);
    if (lane < kWarps) s.scan[lane] = wi - w;
    if (lane == kWarps - 1) s.scan[kWarps] = wi;
  }
  __syncthreads();
  const u64 out = s.scan[warp] + incl - v;
  total = s.scan[kWarps];
  __syncthreads();  // scratch free for the next call
  return out;
}

// (v, i) before (bv, bi) in torch's argmax order: NaN first, larger first, lower index first.
__device__ __forceinline__ bool ranks_before(float v, int i, float bv, int bi) {
  const bool vn = v != v, bn = bv != bv;
  if (vn || bn) return vn && (!bn || i < bi);
  return v > bv || (v == bv && i < bi);
}

// Warp argmax by butterfly; every lane gets the winner in (v, i).
__device__ __forceinline__ void warp_argmax(float& v, int& i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(kFullMask, v, o);
    const int oi = __shfl_xor_sync(kFullMask, i, o);
    if (ranks_before(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
}

// Block argmax; every thread gets the winner in (v, i).
__device__ __forceinline__ void block_argmax(float& v, int& i, Shared& s) {
  const int lane = lane_id(), warp = threadIdx.x >> 5;
  warp_argmax(v, i);
  if (lane == 0) {
    s.arg_v[warp] = v;
    s.arg_i[warp] = i;
  }
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? s.arg_v[lane] : -INFINITY;
    i = lane < kWarps ? s.arg_i[lane] : INT_MAX;
    warp_argmax(v, i);
    if (lane == 0) {
      s.arg_v[kWarps] = v;
      s.arg_i[kWarps] = i;
    }
  }
  __syncthreads();
  v = s.arg_v[kWarps];
  i = s.arg_i[kWarps];
  __syncthreads();
}

// The bin whose range [before, before + h[b]) holds `target` when the bins are summed in
// ascending order (descending with kDescending): s.sel_bin, s.sel_before. target < sum of h.
template <bool kDescending, typename H>
__device__ __forceinline__ void select_bin(const H* h, int nbins, u64 target, Shared& s) {
  const int per = nbins / kThreads;
  const int q0 = threadIdx.x * per;
  u64 local = 0;
  for (int q = q0; q < q0 + per; ++q) local += h[kDescending ? nbins - 1 - q : q];
  if (threadIdx.x == 0) {  // only reached by rows of non-finite logits
    s.sel_bin = 0;
    s.sel_before = 0;
  }
  u64 total;
  u64 before = block_exclusive_scan(local, s, total);
  for (int q = q0; q < q0 + per; ++q) {
    const int b = kDescending ? nbins - 1 - q : q;
    const u64 c = h[b];
    if (before <= target && target < before + c) {
      s.sel_bin = static_cast<uint32_t>(b);
      s.sel_before = before;
    }
    before += c;
  }
  __syncthreads();
}

// Radix levels 0, 1, 2 of the 32-bit order key: digits of 11, 11 and 10 bits, top first.
__device__ __forceinline__ int digit_bits(int level) { return level == 2 ? 10 : 11; }
__device__ __forceinline__ int digit_shift(int level) { return level == 0 ? 21 : level == 1 ? 10 : 0; }
// True when the digits above `level` equal `prefix`.
__device__ __forceinline__ bool in_bucket(uint32_t key, int level, uint32_t prefix) {
  return level == 0 || (key >> (digit_shift(level) + digit_bits(level))) == prefix;
}
__device__ __forceinline__ int digit_of(uint32_t key, int level) {
  return static_cast<int>((key >> digit_shift(level)) & ((1u << digit_bits(level)) - 1u));
}

// Tiles of 32 consecutive elements; warp w owns tiles [first, last).
struct Segment {
  int first, last;
};
__device__ __forceinline__ Segment warp_segment(int vocab, int warp) {
  const int tiles = (vocab + 31) / 32;
  const int per = (tiles + kWarps - 1) / kWarps;
  const int first = min(tiles, warp * per);
  return {first, min(tiles, first + per)};
}

// Kept weight of element j in the vocabulary-order draw. With kCut, tokens below key `cut`
// are removed, and of those at `cut` only the first `keep_ties` in vocabulary order stay.
template <bool kCut>
struct VocabWeights {
  const float* xs;
  int vocab;
  float max_x;
  double scale;
  uint32_t cut;
  uint32_t keep_ties;
  u64 cut_weight;
  bool rank_ties;  // some tokens at `cut` go: ranks needed

  // Weight of tile element (lane) j; `tie_base` is the rank of the tile's first tie.
  __device__ __forceinline__ u64 weight(int j, uint32_t& tie_base, int lane) const {
    const bool in = j < vocab;
    const float x = in ? xs[j] : 0.f;
    if constexpr (!kCut) {
      return in ? fixed_weight(x, max_x, scale) : 0ull;
    } else {
      const uint32_t key = in ? order_key(x) : 0u;
      const bool tie = in && key == cut;
      const unsigned ties = __ballot_sync(kFullMask, tie);
      const uint32_t rank = tie_base + __popc(ties & lanes_below(lane));
      tie_base += __popc(ties);
      if (!in || key < cut) return 0ull;
      if (tie) return (!rank_ties || rank < keep_ties) ? cut_weight : 0ull;
      return fixed_weight(x, max_x, scale);
    }
  }
};

// The vocabulary-order inverse-CDF draw over the weights of `vw`; returns the token, or
// `fallback` when the total weight is 0.
template <bool kCut>
__device__ int draw_vocab_order(const VocabWeights<kCut>& vw, int fallback, Shared& s) {
  const int lane = lane_id(), warp = threadIdx.x >> 5;
  const Segment seg = warp_segment(vw.vocab, warp);
  uint32_t tie_base = 0;
  if (kCut && vw.rank_ties) {
    uint32_t ties = 0;
    for (int t = seg.first; t < seg.last; ++t) {
      const int j = t * 32 + lane;
      const bool tie = j < vw.vocab && order_key(vw.xs[j]) == vw.cut;
      ties += __popc(__ballot_sync(kFullMask, tie));
    }
    if (lane == 0) s.warp_ties[warp] = ties;
    __syncthreads();
    for (int w = 0; w < warp; ++w) tie_base += s.warp_ties[w];
  }
  const uint32_t warp_tie_base = tie_base;
  u64 sum = 0;
  for (int t = seg.first; t < seg.last; ++t) sum += warp_sum(vw.weight(t * 32 + lane, tie_base, lane));
  if (lane == 0) s.warp_weight[warp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    u64 total = 0;
    for (int w = 0; w < kWarps; ++w) total += s.warp_weight[w];
    const u64 target = draw_target(s.u53, total);
    s.draw_warp = -1;
    s.result = fallback;
    s.target = target;
    u64 offset = 0;
    for (int w = 0; w < kWarps; ++w) {
      if (offset + s.warp_weight[w] > target) {
        s.draw_warp = w;
        s.draw_offset = offset;
        break;
      }
      offset += s.warp_weight[w];
    }
  }
  __syncthreads();
  if (warp == s.draw_warp) {
    const u64 target = s.target;
    u64 prefix = s.draw_offset;
    tie_base = warp_tie_base;
    for (int t = seg.first; t < seg.last; ++t) {
      const int j = t * 32 + lane;
      const u64 incl = warp_inclusive_scan(vw.weight(j, tie_base, lane), lane);
      const unsigned hit = __ballot_sync(kFullMask, prefix + incl > target);
      if (hit != 0u) {
        if (lane == __ffs(hit) - 1) s.result = j;
        break;
      }
      prefix += __shfl_sync(kFullMask, incl, 31);
    }
  }
  __syncthreads();
  return s.result;
}

// Loads x = guided / temperature into xs and returns the row's argmax (v, i) to every thread.
template <typename T, bool kUncond>
__device__ __forceinline__ void load_row(const SampleTokensParams& p, const T* cond,
                                         const T* uncond, float* xs, float& max_v, int& max_i,
                                         Shared& s) {
  max_v = -INFINITY;
  max_i = INT_MAX;
  const bool divide = p.temperature != 1.f;  // the reference skips the division at 1
  for (int j = threadIdx.x; j < p.vocab; j += kThreads) {
    float x = guided_logit<T, kUncond>(cond, uncond, j, p.cfg);
    if (divide) x = __fdiv_rn(x, p.temperature);
    xs[j] = x;
    if (ranks_before(x, j, max_v, max_i)) {
      max_v = x;
      max_i = j;
    }
  }
  block_argmax(max_v, max_i, s);  // its barriers publish xs
}

// Greedy: argmax of the guided logits, before temperature as in the reference.
template <typename T, bool kUncond>
__device__ __forceinline__ void greedy_row(const SampleTokensParams& p, const T* cond,
                                           const T* uncond, int row, Shared& s) {
  float v = -INFINITY;
  int i = INT_MAX;
  for (int j = threadIdx.x; j < p.vocab; j += kThreads) {
    const float g = guided_logit<T, kUncond>(cond, uncond, j, p.cfg);
    if (ranks_before(g, j, v, i)) {
      v = g;
      i = j;
    }
  }
  block_argmax(v, i, s);
  if (threadIdx.x == 0) p.tokens[row] = i;
}

// top_k 0, top_p < 1: the cut key T by a radix walk over weight histograms, from the smallest
// key up, then the vocabulary-order draw over the kept tokens.
__device__ __forceinline__ int top_p_row(const SampleTokensParams& p, const float* xs,
                                         float max_v, int max_i, Shared& s) {
  const double scale = weight_scale(p.vocab);
  uint32_t prefix = 0, cut_count = 0;
  u64 below = 0, budget = 0, cut_mass = 0;
  for (int level = 0; level < 3; ++level) {
    const int nbins = 1 << digit_bits(level);
    for (int b = threadIdx.x; b < nbins; b += kThreads) {
      s.buf.hist.count[b] = 0;
      s.buf.hist.mass[b] = 0;
    }
    __syncthreads();
    u64 local = 0;
    for (int j = threadIdx.x; j < p.vocab; j += kThreads) {
      const float x = xs[j];
      const uint32_t key = order_key(x);
      if (!in_bucket(key, level, prefix)) continue;
      const u64 w = fixed_weight(x, max_v, scale);
      if (w == 0) continue;  // weightless tokens lie below any cut
      const int d = digit_of(key, level);
      atomicAdd(&s.buf.hist.count[d], 1u);
      atomicAdd(&s.buf.hist.mass[d], w);
      local += w;
    }
    if (level == 0) {
      u64 total;
      block_exclusive_scan(local, s, total);  // its barriers end the histogram pass
      budget = top_p_budget(p.top_p, total);
    } else {
      __syncthreads();
    }
    // The removed weight crosses the budget inside bin b: below <= budget < below + mass[b].
    select_bin<false>(s.buf.hist.mass, nbins, budget - below, s);
    const uint32_t b = s.sel_bin;
    below += s.sel_before;
    prefix = (prefix << digit_bits(level)) | b;
    cut_count = s.buf.hist.count[b];
    cut_mass = s.buf.hist.mass[b];
    __syncthreads();  // histograms read before the next level clears them
  }
  // cut_count tokens share key `prefix` and weight w; `removed` < cut_count of them go.
  const u64 w = cut_count > 0 ? cut_mass / cut_count : 1;
  u64 removed = w > 0 ? (budget - below) / w : 0;
  if (removed >= cut_count) removed = cut_count > 0 ? cut_count - 1 : 0;
  const VocabWeights<true> vw{xs,     p.vocab,
                              max_v,  scale,
                              prefix, static_cast<uint32_t>(cut_count - removed),
                              w,      removed > 0};
  return draw_vocab_order(vw, max_i, s);
}

// 1 < top_k < V: radix select of the k-th largest key, gather, bitonic sort of the k
// candidates, top-p over the sorted prefix and the draw in rank order.
__device__ __forceinline__ int top_k_row(const SampleTokensParams& p, const float* xs,
                                         Shared& s) {
  const int k = p.top_k;
  // The k-th largest key `kth`; `remaining` (>= 1) of the cut_count tokens at it are taken.
  uint32_t kth = 0, remaining = static_cast<uint32_t>(k), cut_count = 0;
  for (int level = 0; level < 3; ++level) {
    const int nbins = 1 << digit_bits(level);
    for (int b = threadIdx.x; b < nbins; b += kThreads) s.buf.hist.count[b] = 0;
    __syncthreads();
    for (int j = threadIdx.x; j < p.vocab; j += kThreads) {
      const uint32_t key = order_key(xs[j]);
      if (in_bucket(key, level, kth)) atomicAdd(&s.buf.hist.count[digit_of(key, level)], 1u);
    }
    __syncthreads();
    select_bin<true>(s.buf.hist.count, nbins, remaining - 1, s);
    const uint32_t b = s.sel_bin;
    remaining -= static_cast<uint32_t>(s.sel_before);
    kth = (kth << digit_bits(level)) | b;
    cut_count = s.buf.hist.count[b];
    __syncthreads();  // histograms read before they are cleared or overwritten
  }
  const int greater = k - static_cast<int>(remaining);
  const bool all_ties = cut_count == remaining;
  int width = 1;
  while (width < k) width <<= 1;
  if (threadIdx.x == 0) {
    s.n_greater = 0;
    s.n_keep = k;
  }
  for (int i = k + threadIdx.x; i < width; i += kThreads) s.buf.cand[i] = ~0ull;
  __syncthreads();

  // Gather into cand[0, k): tokens above the k-th key (and, when all of them are taken, the
  // tokens at it) in any slot, the sort orders them; otherwise the first `remaining` tokens at
  // the k-th key in vocabulary order go to [greater, k), ranked per warp segment.
  const int lane = lane_id(), warp = threadIdx.x >> 5;
  const Segment seg = warp_segment(p.vocab, warp);
  uint32_t tie_base = 0;
  if (!all_ties) {
    uint32_t ties = 0;
    for (int t = seg.first; t < seg.last; ++t) {
      const int j = t * 32 + lane;
      ties += __popc(__ballot_sync(kFullMask, j < p.vocab && order_key(xs[j]) == kth));
    }
    if (lane == 0) s.warp_ties[warp] = ties;
    __syncthreads();
    for (int w = 0; w < warp; ++w) tie_base += s.warp_ties[w];
  }
  for (int t = seg.first; t < seg.last; ++t) {
    const int j = t * 32 + lane;
    const bool in = j < p.vocab;
    const uint32_t key = in ? order_key(xs[j]) : 0u;
    const bool tie = in && key == kth;
    const unsigned ties = __ballot_sync(kFullMask, tie);
    const uint32_t rank = tie_base + __popc(ties & lanes_below(lane));
    tie_base += __popc(ties);
    const u64 packed = (static_cast<u64>(~key) << 32) | static_cast<uint32_t>(j);
    if ((in && key > kth) || (tie && all_ties)) {
      s.buf.cand[atomicAdd(&s.n_greater, 1)] = packed;
    } else if (tie && rank < remaining) {
      s.buf.cand[greater + static_cast<int>(rank)] = packed;
    }
  }
  __syncthreads();

  // Bitonic sort, ascending: key descending, then index ascending (the rank order).
  for (int size = 2; size <= width; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < width / 2; t += kThreads) {
        const int lo = 2 * t - (t & (stride - 1));
        const int hi = lo + stride;
        const u64 a = s.buf.cand[lo], c = s.buf.cand[hi];
        if ((a > c) == ((lo & size) == 0)) {
          s.buf.cand[lo] = c;
          s.buf.cand[hi] = a;
        }
      }
      __syncthreads();
    }
  }

  // Thread t holds candidates i0 = 2t and i0 + 1: indices, weights and prefix weights, with
  // pre[q + 1] the inclusive prefix of candidate i0 + q.
  const double scale = weight_scale(k);
  const float top = xs[static_cast<uint32_t>(s.buf.cand[0])];
  const int i0 = 2 * static_cast<int>(threadIdx.x);
  int idx[2] = {0, 0};
  u64 wt[2] = {0, 0};
  for (int q = 0; q < 2; ++q) {
    if (i0 + q < k) {
      idx[q] = static_cast<int>(static_cast<uint32_t>(s.buf.cand[i0 + q]));
      wt[q] = fixed_weight(xs[idx[q]], top, scale);
    }
  }
  if (threadIdx.x == 0) s.result = idx[0];  // total weight 0 (non-finite logits): the first
  u64 total;
  const u64 before = block_exclusive_scan(wt[0] + wt[1], s, total);
  const u64 pre[3] = {before, before + wt[0], before + wt[0] + wt[1]};
  if (p.top_p < 1.0) {
    // Candidates from n_keep on have a suffix weight total - pre <= budget: they go.
    const u64 need = total - top_p_budget(p.top_p, total);
    for (int q = 0; q < 2; ++q) {
      if (i0 + q < k && pre[q + 1] >= need && pre[q] < need) s.n_keep = i0 + q + 1;
    }
  }
  __syncthreads();
  const int n_keep = s.n_keep;
  for (int q = 0; q < 2; ++q) {
    if (i0 + q == n_keep - 1) s.kept_total = pre[q + 1];
  }
  __syncthreads();
  const u64 target = draw_target(s.u53, s.kept_total);
  for (int q = 0; q < 2; ++q) {
    if (i0 + q < n_keep && pre[q + 1] > target && pre[q] <= target) s.result = idx[q];
  }
  __syncthreads();
  return s.result;
}

template <typename T, bool kUncond, Mode kMode>
__global__ void __launch_bounds__(kThreads) sample_tokens_kernel(SampleTokensParams p) {
  __shared__ Shared s;
  extern __shared__ float xs[];  // [V] in the filtered modes
  // Everything it reads may come from the previous kernel (the lm_head's logits).
  wait_for_prior_grid();
  allow_dependent_grid();
  const int row = blockIdx.x;
  const T* cond = static_cast<const T*>(p.cond) + static_cast<int64_t>(row) * p.cond_row_stride;
  const T* uncond =
      kUncond ? static_cast<const T*>(p.uncond) + static_cast<int64_t>(row) * p.uncond_row_stride
              : nullptr;
  if (threadIdx.x == 0) {
    u64 bits = 0;
    if (p.sample_ids != nullptr) {
      const int64_t step = p.step_ptr != nullptr ? *p.step_ptr : p.step;
      bits = keyed_uniform_bits(p.seed, p.sample_ids[row], step);
      if (p.uniforms != nullptr) p.uniforms[row] = keyed_uniform_from_bits(bits);
    }
    s.u53 = bits;
  }
  if constexpr (kMode == Mode::kGreedy) {
    greedy_row<T, kUncond>(p, cond, uncond, row, s);
  } else {
    float max_v;
    int max_i;
    load_row<T, kUncond>(p, cond, uncond, xs, max_v, max_i, s);
    int token;
    if constexpr (kMode == Mode::kAll) {
      const VocabWeights<false> vw{xs, p.vocab, max_v, weight_scale(p.vocab), 0u, 0u, 0ull, false};
      token = draw_vocab_order(vw, max_i, s);
    } else if constexpr (kMode == Mode::kTopP) {
      token = top_p_row(p, xs, max_v, max_i, s);
    } else {
      token = top_k_row(p, xs, s);
    }
    if (threadIdx.x == 0) p.tokens[row] = token;
  }
}

template <typename T, bool kUncond, Mode kMode>
cudaError_t launch_mode(const SampleTokensParams& p, cudaStream_t stream) {
  const size_t smem = kMode == Mode::kGreedy ? 0 : static_cast<size_t>(p.vocab) * sizeof(float);
  auto kernel = &sample_tokens_kernel<T, kUncond, kMode>;
  static DynamicSmemOptIn opt_in;
  const cudaError_t err = opt_in.ensure(kernel, smem, sizeof(Shared));
  if (err != cudaSuccess) return err;
  return launch_maybe_dependent(p.dependent_launch, kernel, dim3(p.rows), dim3(kThreads), smem, stream, p);
}

}  // namespace sampling

template <typename T>
cudaError_t sample_tokens_launch(const SampleTokensParams& p, cudaStream_t stream) {
  using namespace sampling;
  return BOOL_SWITCH(p.uncond != nullptr, kUncond, [&] {
    if (p.top_k == 1) return launch_mode<T, kUncond, Mode::kGreedy>(p, stream);
    if (p.top_k > 1 && p.top_k < p.vocab) return launch_mode<T, kUncond, Mode::kTopK>(p, stream);
    if (p.top_p < 1.0) return launch_mode<T, kUncond, Mode::kTopP>(p, stream);
    return launch_mode<T, kUncond, Mode::kAll>(p, stream);
  });
}

}  // namespace aim::kernels
