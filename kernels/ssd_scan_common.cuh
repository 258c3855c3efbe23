#pragma once
// Mamba2 SSD scan, chunked, forward and backward: shared pieces (math, tiles, shared memory).
//
// Math, per sequence b and head h (group g = h / (H / G)), positions t, state S [P, N]:
//   delta_t = softplus(dt_t + dt_bias)  (or dt_t + dt_bias),   a_t = delta_t * A   (A < 0)
//   S_t     = exp(a_t) S_{t-1} + delta_t x_t B_t^T,            y_t = S_t C_t + D x_t
// Chunks of T = kSsdChunk = 32 positions; inside chunk c, local i, j, cum_i = sum_{k<=i} a_k,
// L_ij = exp(cum_i - cum_j) for j <= i (0 above; never exp of a positive number), S_prev the
// state entering the chunk:
//   y_i   = sum_j (C_i . B_j) L_ij delta_j x_j  +  exp(cum_i) S_prev C_i  +  D x_i
//   S_out = exp(cum_last) S_prev + sum_j exp(cum_last - cum_j) delta_j x_j B_j^T
// The last chunk is partial: rows past L are zero in shared memory (delta = 0, so the decay of
// those rows is 1 and they add nothing); nothing past L is read or written in the inputs/outputs.
//
// Backward, given dy and dS_out (the gradient of the state leaving the chunk; for the last chunk
// the final state's gradient, or 0), with CB = C B^T, Q = dY X^T, M = CB o L, V = M o Q:
//   dx_j   = delta_j sum_i M_ij dy_i + delta_j exp(cum_last - cum_j) dS_out B_j + D dy_j
//   R_ij   = Q_ij L_ij delta_j
//   dB_j   = sum_i R_ij C_i + delta_j exp(cum_last - cum_j) dS_out^T x_j
//   dC_i   = sum_j R_ij B_j + exp(cum_i) S_prev^T dy_i
//   dS_prev = exp(cum_last) dS_out + sum_i exp(cum_i) dy_i C_i^T          (carried to chunk c-1)
//   ddelta_j (direct) = sum_i V_ij + exp(cum_last - cum_j) x_j . (dS_out B_j)
//   dcum_i = sum_j V_ij delta_j - delta_i sum_k V_ki + exp(cum_i) dy_i . (S_prev C_i)
//            - delta_i exp(cum_last - cum_i) x_i . (dS_out B_i)
//            + [i = T-1] (exp(cum_last) <dS_out, S_prev> + sum_j delta_j exp(cum_last - cum_j) x_j . (dS_out B_j))
//   da_k = sum_{i >= k} dcum_i;  ddelta_k += A da_k;  dA += sum_k delta_k da_k;
//   ddt_k = ddelta_k * softplus'(dt_k + dt_bias) (= sigmoid; 1 without softplus or above 20)
//   dD = sum x dy (per head or per channel); ddt_bias = sum ddt.
// (The last term of dcum is d S_out / d cum_last = S_out, split into its two parts.)
//
// Two implementations. In bf16 with dstate_pad <= 128 and 16-byte aligned tiles (AiM's case) the
// register-state kernels (ssd_scan_{fwd,bwd}_regs_kernel.cuh): a warp per 16 state rows keeps
// S (or dS) in mma accumulator registers, tensor-core products through ldmatrix / mma.sync
// (warp_mma.cuh), the next chunk's tiles copied asynchronously; SsdScanParams::tiles_kernels (or
// a cluster, or other inputs) selects the shared-memory state kernels described next.
//
// Grid: one block of 8 warps per (P tile, head, sequence): blockIdx = (tile, h, b). A block
// owns rows [p0, p0 + p_tile) of the state (p_tile 32 or 64) and walks the chunks in order
// (forward) or in reverse (backward), keeping S (or dS) in shared memory in fp32. State rows are
// independent, so y and dx need nothing from other tiles; sums over P (dB, dC, ddt, dA) and over
// the heads of a group (dB, dC) are written as fp32 partial slices that the caller adds in a
// fixed order (no atomics, deterministic). The backward adds the dB / dC of `cluster_heads`
// consecutive heads of a group before writing them: those blocks form a thread block cluster,
// each leaves its chunk's dB / dC tiles in its shared memory, and after a cluster barrier block
// rank r sums rows r, r + cluster_heads, ... over the cluster's blocks in rank order (distributed
// shared memory), so the partial slices are cluster_heads times fewer. The backward first reruns the state recurrence
// (forward kernel without outputs) to store the state entering each chunk (chunk_states, in the
// input type), then walks the chunks backwards.
//
// Matrix products: shared-memory operands, 16 x 16 output tiles spread over the warps. bf16:
// tensor cores through WMMA (bf16 x bf16 -> fp32, m16n16k16); the operands that are computed
// (the masked decay matrices, the scaled x / dy, S and dS) are rounded to bf16 for the product,
// as the inputs already are; sums, scans, decays, S and dS stay fp32. fp32: plain fp32 FMA with
// the same tiling (each lane 8 outputs of a tile). Row leading dimensions are padded by 16
// bytes against bank conflicts (tile origins stay 32-byte aligned, as WMMA needs).
#include <cuda_bf16.h>
#include <mma.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "device_query.h"
#include "ssd_scan.h"
#include "vec_io.cuh"

namespace aim::kernels::ssd {

constexpr int kChunk = kSsdChunk;
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr unsigned kFullMask = 0xffffffffu;
static_assert(kChunk == 32, "the chunk scans are one warp wide");

using vec::from_float;
using vec::to_float;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

/// Inclusive prefix sum over the 32 lanes.
__device__ __forceinline__ float warp_inclusive_scan(float v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int offset = 1; offset < 32; offset *= 2) {
    const float u = __shfl_up_sync(kFullMask, v, offset);
    if (lane >= offset) v += u;
  }
  return v;
}

/// Inclusive suffix sum over the 32 lanes: lane i gets sum_{k >= i} v_k.
__device__ __forceinline__ float warp_inclusive_suffix_scan(float v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int offset = 1; offset < 32; offset *= 2) {
    const float u = __shfl_down_sync(kFullMask, v, offset);
    if (lane + offset < 32) v += u;
  }
  return v;
}

__device__ __forceinline__ float softplus(float z) { return z <= 20.f ? log1pf(__expf(z)) : z; }
/// d softplus / dz, with the same threshold as softplus (and torch's).
__device__ __forceinline__ float softplus_grad(float z) {
  return z <= 20.f ? 1.f / (1.f + __expf(-z)) : 1.f;
}

// ---------------------------------------------------------------- global -> shared tiles

/// Whether a launch's tiles move in 16-byte vectors: P and N, and for each source the address
/// and every stride, are multiples of 16 bytes (checked by the launch functions).
inline bool ssd_vec16_ok(const SsdScanParams& p, int elem_bytes, bool backward) {
  const int64_t e = 16 / elem_bytes;
  auto fits = [&](const void* ptr, std::initializer_list<int64_t> strides) {
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return false;
    for (const int64_t s : strides) {
      if (s % e != 0) return false;
    }
    return true;
  };
  return p.headdim % e == 0 && p.dstate % e == 0 &&
         fits(p.x, {p.x_batch_stride, p.x_len_stride, p.x_head_stride}) &&
         fits(p.Bm, {p.b_batch_stride, p.b_len_stride, p.b_group_stride}) &&
         fits(p.Cm, {p.c_batch_stride, p.c_len_stride, p.c_group_stride}) &&
         (!backward || (fits(p.dy, {p.dy_batch_stride, p.dy_len_stride, p.dy_head_stride}) &&
                        fits(p.chunk_states, {})));
}

/// A [rows, width] tile of global memory (row stride ld_src elements, unit column stride) copied
/// to shared memory (row stride ld_dst) in 16-byte vectors; rows >= valid_rows and columns >=
/// valid_cols (a multiple of the vector's elements) are zeros. load() issues this thread's first
/// kMax vectors into registers, store() writes them and then moves any further ones, kMax at a
/// time. A chunk loads all its tiles before storing any, so a thread's loads are in flight
/// together: one memory latency per chunk instead of one per few elements. Vector v of the tile
/// is thread v % kThreads's, so a warp's loads are contiguous along a row.
template <typename T, int kMax>
struct TileCopy16 {
  static constexpr int kElems = static_cast<int>(16 / sizeof(T));
  const T* src = nullptr;
  int64_t ld_src = 0;
  int vecs_per_row = 0, total = 0, valid_rows = 0, valid_vecs = 0;
  uint4 v[kMax];

  __device__ __forceinline__ void load(const T* s, int64_t ld, int rows, int width, int vrows, int vcols) {
    src = s;
    ld_src = ld;
    vecs_per_row = width / kElems;
    total = rows * vecs_per_row;
    valid_rows = vrows;
    valid_vecs = vcols / kElems;
    fetch(0);
  }
  __device__ __forceinline__ void store(T* dst, int ld_dst) {
    put(dst, ld_dst, 0);
    for (int base = kMax * kThreads; base < total; base += kMax * kThreads) {
      fetch(base);
      put(dst, ld_dst, base);
    }
  }

 private:
  __device__ __forceinline__ void fetch(int base) {
#pragma unroll
    for (int k = 0; k < kMax; ++k) {
      const int idx = base + k * kThreads + static_cast<int>(threadIdx.x);
      const int r = idx / vecs_per_row, c = idx % vecs_per_row;
      v[k] = make_uint4(0u, 0u, 0u, 0u);
      if (idx < total && r < valid_rows && c < valid_vecs) {
        v[k] = *reinterpret_cast<const uint4*>(src + r * ld_src + c * kElems);
      }
    }
  }
  __device__ __forceinline__ void put(T* dst, int ld_dst, int base) const {
#pragma unroll
    for (int k = 0; k < kMax; ++k) {
      const int idx = base + k * kThreads + static_cast<int>(threadIdx.x);
      if (idx < total) {
        const int r = idx / vecs_per_row, c = idx % vecs_per_row;
        *reinterpret_cast<uint4*>(dst + r * ld_dst + c * kElems) = v[k];
      }
    }
  }
};

// ---------------------------------------------------------------- shared-memory layouts

/// Leading dimension of a row of `width` elements of `elem_bytes` each: padded by 16 bytes.
__host__ __device__ constexpr int padded_ld(int width, int elem_bytes) {
  return width + 16 / elem_bytes;
}

/// Hands out 128-byte aligned offsets from a byte count.
struct SmemCarve {
  size_t bytes = 0;
  __host__ __device__ size_t take(size_t count, int elem_bytes) {
    const size_t at = (bytes + 127) / 128 * 128;
    bytes = at + count * static_cast<size_t>(elem_bytes);
    return at;
  }
};

/// Forward (and the backward's state pass). Tin arrays: xs [T][pt], bs/cs/bw [T][np],
/// st [pt][np] (S rounded for the products), mm [T][T]; fp32: s [pt][np], g [T][T], y [T][pt];
/// vectors delta, cum [T].
struct FwdSmem {
  size_t xs, bs, cs, bw, st, mm, s, g, y, delta, cum, bytes;
  __host__ __device__ FwdSmem(int pt, int np, int tin) {
    SmemCarve c;
    xs = c.take(size_t{kChunk} * padded_ld(pt, tin), tin);
    bs = c.take(size_t{kChunk} * padded_ld(np, tin), tin);
    cs = c.take(size_t{kChunk} * padded_ld(np, tin), tin);
    bw = c.take(size_t{kChunk} * padded_ld(np, tin), tin);
    st = c.take(size_t(pt) * padded_ld(np, tin), tin);
    mm = c.take(size_t{kChunk} * padded_ld(kChunk, tin), tin);
    s = c.take(size_t(pt) * padded_ld(np, 4), 4);
    g = c.take(size_t{kChunk} * padded_ld(kChunk, 4), 4);
    y = c.take(size_t{kChunk} * padded_ld(pt, 4), 4);
    delta = c.take(kChunk, 4);
    cum = c.take(kChunk, 4);
    bytes = c.bytes;
  }
};

/// Backward. Tin arrays: xs, dys, edy [T][pt], bs, cs [T][np], sp, dst [pt][np], md, rm [T][T];
/// fp32: ds [pt][np], cb, q [T][T], zu [T][pt]; vectors [T]: delta, cum, dsig, rowv, colv, off,
/// xu; wsum [kWarps] and one scalar; with a cluster (`cluster`), the chunk's dB and dC tiles
/// dbr, dcr [T][np] fp32 that the cluster's blocks add up (0 bytes without).
struct BwdSmem {
  size_t xs, dys, edy, bs, cs, sp, dst, md, rm, ds, cb, q, zu, delta, cum, dsig, rowv, colv, off,
      xu, wsum, dssp, dbr, dcr, bytes;
  __host__ __device__ BwdSmem(int pt, int np, int tin, bool cluster) {
    SmemCarve c;
    xs = c.take(size_t{kChunk} * padded_ld(pt, tin), tin);
    dys = c.take(size_t{kChunk} * padded_ld(pt, tin), tin);
    edy = c.take(size_t{kChunk} * padded_ld(pt, tin), tin);
    bs = c.take(size_t{kChunk} * padded_ld(np, tin), tin);
    cs = c.take(size_t{kChunk} * padded_ld(np, tin), tin);
    sp = c.take(size_t(pt) * padded_ld(np, tin), tin);
    dst = c.take(size_t(pt) * padded_ld(np, tin), tin);
    md = c.take(size_t{kChunk} * padded_ld(kChunk, tin), tin);
    rm = c.take(size_t{kChunk} * padded_ld(kChunk, tin), tin);
    ds = c.take(size_t(pt) * padded_ld(np, 4), 4);
    cb = c.take(size_t{kChunk} * padded_ld(kChunk, 4), 4);
    q = c.take(size_t{kChunk} * padded_ld(kChunk, 4), 4);
    zu = c.take(size_t{kChunk} * padded_ld(pt, 4), 4);
    delta = c.take(kChunk, 4);
    cum = c.take(kChunk, 4);
    dsig = c.take(kChunk, 4);
    rowv = c.take(kChunk, 4);
    colv = c.take(kChunk, 4);
    off = c.take(kChunk, 4);
    xu = c.take(kChunk, 4);
    wsum = c.take(kWarps, 4);
    dssp = c.take(1, 4);
    dbr = c.take(cluster ? size_t{kChunk} * padded_ld(np, 4) : 0, 4);
    dcr = c.take(cluster ? size_t{kChunk} * padded_ld(np, 4) : 0, 4);
    bytes = c.bytes;
  }
};

template <typename T>
__device__ __forceinline__ T* smem_at(unsigned char* base, size_t offset) {
  return reinterpret_cast<T*>(base + offset);
}

// ---------------------------------------------------------------- 16 x 16 tile products

/// Operand layouts: element (r, c) of a matrix with leading dimension ld.
struct RowMajor {
  using wmma_layout = nvcuda::wmma::row_major;
  __device__ static __forceinline__ int at(int r, int c, int ld) { return r * ld + c; }
};
struct ColMajor {
  using wmma_layout = nvcuda::wmma::col_major;
  __device__ static __forceinline__ int at(int r, int c, int ld) { return r + c * ld; }
};

/// One warp's 16 x 16 fp32 accumulator tile and the products into it. `a` points at A(m0, 0)
/// of an M x K matrix, `b` at B(0, n0) of a K x N one; K is a multiple of 16. Accumulators move
/// to and from row-major fp32 memory (shared or global) with a leading dimension ld.
template <typename Tin>
struct TileOps;

template <>
struct TileOps<__nv_bfloat16> {
  using Acc = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;
  __device__ static __forceinline__ void zero(Acc& acc) { nvcuda::wmma::fill_fragment(acc, 0.f); }
  __device__ static __forceinline__ void load(Acc& acc, const float* p, int ld) {
    nvcuda::wmma::load_matrix_sync(acc, p, ld, nvcuda::wmma::mem_row_major);
  }
  __device__ static __forceinline__ void store(float* p, const Acc& acc, int ld) {
    nvcuda::wmma::store_matrix_sync(p, acc, ld, nvcuda::wmma::mem_row_major);
  }
  __device__ static __forceinline__ void scale(Acc& acc, float s) {
#pragma unroll
    for (int e = 0; e < acc.num_elements; ++e) acc.x[e] *= s;
  }
  template <typename LA, typename LB>
  __device__ static __forceinline__ void mma(Acc& acc, const __nv_bfloat16* a, int lda,
                                             const __nv_bfloat16* b, int ldb, int k) {
    using namespace nvcuda;
    for (int k0 = 0; k0 < k; k0 += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, typename LA::wmma_layout> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, typename LB::wmma_layout> fb;
      wmma::load_matrix_sync(fa, a + LA::at(0, k0, lda), lda);
      wmma::load_matrix_sync(fb, b + LB::at(k0, 0, ldb), ldb);
      wmma::mma_sync(acc, fa, fb, acc);
    }
  }
};

/// fp32: lane l holds column l % 16 of rows 8 * (l / 16) .. + 7.
template <>
struct TileOps<float> {
  struct Acc {
    float v[8];
  };
  __device__ static __forceinline__ int col() { return threadIdx.x & 15; }
  __device__ static __forceinline__ int row0() { return ((threadIdx.x & 31) >> 4) * 8; }
  __device__ static __forceinline__ void zero(Acc& acc) {
#pragma unroll
    for (int e = 0; e < 8; ++e) acc.v[e] = 0.f;
  }
  __device__ static __forceinline__ void load(Acc& acc, const float* p, int ld) {
#pragma unroll
    for (int e = 0; e < 8; ++e) acc.v[e] = p[(row0() + e) * ld + col()];
  }
  __device__ static __forceinline__ void store(float* p, const Acc& acc, int ld) {
#pragma unroll
    for (int e = 0; e < 8; ++e) p[(row0() + e) * ld + col()] = acc.v[e];
  }
  __device__ static __forceinline__ void scale(Acc& acc, float s) {
#pragma unroll
    for (int e = 0; e < 8; ++e) acc.v[e] *= s;
  }
  template <typename LA, typename LB>
  __device__ static __forceinline__ void mma(Acc& acc, const float* a, int lda, const float* b,
                                             int ldb, int k) {
    const int c = col(), r0 = row0();
    for (int kk = 0; kk < k; ++kk) {
      const float bv = b[LB::at(kk, c, ldb)];
#pragma unroll
      for (int e = 0; e < 8; ++e) acc.v[e] = fmaf(a[LA::at(r0 + e, kk, lda)], bv, acc.v[e]);
    }
  }
};

/// Calls f(m0, n0) for the 16 x 16 tiles of an m x n output (multiples of 16), tile t on warp
/// (first_warp + t) % kWarps, so products issued together spread over the warps. Warp-uniform.
template <typename F>
__device__ __forceinline__ void for_each_tile(int m, int n, int first_warp, F&& f) {
  const int warp = threadIdx.x >> 5;
  const int tiles_n = n >> 4, tiles = (m >> 4) * tiles_n;
  for (int t = (warp + kWarps - first_warp) % kWarps; t < tiles; t += kWarps) {
    f((t / tiles_n) << 4, (t % tiles_n) << 4);
  }
}

/// Offsets of the tile origins: A(m0, 0) and B(0, n0).
template <typename L, typename T>
__device__ __forceinline__ const T* a_tile(const T* a, int lda, int m0) {
  return a + L::at(m0, 0, lda);
}
template <typename L, typename T>
__device__ __forceinline__ const T* b_tile(const T* b, int ldb, int n0) {
  return b + L::at(0, n0, ldb);
}

}  // namespace aim::kernels::ssd
