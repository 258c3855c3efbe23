#pragma once
// Mamba2 SSD scan backward, bf16, with dS in registers (math: ssd_scan_common.cuh; the first
// pass, the states entering each chunk, is the forward kernel's chunk_states).
//
// A block (P tile of 32 or 64 rows, head h, sequence b) has kNW = P tile / 16 warps and walks
// the chunks in reverse. Warp w keeps rows [16 w, 16 w + 16) of dS (the gradient of the state
// leaving the chunk) as fp32 mma accumulators for the whole sequence, as the register forward
// keeps S; the products that contract over the state's columns (U = B dS^T) take dS from those
// registers, and dS = exp(cum_last) dS + (e o dY)^T C accumulates into them (e_i = exp(cum_i)).
// Products that contract over P (dB's X' dS, dC's (e o dY) S_prev, Q = dY X^T) read shared
// memory: dS rounded to bf16 (dst), and the chunk's entering state S_prev. x, dy, B and C come in
// by 16-byte asynchronous copies into one of two buffers a chunk ahead; S_prev into one buffer,
// once its last reader (phase A) is done.
// Per chunk, with two block barriers:
//   wait for the tiles; barrier; start the previous chunk's x, dy, B, C copies (and its dt)
//   A. every warp: delta, cum, softplus'.  Units (16 x 16 blocks (0,0), (1,0), (1,1) of the
//      chunk's [T, T] matrices, over the warps): CB = C B^T, Q = dY X^T -> Md = CB o L o delta,
//      Rm = Q o L o delta (bf16), V = CB o L o Q (fp32), to shared memory.
//      Per warp, its 16 columns p: U = B dS^T (registers) -> x_j . U_j partials and
//      dx_j = delta_j exp(cum_last - cum_j) U_j + D dy_j; Z = C S_prev^T -> dy_i . Z_i partials;
//      <dS, S_prev> partial; dS rounded to dst.  Per warp, its 16-column blocks of N: the
//      state term of dC, (e o dY) S_prev, into registers kept to phase B.
//   barrier; start the previous chunk's S_prev copy
//   B. dx += Md^T dY (written); dB = Rm^T C + X' dst with X'_j = delta_j exp(cum_last - cum_j)
//      x_j, and dC += Rm B, for the warp's column blocks (to the fp32 partial slices); dS
//      updated; warp 0: dcum from V and the partials, its suffix scan da, ddt, dA.
// The partial sums over the warps are added in warp order (deterministic). dD: x . dy summed
// per column in registers over the chunks. No thread block clusters (the default backward).
//
// Pairs (kHalves = 2, the default where a group's heads x P tiles are even): a block holds two
// such warp sets, each for one slice (h, P tile) of the same group: two heads, or a head's two
// P tiles. They share the group's B and C tiles (copied once, by all threads) and the barriers;
// everything else is per half. In phase B each half leaves its chunk's dC and dB rows in a
// shared-memory stash instead of writing them; after the next chunk's first barrier the block
// adds the halves' rows (half 0's + half 1's: one order) and writes them as one partial slice
// in 16-byte vectors, so half as many slices go to memory and come back for the sum over heads.
// A pair's block is 8 warps with 219 KiB of shared memory (AiM: P tile 64, N 128): one per SM,
// the same 8 warps per SM as two single blocks.
#include "ssd_scan_common.cuh"
#include "ssd_scan_fwd_regs_kernel.cuh"  // kRegs* and regs_copy_tile
#include "static_switch.h"
#include "warp_mma.cuh"

namespace aim::kernels {

namespace ssd {

/// Buffers of the register backward for `halves` slices (1 or 2), bf16 unless noted. Two
/// buffers, each with xs, dys [T][pt + 8] per half and the halves' shared bs, cs [T][np + 8]; per
/// half: sp, dst [pt][np + 8]; md, rm [T][T + 8]; fp32: the per-unit row and column sums of V,
/// row_sum / col_sum [3][16]; per-warp partial rows xu, off [kMaxNW][T] and dssp [kMaxNW]. Two
/// halves add: fp32 stash [dC, dB][half][T][np + 8], a chunk's partial sums until they are added.
struct RegsBwdSmem {
  static constexpr int kMaxNW = 4;
  int ldx, ldn;
  size_t xs, dys, half_tiles;  ///< half 0's x / dy tiles of buffer 0; half hv's at + hv * half_tiles
  size_t bs, cs, buf_bytes;    ///< buffer k at + k * buf_bytes
  /// Half 0's; half hv's at + hv * half_bytes.
  size_t sp, dst, md, rm, row_sum, col_sum, xu, off, dssp, half_bytes;
  size_t stash = 0, bytes;
  __host__ __device__ RegsBwdSmem(int pt, int np, int halves) : ldx(pt + 8), ldn(np + 8) {
    SmemCarve c;
    xs = c.take(size_t{kChunk} * ldx, 2);
    dys = c.take(size_t{kChunk} * ldx, 2);
    half_tiles = c.take(0, 1) - xs;
    c.take(size_t(halves - 1) * half_tiles, 1);
    bs = c.take(size_t{kChunk} * ldn, 2);
    cs = c.take(size_t{kChunk} * ldn, 2);
    buf_bytes = c.take(0, 1);
    c.take(buf_bytes, 1);
    sp = c.take(size_t(pt) * ldn, 2);
    dst = c.take(size_t(pt) * ldn, 2);
    md = c.take(size_t{kChunk} * kRegsLdm, 2);
    rm = c.take(size_t{kChunk} * kRegsLdm, 2);
    row_sum = c.take(3 * 16, 4);
    col_sum = c.take(3 * 16, 4);
    xu = c.take(size_t{kMaxNW} * kChunk, 4);
    off = c.take(size_t{kMaxNW} * kChunk, 4);
    dssp = c.take(kMaxNW, 4);
    half_bytes = c.take(0, 1) - sp;
    c.take(size_t(halves - 1) * half_bytes, 1);
    if (halves == 2) stash = c.take(size_t{2} * 2 * kChunk * ldn, 4);
    bytes = c.bytes;
  }
};

/// An A fragment's rows g (registers 0, 2) scaled by s0 and rows g + 8 (registers 1, 3) by s8,
/// rounded back to bf16.
__device__ __forceinline__ void scale_rows(uint32_t (&a)[4], float s0, float s8) {
  namespace wm = warp_mma;
  a[0] = wm::pack_bf16(wm::bf16_lo(a[0]) * s0, wm::bf16_hi(a[0]) * s0);
  a[1] = wm::pack_bf16(wm::bf16_lo(a[1]) * s8, wm::bf16_hi(a[1]) * s8);
  a[2] = wm::pack_bf16(wm::bf16_lo(a[2]) * s0, wm::bf16_hi(a[2]) * s0);
  a[3] = wm::pack_bf16(wm::bf16_lo(a[3]) * s8, wm::bf16_hi(a[3]) * s8);
}

/// Sum over the 4 lanes of a quad (the lanes that share a row g of an mma fragment).
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(kFullMask, v, 1);
  v += __shfl_xor_sync(kFullMask, v, 2);
  return v;
}

/// acc[mb][k] += (A rows scaled) B over K = kNW * 16: A [T, pt] bf16 rows in shared memory with
/// rows 16 mb + g and + 8 scaled by rs[mb][0] and rs[mb][1] (rounded to bf16), B [pt, np] bf16
/// rows, the warp's 16-column blocks n16 = warp + kNW k of N. Each B fragment is loaded once for
/// both row blocks. dC's state term (A = dY, rs = exp(cum), B = S_prev) and dB's (A = x,
/// rs = delta exp(cum_last - cum), B = dS).
template <int kNW, int kNB>
__device__ __forceinline__ void regs_scaled_rows_times(float (&acc)[2][kNB][2][4], const __nv_bfloat16* a, int lda,
                                                       const float (&rs)[2][2], const __nv_bfloat16* b, int ldb,
                                                       int warp, int nk) {
  namespace wm = warp_mma;
#pragma unroll
  for (int ks = 0; ks < kNW; ++ks) {
    uint32_t fa[2][4];
#pragma unroll
    for (int mb = 0; mb < 2; ++mb) {
      wm::ldmatrix_x4(fa[mb], wm::a_rows(a, lda, 16 * mb, 16 * ks));
      scale_rows(fa[mb], rs[mb][0], rs[mb][1]);
    }
#pragma unroll
    for (int k = 0; k < kNB; ++k) {
      const int n16 = warp + kNW * k;
      if (n16 < nk) {
        uint32_t bb[4];
        wm::ldmatrix_x4_trans(bb, wm::b_trans(b, ldb, 16 * ks, 16 * n16));
#pragma unroll
        for (int mb = 0; mb < 2; ++mb) {
          wm::mma_bf16(acc[mb][k][0], fa[mb], bb[0], bb[1]);
          wm::mma_bf16(acc[mb][k][1], fa[mb], bb[2], bb[3]);
        }
      }
    }
  }
}

template <int kNW, int kHalves, bool kSoftplus>
__global__ void __launch_bounds__(kNW * 32 * kHalves, 2 / kHalves) ssd_bwd_regs_kernel(const SsdScanParams p) {
  using T = __nv_bfloat16;
  namespace wm = warp_mma;
  constexpr int kNB = 8 / kNW;  // 16-column blocks of N per warp (N <= 128)
  extern __shared__ __align__(128) unsigned char smem[];

  const int pt = kNW * 16, np = p.dstate_pad, nstate = p.dstate, hdim = p.headdim;
  const RegsBwdSmem lay(pt, np, kHalves);
  const int ldx = lay.ldx, ldn = lay.ldn;
  constexpr int nthreads = kNW * 32 * kHalves, half_threads = kNW * 32;
  const int tid = threadIdx.x, lane = tid & 31;
  const int wid = __shfl_sync(kFullMask, tid >> 5, 0);  // warp-uniform, as the compiler can see
  // The block's half (kHalves == 2) this warp works for, and the warp's index in it.
  const int hv = wid / kNW, warp = wid % kNW, htid = tid - hv * half_threads;
  const int g = lane >> 2, q = lane & 3;
  const int wrow = warp * 16;
  const int nk = np / 16;
  // The half's slice of the sequence's heads x P tiles: (h, tile).
  const int slice = blockIdx.x * kHalves + hv, b = blockIdx.y;
  const int tile = slice % p.p_tiles, h = slice / p.p_tiles;
  const int p0 = tile * pt;
  const int prows = min(pt, hdim - p0);
  const int grp = h / (p.nheads / p.ngroups);
  const float a_h = p.A[h];
  const float bias = p.dt_bias != nullptr ? p.dt_bias[h] : 0.f;
  const int nchunks = p.nchunks, ptot = p.p_tiles * pt;

  const T* x = static_cast<const T*>(p.x) + b * p.x_batch_stride + h * p.x_head_stride + p0;
  const T* dy = static_cast<const T*>(p.dy) + b * p.dy_batch_stride + h * p.dy_head_stride + p0;
  const T* dt = static_cast<const T*>(p.dt) + b * p.dt_batch_stride + h * p.dt_head_stride;
  const T* bm = static_cast<const T*>(p.Bm) + b * p.b_batch_stride + grp * p.b_group_stride;
  const T* cm = static_cast<const T*>(p.Cm) + b * p.c_batch_stride + grp * p.c_group_stride;
  T* dx = static_cast<T*>(p.dx) + b * p.dx_batch_stride + h * p.dx_head_stride + p0;
  const T* states = static_cast<const T*>(p.chunk_states) +
                    (static_cast<int64_t>(b) * p.nheads + h) * nchunks * ptot * np +
                    static_cast<int64_t>(p0) * np;
  // dB / dC partial slices: rows (b, t) of [B, nchunks * T], column block blockIdx.x (the sum of
  // the block's kHalves slices).
  const int64_t part_ld = static_cast<int64_t>(gridDim.x) * np;
  const int64_t part_col = static_cast<int64_t>(blockIdx.x) * np;
  const int64_t head_state = (static_cast<int64_t>(b) * p.nheads + h) * hdim;

  T* sp = smem_at<T>(smem, lay.sp + hv * lay.half_bytes);
  T* dst = smem_at<T>(smem, lay.dst + hv * lay.half_bytes);
  T* md = smem_at<T>(smem, lay.md + hv * lay.half_bytes);
  T* rm = smem_at<T>(smem, lay.rm + hv * lay.half_bytes);
  float* row_sum = smem_at<float>(smem, lay.row_sum + hv * lay.half_bytes);
  float* col_sum = smem_at<float>(smem, lay.col_sum + hv * lay.half_bytes);
  float* xu_part = smem_at<float>(smem, lay.xu + hv * lay.half_bytes);
  float* off_part = smem_at<float>(smem, lay.off + hv * lay.half_bytes);
  float* dssp_part = smem_at<float>(smem, lay.dssp + hv * lay.half_bytes);
  // Two halves: [dC, dB][half] of the stash, [T][ldn] fp32.
  auto stash = [&](int mat, int half) {
    return smem_at<float>(smem, lay.stash) + (mat * 2 + half) * kChunk * ldn;
  };

  // ds[t][e]: dS row wrow + g + 8 (e / 2), column 8 t + 2 q + e % 2.
  float ds[kRegsNTiles][4];
  regs_load_state(ds, p.dfinal_state != nullptr ? p.dfinal_state + (head_state + p0) * nstate : nullptr, nstate,
                  np, prows, wrow);
  // D of this lane's columns wrow + 8 pb + 2 q (+1); x . dy of the same columns, summed.
  float dskip[2][2], dd[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
#pragma unroll
  for (int pb = 0; pb < 2; ++pb) {
    const int pc = p0 + wrow + 8 * pb + 2 * q;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      dskip[pb][e] = p.D == nullptr ? 0.f
                     : p.d_per_channel ? (pc + e < hdim ? p.D[h * hdim + pc + e] : 0.f)
                                       : p.D[h];
    }
  }
  float da_acc = 0.f;  // warp 0

  // x and dy by the half's threads, B and C (the group's, shared by the halves) by all.
  auto issue_tiles = [&](int c, int buf) {
    const int t0 = c * kChunk, clen = min(kChunk, p.len - t0);
    const size_t o = buf * lay.buf_bytes;
    regs_copy_tile(smem_at<T>(smem, lay.xs + hv * lay.half_tiles + o), ldx, x + t0 * p.x_len_stride, p.x_len_stride, pt, clen,
                   prows, htid, half_threads);
    regs_copy_tile(smem_at<T>(smem, lay.dys + hv * lay.half_tiles + o), ldx, dy + t0 * p.dy_len_stride, p.dy_len_stride, pt,
                   clen, prows, htid, half_threads);
    regs_copy_tile(smem_at<T>(smem, lay.bs + o), ldn, bm + t0 * p.b_len_stride, p.b_len_stride, np, clen,
                   nstate, tid, nthreads);
    regs_copy_tile(smem_at<T>(smem, lay.cs + o), ldn, cm + t0 * p.c_len_stride, p.c_len_stride, np, clen,
                   nstate, tid, nthreads);
    wm::cp_async_commit();
  };
  // S_prev of chunk c: [pt][np] rows of chunk_states (all real: the first pass wrote them), by
  // the half's threads.
  auto issue_state = [&](int c) {
    const T* src = states + static_cast<int64_t>(c) * ptot * np;
    const int per_row = np / 8;
    for (int v = htid; v < pt * per_row; v += half_threads) {
      const int r = v / per_row, cv = v % per_row;
      wm::cp_async16(sp + r * ldn + cv * 8, src + r * np + cv * 8, true);
    }
    wm::cp_async_commit();
  };

  // Two halves: the dC and dB rows of the chunk at t0 (all T rows, padded past L) that both
  // halves left in the stash, added (half 0's + half 1's) and written as one partial slice, in
  // 16-byte vectors. Between the barriers that follow and precede the stash's writes.
  // (Offsets recomputed here from the launch's indices: fewer registers live across the loop.)
  auto flush_pairs = [&](int t0) {
    const int per_row = np / 4;
    const float* st = smem_at<float>(smem, lay.stash);
    const int64_t row0 = static_cast<int64_t>(blockIdx.y) * p.nchunks * kChunk + t0;
    const int64_t ld = static_cast<int64_t>(gridDim.x) * np, col = static_cast<int64_t>(blockIdx.x) * np;
    for (int v = threadIdx.x; v < 2 * kChunk * per_row; v += nthreads) {
      const int mat = v / (kChunk * per_row), i = v / per_row % kChunk, n = v % per_row * 4;
      const float4 u0 = *reinterpret_cast<const float4*>(st + (mat * 2 * kChunk + i) * ldn + n);
      const float4 u1 = *reinterpret_cast<const float4*>(st + ((mat * 2 + 1) * kChunk + i) * ldn + n);
      float* rows = mat == 0 ? p.dC_partial : p.dB_partial;
      *reinterpret_cast<float4*>(rows + (row0 + i) * ld + col + n) =
          make_float4(u0.x + u1.x, u0.y + u1.y, u0.z + u1.z, u0.w + u1.w);
    }
  };

  {
    const int c = nchunks - 1;
    issue_tiles(c, 0);
    issue_state(c);
  }
  float dt_next = 0.f;
  {
    const int t0 = (nchunks - 1) * kChunk;
    if (lane < p.len - t0) dt_next = to_float(dt[(t0 + lane) * p.dt_len_stride]);
  }
  for (int c = nchunks - 1; c >= 0; --c) {
    const int t0 = c * kChunk, clen = min(kChunk, p.len - t0);
    const int buf = (nchunks - 1 - c) & 1;
    const float dt_raw = dt_next;
    wm::cp_async_wait<0>();
    __syncthreads();  // B1: this chunk's tiles and S_prev are in; the previous chunk is done
    if (c > 0) {
      issue_tiles(c - 1, buf ^ 1);
      const int tp = t0 - kChunk;
      dt_next = to_float(dt[(tp + lane) * p.dt_len_stride]);  // a full chunk
    }
    if (kHalves == 2 && c + 1 < nchunks) flush_pairs((c + 1) * kChunk);
    const size_t o = buf * lay.buf_bytes;
    const T* xs = smem_at<T>(smem, lay.xs + hv * lay.half_tiles + o);
    const T* dys = smem_at<T>(smem, lay.dys + hv * lay.half_tiles + o);
    const T* bs = smem_at<T>(smem, lay.bs + o);
    const T* cs = smem_at<T>(smem, lay.cs + o);

    // ---- A.
    float delta = 0.f, dsig = 0.f;
    if (lane < clen) {
      const float z = dt_raw + bias;
      delta = kSoftplus ? softplus(z) : z;
      dsig = kSoftplus ? softplus_grad(z) : 1.f;
    }
    const float cum = warp_inclusive_scan(delta * a_h);
    const float cum_last = __shfl_sync(kFullMask, cum, kChunk - 1);
    const float sc = delta * __expf(cum_last - cum);  // lane j: delta_j exp(cum_last - cum_j)
    const float ecum = __expf(cum);                   // lane i: exp(cum_i)

    // Units: CB and Q over a 16 x 16 block, then Md, Rm (bf16), and V's row sums weighted by
    // delta_j and its column sums over the block (fp32). From the last warp down, so that warp 0
    // (which finishes the chunk's decay gradients) has the least to do.
    for (int u = kNW - 1 - warp; u < 3; u += kNW) {
      const int mi = u == 0 ? 0 : 1, nj = u == 2 ? 1 : 0;
      float cb[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
      float qq[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
      for (int kk = 0; kk < nk; ++kk) {
        uint32_t a[4], bb[4];
        wm::ldmatrix_x4(a, wm::a_rows(cs, ldn, 16 * mi, 16 * kk));
        wm::ldmatrix_x4(bb, wm::b_rows(bs, ldn, 16 * kk, 16 * nj));
        wm::mma_bf16(cb[0], a, bb[0], bb[1]);
        wm::mma_bf16(cb[1], a, bb[2], bb[3]);
      }
#pragma unroll
      for (int kk = 0; kk < kNW; ++kk) {  // K = pt
        uint32_t a[4], bb[4];
        wm::ldmatrix_x4(a, wm::a_rows(dys, ldx, 16 * mi, 16 * kk));
        wm::ldmatrix_x4(bb, wm::b_rows(xs, ldx, 16 * kk, 16 * nj));
        wm::mma_bf16(qq[0], a, bb[0], bb[1]);
        wm::mma_bf16(qq[1], a, bb[2], bb[3]);
      }
      const int i0 = 16 * mi + g;
      const float cum_i[2] = {__shfl_sync(kFullMask, cum, i0), __shfl_sync(kFullMask, cum, i0 + 8)};
      float row_part[2] = {0.f, 0.f};           // rows i0, i0 + 8: sum_j V_ij delta_j (this lane's j)
      float col_part[2][2] = {{0.f, 0.f}, {0.f, 0.f}};  // columns j0 + e: sum_i V_ij (rows g, g + 8)
#pragma unroll
      for (int sub = 0; sub < 2; ++sub) {
        const int j0 = 16 * nj + 8 * sub + 2 * q;
        const float cum_j[2] = {__shfl_sync(kFullMask, cum, j0), __shfl_sync(kFullMask, cum, j0 + 1)};
        const float del_j[2] = {__shfl_sync(kFullMask, delta, j0), __shfl_sync(kFullMask, delta, j0 + 1)};
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int i = i0 + 8 * hf;
          float mv[2], rv[2];
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            mv[e] = rv[e] = 0.f;
            if (j0 + e <= i) {
              const float l = __expf(cum_i[hf] - cum_j[e]);
              const float m = cb[sub][2 * hf + e] * l, qv = qq[sub][2 * hf + e];
              mv[e] = m * del_j[e];
              rv[e] = qv * l * del_j[e];
              const float v = m * qv;
              row_part[hf] += v * del_j[e];
              col_part[sub][e] += v;
            }
          }
          *reinterpret_cast<uint32_t*>(md + i * kRegsLdm + j0) = wm::pack_bf16(mv[0], mv[1]);
          *reinterpret_cast<uint32_t*>(rm + i * kRegsLdm + j0) = wm::pack_bf16(rv[0], rv[1]);
        }
      }
      // Rows: the quad's lanes hold the block's 16 columns. Columns: the 8 row groups g.
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const float r = quad_sum(row_part[hf]);
        if (q == 0) row_sum[u * 16 + g + 8 * hf] = r;
      }
#pragma unroll
      for (int sub = 0; sub < 2; ++sub)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float v = col_part[sub][e];
          v += __shfl_xor_sync(kFullMask, v, 4);
          v += __shfl_xor_sync(kFullMask, v, 8);
          v += __shfl_xor_sync(kFullMask, v, 16);
          if (g == 0) col_sum[u * 16 + 8 * sub + 2 * q + e] = v;
        }
    }

    // U = B dS^T for the warp's columns, from dS in registers (rounded to bf16).
    float dxa[2][2][4];  // [j block][column block pb][C layout]
    regs_state_readout(dxa, ds, bs, ldn, nk);
    // x_j . U_j (partial over the warp's columns); dx_j = sc_j U_j + D dy_j; x . dy for dD.
#pragma unroll
    for (int mb = 0; mb < 2; ++mb)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int j = 16 * mb + g + 8 * hf;
        const float scj = __shfl_sync(kFullMask, sc, j);
        float xu = 0.f;
#pragma unroll
        for (int pb = 0; pb < 2; ++pb) {
          const int pc = wrow + 8 * pb + 2 * q;
          const uint32_t xv = *reinterpret_cast<const uint32_t*>(xs + j * ldx + pc);
          const uint32_t gv = *reinterpret_cast<const uint32_t*>(dys + j * ldx + pc);
          const float x0 = wm::bf16_lo(xv), x1 = wm::bf16_hi(xv);
          const float g0 = wm::bf16_lo(gv), g1 = wm::bf16_hi(gv);
          float& u0 = dxa[mb][pb][2 * hf];
          float& u1 = dxa[mb][pb][2 * hf + 1];
          xu += x0 * u0 + x1 * u1;
          dd[pb][0] += x0 * g0;
          dd[pb][1] += x1 * g1;
          u0 = scj * u0 + dskip[pb][0] * g0;
          u1 = scj * u1 + dskip[pb][1] * g1;
        }
        xu = quad_sum(xu);
        if (q == 0) xu_part[warp * kChunk + j] = xu;
      }

    // Z = C S_prev^T for the warp's columns -> dy_i . Z_i partials.
    {
      float z[2][2][4];
#pragma unroll
      for (int mb = 0; mb < 2; ++mb)
#pragma unroll
        for (int pb = 0; pb < 2; ++pb)
#pragma unroll
          for (int e = 0; e < 4; ++e) z[mb][pb][e] = 0.f;
      for (int kk = 0; kk < nk; ++kk) {
        uint32_t bb[4];
        wm::ldmatrix_x4(bb, wm::b_rows<T>(sp, ldn, 16 * kk, wrow));
#pragma unroll
        for (int mb = 0; mb < 2; ++mb) {
          uint32_t a[4];
          wm::ldmatrix_x4(a, wm::a_rows(cs, ldn, 16 * mb, 16 * kk));
          wm::mma_bf16(z[mb][0], a, bb[0], bb[1]);
          wm::mma_bf16(z[mb][1], a, bb[2], bb[3]);
        }
      }
#pragma unroll
      for (int mb = 0; mb < 2; ++mb)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int i = 16 * mb + g + 8 * hf;
          float dz = 0.f;
#pragma unroll
          for (int pb = 0; pb < 2; ++pb) {
            const uint32_t gv = *reinterpret_cast<const uint32_t*>(dys + i * ldx + wrow + 8 * pb + 2 * q);
            dz += wm::bf16_lo(gv) * z[mb][pb][2 * hf] + wm::bf16_hi(gv) * z[mb][pb][2 * hf + 1];
          }
          dz = quad_sum(dz);
          if (q == 0) off_part[warp * kChunk + i] = dz;
        }
    }

    // <dS, S_prev> (partial); dS rounded for dB's state term.
    {
      float part = 0.f;
#pragma unroll
      for (int t = 0; t < kRegsNTiles; ++t) {
        if (t < np / 8) {
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            const int off = (wrow + g + 8 * hf) * ldn + 8 * t + 2 * q;
            const uint32_t sv = *reinterpret_cast<const uint32_t*>(sp + off);
            part += ds[t][2 * hf] * wm::bf16_lo(sv) + ds[t][2 * hf + 1] * wm::bf16_hi(sv);
            *reinterpret_cast<uint32_t*>(dst + off) = wm::pack_bf16(ds[t][2 * hf], ds[t][2 * hf + 1]);
          }
        }
      }
      part = warp_sum(part);
      if (lane == 0) dssp_part[warp] = part;
    }

    // dC's state term (e o dY) S_prev for the warp's column blocks n16 = warp + kNW k.
    float dc[2][kNB][2][4];
#pragma unroll
    for (int mb = 0; mb < 2; ++mb)
#pragma unroll
      for (int k = 0; k < kNB; ++k)
#pragma unroll
        for (int sub = 0; sub < 2; ++sub)
#pragma unroll
          for (int e = 0; e < 4; ++e) dc[mb][k][sub][e] = 0.f;
    // Row scales of the A fragments: e_i for rows 16 mb + g and + 8.
    float erow[2][2];
#pragma unroll
    for (int mb = 0; mb < 2; ++mb) {
      erow[mb][0] = __shfl_sync(kFullMask, ecum, 16 * mb + g);
      erow[mb][1] = __shfl_sync(kFullMask, ecum, 16 * mb + g + 8);
    }
    regs_scaled_rows_times<kNW, kNB>(dc, dys, ldx, erow, sp, ldn, warp, nk);

    __syncthreads();  // B2: Md, Rm, V, dst and the partials are written; S_prev is read
    if (c > 0) issue_state(c - 1);

    // ---- B.
    // dx += Md^T dY (Md is zero above the diagonal: output block j needs i blocks >= j's).
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {
      uint32_t bg[4];
      wm::ldmatrix_x4_trans(bg, wm::b_trans(dys, ldx, 16 * ks, wrow));
#pragma unroll
      for (int mb = 0; mb <= ks; ++mb) {
        uint32_t a[4];
        wm::ldmatrix_x4_trans(a, wm::a_trans<T>(md, kRegsLdm, 16 * mb, 16 * ks));
        wm::mma_bf16(dxa[mb][0], a, bg[0], bg[1]);
        wm::mma_bf16(dxa[mb][1], a, bg[2], bg[3]);
      }
    }
#pragma unroll
    for (int mb = 0; mb < 2; ++mb)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int j = 16 * mb + g + 8 * hf;
#pragma unroll
        for (int pb = 0; pb < 2; ++pb) {
          const int pc = wrow + 8 * pb + 2 * q;
          if (j < clen && pc < prows) {
            *reinterpret_cast<uint32_t*>(dx + (t0 + j) * p.dx_len_stride + pc) =
                wm::pack_bf16(dxa[mb][pb][2 * hf], dxa[mb][pb][2 * hf + 1]);
          }
        }
      }

    // The chunk's dC and dB rows: the partial slices, or with two halves the stash (added and
    // written after the next barrier).
    const int64_t out_ld = kHalves == 2 ? ldn : part_ld;
    float* dc_rows = kHalves == 2 ? stash(0, hv) : p.dC_partial + (b * int64_t{nchunks} * kChunk + t0) * part_ld + part_col;
    float* db_rows = kHalves == 2 ? stash(1, hv) : p.dB_partial + (b * int64_t{nchunks} * kChunk + t0) * part_ld + part_col;
    // dC += Rm B (Rm is zero above the diagonal: output block i needs j blocks <= i's); written.
#pragma unroll
    for (int mb = 0; mb < 2; ++mb) {
#pragma unroll
      for (int ks = 0; ks <= mb; ++ks) {
        uint32_t a[4];
        wm::ldmatrix_x4(a, wm::a_rows<T>(rm, kRegsLdm, 16 * mb, 16 * ks));
#pragma unroll
        for (int k = 0; k < kNB; ++k) {
          const int n16 = warp + kNW * k;
          if (n16 < nk) {
            uint32_t bb[4];
            wm::ldmatrix_x4_trans(bb, wm::b_trans(bs, ldn, 16 * ks, 16 * n16));
            wm::mma_bf16(dc[mb][k][0], a, bb[0], bb[1]);
            wm::mma_bf16(dc[mb][k][1], a, bb[2], bb[3]);
          }
        }
      }
    }
    auto store_rows = [&](float* rows, float (&acc)[2][kNB][2][4]) {
#pragma unroll
      for (int mb = 0; mb < 2; ++mb)
#pragma unroll
        for (int k = 0; k < kNB; ++k) {
          const int n16 = warp + kNW * k;
          if (n16 < nk) {
#pragma unroll
            for (int sub = 0; sub < 2; ++sub)
#pragma unroll
              for (int hf = 0; hf < 2; ++hf) {
                const int i = 16 * mb + g + 8 * hf, n = 16 * n16 + 8 * sub + 2 * q;
                *reinterpret_cast<float2*>(rows + i * out_ld + n) =
                    make_float2(acc[mb][k][sub][2 * hf], acc[mb][k][sub][2 * hf + 1]);
              }
          }
        }
    };
    store_rows(dc_rows, dc);

    // dB = Rm^T C + X' dst, X'_j = sc_j x_j; written. (Reuses dc's registers.) Each B fragment
    // is loaded once for the row blocks that use it.
    {
      float (&db)[2][kNB][2][4] = dc;
#pragma unroll
      for (int mb = 0; mb < 2; ++mb)
#pragma unroll
        for (int k = 0; k < kNB; ++k)
#pragma unroll
          for (int sub = 0; sub < 2; ++sub)
#pragma unroll
            for (int e = 0; e < 4; ++e) db[mb][k][sub][e] = 0.f;
      // Rm^T C: Rm is zero above the diagonal, so output block j (mb) needs i blocks ks >= mb.
#pragma unroll
      for (int ks = 0; ks < 2; ++ks) {
        uint32_t a[2][4];
#pragma unroll
        for (int mb = 0; mb <= ks; ++mb) wm::ldmatrix_x4_trans(a[mb], wm::a_trans<T>(rm, kRegsLdm, 16 * mb, 16 * ks));
#pragma unroll
        for (int k = 0; k < kNB; ++k) {
          const int n16 = warp + kNW * k;
          if (n16 < nk) {
            uint32_t bb[4];
            wm::ldmatrix_x4_trans(bb, wm::b_trans(cs, ldn, 16 * ks, 16 * n16));
#pragma unroll
            for (int mb = 0; mb <= ks; ++mb) {
              wm::mma_bf16(db[mb][k][0], a[mb], bb[0], bb[1]);
              wm::mma_bf16(db[mb][k][1], a[mb], bb[2], bb[3]);
            }
          }
        }
      }
      float srow[2][2];
#pragma unroll
      for (int mb = 0; mb < 2; ++mb) {
        srow[mb][0] = __shfl_sync(kFullMask, sc, 16 * mb + g);
        srow[mb][1] = __shfl_sync(kFullMask, sc, 16 * mb + g + 8);
      }
      regs_scaled_rows_times<kNW, kNB>(db, xs, ldx, srow, dst, ldn, warp, nk);
      store_rows(db_rows, db);
    }

    // dS = exp(cum_last) dS + sum_i (e_i dy_i)^T C_i.
    regs_state_update(ds, __expf(cum_last), ecum, dys, ldx, wrow, cs, ldn, nk);

    // Warp 0: the decay gradients of the chunk.
    if (warp == 0) {
      const int i = lane;
      // Unit u covers rows 16 mi .. and columns 16 nj ..: (0,0), (1,0), (1,1). Rows 0-15 are in
      // unit 0, rows 16-31 in units 1 then 2; columns 0-15 in units 0 then 1, 16-31 in unit 2.
      const float rowv = i < 16 ? row_sum[i] : row_sum[16 + (i - 16)] + row_sum[32 + (i - 16)];
      const float colv = i < 16 ? col_sum[i] + col_sum[16 + i] : col_sum[32 + (i - 16)];
      float xu = 0.f, offv = 0.f, dssp = 0.f;
#pragma unroll
      for (int w = 0; w < kNW; ++w) {
        xu += xu_part[w * kChunk + i];
        offv += off_part[w * kChunk + i];
        dssp += dssp_part[w];
      }
      const float e = __expf(cum_last - cum);
      const float sterm = delta * e * xu;
      float dcum = rowv - delta * colv + ecum * offv - sterm;
      const float sterm_sum = warp_sum(sterm);
      if (i == kChunk - 1) dcum += __expf(cum_last) * dssp + sterm_sum;
      const float da = warp_inclusive_suffix_scan(dcum);
      const float ddelta = colv + e * xu + a_h * da;
      if (i < clen) {
        p.ddt_partial[((static_cast<int64_t>(tile) * p.batch + b) * p.len + t0 + i) * p.nheads + h] = ddelta * dsig;
      }
      da_acc += delta * da;
    }
  }

  if (kHalves == 2) {
    __syncthreads();  // the first chunk's stash is written
    flush_pairs(0);
  }
  if (p.dD_partial != nullptr) {
    // x . dy per column: the 8 row groups g of the warp hold partial sums of the same columns.
#pragma unroll
    for (int pb = 0; pb < 2; ++pb)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float v = dd[pb][e];
        v += __shfl_xor_sync(kFullMask, v, 4);
        v += __shfl_xor_sync(kFullMask, v, 8);
        v += __shfl_xor_sync(kFullMask, v, 16);
        dd[pb][e] = v;
      }
    if (g == 0) {
#pragma unroll
      for (int pb = 0; pb < 2; ++pb) {
        const int pc = wrow + 8 * pb + 2 * q;
        float* out = p.dD_partial + (static_cast<int64_t>(b) * p.nheads + h) * ptot + p0 + pc;
        out[0] = dd[pb][0];
        out[1] = dd[pb][1];
      }
    }
  }
  if (warp == 0) {
    const float total = warp_sum(da_acc);
    if (lane == 0) p.dA_partial[(static_cast<int64_t>(tile) * p.batch + b) * p.nheads + h] = total;
  }
}

/// Whether the register backward takes a launch (bf16 is the caller's): no cluster, N padded to
/// at most kRegsMaxN, P tile 32 or 64, tiles that move in 16-byte vectors, dx on 4-byte
/// boundaries with even strides.
inline bool regs_bwd_ok(const SsdScanParams& p) {
  if (p.element_loads || p.tiles_kernels || p.cluster_heads != 1 || p.dstate_pad > kRegsMaxN ||
      (p.p_tile != 32 && p.p_tile != 64)) {
    return false;
  }
  if (!ssd_vec16_ok(p, 2, /*backward=*/true)) return false;
  if (reinterpret_cast<uintptr_t>(p.dx) % 4 != 0 || p.dx_batch_stride % 2 != 0 || p.dx_len_stride % 2 != 0 ||
      p.dx_head_stride % 2 != 0) {
    return false;
  }
  return true;
}

/// Whether the register backward can add pairs of slices in a block: a group's heads x P tiles
/// pair up (a pair never spans two groups), and the pair's shared memory fits `smem_limit`.
inline bool regs_bwd_pairs_fit(const SsdScanParams& p, int smem_limit) {
  if (p.ngroups < 1 || p.nheads % p.ngroups != 0 || (p.nheads / p.ngroups * p.p_tiles) % 2 != 0) return false;
  return RegsBwdSmem(p.p_tile, p.dstate_pad, 2).bytes <= static_cast<size_t>(smem_limit);
}

}  // namespace ssd

/// The second pass of the backward on the register kernel (the caller ran the first): a block
/// per p.slice_pairs slices (h, P tile) of a sequence.
inline cudaError_t ssd_bwd_regs_launch(const SsdScanParams& p, cudaStream_t stream) {
  const int halves = p.slice_pairs;
  const ssd::RegsBwdSmem lay(p.p_tile, p.dstate_pad, halves);
  const dim3 grid(static_cast<unsigned>(p.nheads * p.p_tiles / halves), static_cast<unsigned>(p.batch));
  cudaError_t err = cudaSuccess;
  BOOL_SWITCH(p.dt_softplus, kSoftplus, [&] {
    BOOL_SWITCH(p.p_tile == 64, kWide, [&] {
      BOOL_SWITCH(halves == 2, kPairs, [&] {
        constexpr int kNW = kWide ? 4 : 2, kHalves = kPairs ? 2 : 1;
        auto kernel = &ssd::ssd_bwd_regs_kernel<kNW, kHalves, kSoftplus>;
        static DynamicSmemOptIn opt_in;
        err = opt_in.ensure(kernel, lay.bytes);
        if (err != cudaSuccess) return;
        kernel<<<grid, kNW * 32 * kHalves, lay.bytes, stream>>>(p);
        err = cudaGetLastError();
      });
    });
  });
  return err;
}

}  // namespace aim::kernels
