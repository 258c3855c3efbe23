#pragma once
// Mamba2 SSD scan forward, bf16, with the state in registers (math: ssd_scan_common.cuh).
//
// A block (P tile of 32 or 64 rows, head h, sequence b) has one warp per 16 state rows. Each
// warp keeps its rows of S [16, N] (N <= 128) as fp32 mma accumulators for the whole sequence,
// so the state never goes through shared memory: the chunk's read-out C S^T takes S, rounded to
// bf16, straight from those registers as the B operand of the tensor-core product (an
// accumulator tile of S is, element for element, a B fragment of S^T), and the state update
// S = exp(cum_last) S + (x o w)^T B accumulates into them. The chunk's x, B and C tiles come in
// with 16-byte asynchronous copies into one of two buffers while the previous chunk computes.
// Per chunk, with two block barriers:
//   wait for this chunk's tiles; barrier; start the next chunk's copies (and its dt)
//   every warp: delta and cum of the chunk (a warp scan, redundantly per warp)
//   G = C B^T's three nonzero 16 x 16 blocks over the warps, masked and decayed into Mm (bf16,
//   shared memory); Y = exp(cum_i) C S^T for the warp's columns; S updated
//   barrier; Y += Mm x; y = Y + D x written from the accumulators
// kChunkStates (the backward's first pass) stores S, rounded to bf16, as each chunk starts
// instead of computing y, as the shared-memory kernel does; the same layout.
//
// Against ssd_scan_fwd_kernel.cuh (the state in shared memory, WMMA products through shared
// memory, five barriers per chunk) the differences in rounding: the state update rounds
// x_j * w_j to bf16 for the product where that kernel rounds B_j * w_j (w_j = exp(cum_last -
// cum_j) delta_j); everything else rounds the same operands.
#include "ssd_scan_common.cuh"
#include "static_switch.h"
#include "warp_mma.cuh"

namespace aim::kernels {

namespace ssd {

/// Largest padded d_state the register forward takes (its state rows are N / 2 registers a lane).
constexpr int kRegsMaxN = 128;
constexpr int kRegsNTiles = kRegsMaxN / 8;  ///< n8 accumulator tiles of a warp's 16 rows
constexpr int kRegsLdm = kChunk + 8;        ///< row stride of Mm (elements)

/// Two buffers of the chunk's tiles, bf16: xs [T][pt + 8], bs and cs [T][np + 8]; Mm [T][T + 8].
/// Row strides are odd multiples of 16 bytes, so the 8 rows of an ldmatrix hit distinct banks.
struct RegsFwdSmem {
  int ldx, ldn;
  size_t xs, bs, cs;  ///< buffer 0; buffer k at + k * buf_bytes
  size_t buf_bytes, mm, bytes;
  __host__ __device__ RegsFwdSmem(int pt, int np) : ldx(pt + 8), ldn(np + 8) {
    SmemCarve c;
    xs = c.take(size_t{kChunk} * ldx, 2);
    bs = c.take(size_t{kChunk} * ldn, 2);
    cs = c.take(size_t{kChunk} * ldn, 2);
    buf_bytes = c.take(0, 1);  // 128-byte aligned end of buffer 0
    c.take(buf_bytes, 1);
    mm = c.take(size_t{kChunk} * kRegsLdm, 2);
    bytes = c.bytes;
  }
};

/// Issues the 16-byte copies of a [T, width] bf16 tile (rows < rows_valid, columns < cols_valid
/// real; the rest zeros) into shared memory; `nthreads` threads, vector v on the thread whose
/// index among them, `thread`, is v % nthreads.
__device__ __forceinline__ void regs_copy_tile(__nv_bfloat16* dst, int ld_dst, const __nv_bfloat16* src,
                                               int64_t ld_src, int width, int rows_valid, int cols_valid,
                                               int thread, int nthreads) {
  const int per_row = width / 8;
  // Vector v = thread + k * nthreads is (row, col) = divmod(v, per_row): stepped, not divided.
  int r = thread / per_row, cv = thread % per_row;
  const int dr = nthreads / per_row, dc = nthreads % per_row;
  for (int v = thread; v < kChunk * per_row; v += nthreads) {
    const bool valid = r < rows_valid && cv * 8 < cols_valid;
    warp_mma::cp_async16(dst + r * ld_dst + cv * 8, valid ? src + r * ld_src + cv * 8 : src, valid);
    cv += dc;
    r += dr;
    if (cv >= per_row) {
      cv -= per_row;
      ++r;
    }
  }
}

/// The warp's 16 rows of an fp32 state [.., N] (rows from `rows`, the tile's first; null: zeros)
/// into the C layout: st[t][e] is row wrow + g + 8 (e / 2), column 8 t + 2 q + e % 2; zeros past
/// prows rows, N columns and the padded width np. Scalar loads: the caller's tensor need not sit
/// on an 8-byte boundary.
__device__ __forceinline__ void regs_load_state(float (&st)[kRegsNTiles][4], const float* rows, int nstate,
                                                int np, int prows, int wrow) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int t = 0; t < kRegsNTiles; ++t) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int row = wrow + g + 8 * hf, col = 8 * t + 2 * q;
      float v0 = 0.f, v1 = 0.f;
      if (rows != nullptr && t < np / 8 && row < prows && col < nstate) {
        const float* src = rows + static_cast<int64_t>(row) * nstate + col;
        v0 = src[0];
        v1 = src[1];
      }
      st[t][2 * hf] = v0;
      st[t][2 * hf + 1] = v1;
    }
  }
}

/// out = A St^T for the warp's 16 state rows: A [T, np] bf16 rows in shared memory (row stride
/// ld), St the warp's state rows in the C layout of `st` rounded to bf16 (an accumulator tile of
/// the state is, element for element, a B fragment of its transpose). out[mb][pb]: rows 16 mb..,
/// columns (state rows) 8 pb.. of the warp's 16. The forward's C S^T and the backward's B dS^T.
__device__ __forceinline__ void regs_state_readout(float (&out)[2][2][4], const float (&st)[kRegsNTiles][4],
                                                   const __nv_bfloat16* a, int ld, int nk) {
  namespace wm = warp_mma;
#pragma unroll
  for (int mb = 0; mb < 2; ++mb)
#pragma unroll
    for (int pb = 0; pb < 2; ++pb)
#pragma unroll
      for (int e = 0; e < 4; ++e) out[mb][pb][e] = 0.f;
#pragma unroll
  for (int kk = 0; kk < kRegsNTiles / 2; ++kk) {
    if (kk < nk) {
      uint32_t bst[2][2];
#pragma unroll
      for (int pb = 0; pb < 2; ++pb) {
        bst[pb][0] = wm::pack_bf16(st[2 * kk][2 * pb], st[2 * kk][2 * pb + 1]);
        bst[pb][1] = wm::pack_bf16(st[2 * kk + 1][2 * pb], st[2 * kk + 1][2 * pb + 1]);
      }
#pragma unroll
      for (int mb = 0; mb < 2; ++mb) {
        uint32_t fa[4];
        wm::ldmatrix_x4(fa, wm::a_rows(a, ld, 16 * mb, 16 * kk));
        wm::mma_bf16(out[mb][0], fa, bst[0][0], bst[0][1]);
        wm::mma_bf16(out[mb][1], fa, bst[1][0], bst[1][1]);
      }
    }
  }
}

/// st = decay st + sum_k (w_k v_k)^T u_k over the chunk's T positions k: v [T, pt] (the warp's
/// columns wrow..), u [T, np], both bf16 in shared memory; w_k on lane k, applied to v and
/// rounded to bf16 for the product. The forward's S update (v = x, u = B) and the backward's dS
/// update (v = dY, u = C).
__device__ __forceinline__ void regs_state_update(float (&st)[kRegsNTiles][4], float decay, float w,
                                                  const __nv_bfloat16* v, int ldv, int wrow,
                                                  const __nv_bfloat16* u, int ldu, int nk) {
  namespace wm = warp_mma;
  const int q = threadIdx.x & 3;
#pragma unroll
  for (int t = 0; t < kRegsNTiles; ++t)
#pragma unroll
    for (int e = 0; e < 4; ++e) st[t][e] *= decay;
#pragma unroll
  for (int ks = 0; ks < 2; ++ks) {
    uint32_t a[4];
    wm::ldmatrix_x4_trans(a, wm::a_trans(v, ldv, wrow, 16 * ks));
    const int k0 = 16 * ks + 2 * q;
    const float w0 = __shfl_sync(kFullMask, w, k0), w1 = __shfl_sync(kFullMask, w, k0 + 1);
    const float w8 = __shfl_sync(kFullMask, w, k0 + 8), w9 = __shfl_sync(kFullMask, w, k0 + 9);
    a[0] = wm::pack_bf16(wm::bf16_lo(a[0]) * w0, wm::bf16_hi(a[0]) * w1);
    a[1] = wm::pack_bf16(wm::bf16_lo(a[1]) * w0, wm::bf16_hi(a[1]) * w1);
    a[2] = wm::pack_bf16(wm::bf16_lo(a[2]) * w8, wm::bf16_hi(a[2]) * w9);
    a[3] = wm::pack_bf16(wm::bf16_lo(a[3]) * w8, wm::bf16_hi(a[3]) * w9);
#pragma unroll
    for (int t2 = 0; t2 < kRegsNTiles / 2; ++t2) {
      if (t2 < nk) {
        uint32_t bb[4];
        wm::ldmatrix_x4_trans(bb, wm::b_trans(u, ldu, 16 * ks, 16 * t2));
        wm::mma_bf16(st[2 * t2], a, bb[0], bb[1]);
        wm::mma_bf16(st[2 * t2 + 1], a, bb[2], bb[3]);
      }
    }
  }
}

template <bool kOutputs, bool kChunkStates, bool kSoftplus>
__global__ void __launch_bounds__(128, 4) ssd_fwd_regs_kernel(const SsdScanParams p) {
  using T = __nv_bfloat16;
  namespace wm = warp_mma;
  extern __shared__ __align__(128) unsigned char smem[];

  const int pt = p.p_tile, np = p.dstate_pad, nstate = p.dstate, hdim = p.headdim;
  const RegsFwdSmem lay(pt, np);
  const int ldx = lay.ldx, ldn = lay.ldn;
  const int nthreads = pt * 2, nwarps = pt / 16;
  const int tid = threadIdx.x, lane = tid & 31;
  const int warp = __shfl_sync(kFullMask, tid >> 5, 0);  // warp-uniform, as the compiler can see
  const int g = lane >> 2, q = lane & 3;
  const int wrow = warp * 16;  // the warp's first state row in the tile
  const int nk = np / 16;      // 16-column steps of N
  const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int p0 = tile * pt;
  const int prows = min(pt, hdim - p0);
  const int grp = h / (p.nheads / p.ngroups);
  const float a_h = p.A[h];
  const float bias = p.dt_bias != nullptr ? p.dt_bias[h] : 0.f;

  const T* x = static_cast<const T*>(p.x) + b * p.x_batch_stride + h * p.x_head_stride + p0;
  const T* dt = static_cast<const T*>(p.dt) + b * p.dt_batch_stride + h * p.dt_head_stride;
  const T* bm = static_cast<const T*>(p.Bm) + b * p.b_batch_stride + grp * p.b_group_stride;
  const T* cm = static_cast<const T*>(p.Cm) + b * p.c_batch_stride + grp * p.c_group_stride;
  const int64_t head_state = (static_cast<int64_t>(b) * p.nheads + h) * hdim;  // row of [B*H*P, N]

  // s[t][e]: state row wrow + g + 8 (e / 2), column 8 t + 2 q + e % 2 (the mma C layout).
  float s[kRegsNTiles][4];
  regs_load_state(s, p.initial_state != nullptr ? p.initial_state + (head_state + p0) * nstate : nullptr, nstate,
                  np, prows, wrow);
  // D for this lane's output columns wrow + 8 pb + 2 q (+1).
  float dskip[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
  if (kOutputs && p.D != nullptr) {
#pragma unroll
    for (int pb = 0; pb < 2; ++pb) {
      const int pc = p0 + wrow + 8 * pb + 2 * q;
      dskip[pb][0] = p.d_per_channel ? (pc < hdim ? p.D[h * hdim + pc] : 0.f) : p.D[h];
      dskip[pb][1] = p.d_per_channel ? (pc + 1 < hdim ? p.D[h * hdim + pc + 1] : 0.f) : p.D[h];
    }
  }

  auto issue = [&](int c, int buf) {
    const int t0 = c * kChunk, clen = min(kChunk, p.len - t0);
    regs_copy_tile(smem_at<T>(smem, lay.xs + buf * lay.buf_bytes), ldx, x + t0 * p.x_len_stride, p.x_len_stride, pt,
                   clen, prows, tid, nthreads);
    regs_copy_tile(smem_at<T>(smem, lay.bs + buf * lay.buf_bytes), ldn, bm + t0 * p.b_len_stride, p.b_len_stride, np,
                   clen, nstate, tid, nthreads);
    if (kOutputs) {
      regs_copy_tile(smem_at<T>(smem, lay.cs + buf * lay.buf_bytes), ldn, cm + t0 * p.c_len_stride, p.c_len_stride, np,
                     clen, nstate, tid, nthreads);
    }
    wm::cp_async_commit();
  };

  const int nchunks = p.nchunks;
  issue(0, 0);
  float dt_next = lane < min(kChunk, p.len) ? to_float(dt[lane * p.dt_len_stride]) : 0.f;
  for (int c = 0; c < nchunks; ++c) {
    const int t0 = c * kChunk, clen = min(kChunk, p.len - t0);
    const int buf = c & 1;
    const bool update = kOutputs ? (p.final_state != nullptr || c + 1 < nchunks) : c + 1 < nchunks;

    if (kChunkStates) {
      // The state entering the chunk, rounded as the products round it.
      T* out = static_cast<T*>(p.chunk_states) +
               ((static_cast<int64_t>(b) * p.nheads + h) * nchunks + c) * (p.p_tiles * pt) * np +
               static_cast<int64_t>(p0 + wrow + g) * np + 2 * q;
#pragma unroll
      for (int t = 0; t < kRegsNTiles; ++t) {
        if (t < np / 8) {
          *reinterpret_cast<uint32_t*>(out + 8 * t) = wm::pack_bf16(s[t][0], s[t][1]);
          *reinterpret_cast<uint32_t*>(out + 8 * np + 8 * t) = wm::pack_bf16(s[t][2], s[t][3]);
        }
      }
    }

    // This chunk's tiles are in; every warp is done with the previous chunk (its buffer and Mm).
    const float dt_raw = dt_next;
    wm::cp_async_wait<0>();
    __syncthreads();
    if (c + 1 < nchunks) {
      issue(c + 1, buf ^ 1);
      const int t1 = t0 + kChunk;
      dt_next = lane < min(kChunk, p.len - t1) ? to_float(dt[(t1 + lane) * p.dt_len_stride]) : 0.f;
    }
    const T* xs = smem_at<T>(smem, lay.xs + buf * lay.buf_bytes);
    const T* bs = smem_at<T>(smem, lay.bs + buf * lay.buf_bytes);
    const T* cs = smem_at<T>(smem, lay.cs + buf * lay.buf_bytes);
    T* mm = smem_at<T>(smem, lay.mm);

    // delta and the inclusive scan of a = delta * A: lane = position in the chunk.
    float delta = 0.f;
    if (lane < clen) {
      const float z = dt_raw + bias;
      delta = kSoftplus ? softplus(z) : z;
    }
    const float cum = warp_inclusive_scan(delta * a_h);
    const float cum_last = __shfl_sync(kFullMask, cum, kChunk - 1);

    float y[2][2][4];  // [i block][column block pb][C layout]
    if (kOutputs) {
      // Mm = G o L o delta over the three nonzero 16 x 16 blocks of G = C B^T: (0,0), (1,0), (1,1).
      for (int u = warp; u < 3; u += nwarps) {
        const int mi = u == 0 ? 0 : 1, nj = u == 2 ? 1 : 0;
        float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
        for (int kk = 0; kk < nk; ++kk) {
          uint32_t a[4], bb[4];
          wm::ldmatrix_x4(a, wm::a_rows(cs, ldn, 16 * mi, 16 * kk));
          wm::ldmatrix_x4(bb, wm::b_rows(bs, ldn, 16 * kk, 16 * nj));
          wm::mma_bf16(acc[0], a, bb[0], bb[1]);
          wm::mma_bf16(acc[1], a, bb[2], bb[3]);
        }
        const int i0 = 16 * mi + g;
        const float cum_i[2] = {__shfl_sync(kFullMask, cum, i0), __shfl_sync(kFullMask, cum, i0 + 8)};
#pragma unroll
        for (int sub = 0; sub < 2; ++sub) {
          const int j0 = 16 * nj + 8 * sub + 2 * q;
          const float cum_j[2] = {__shfl_sync(kFullMask, cum, j0), __shfl_sync(kFullMask, cum, j0 + 1)};
          const float del_j[2] = {__shfl_sync(kFullMask, delta, j0), __shfl_sync(kFullMask, delta, j0 + 1)};
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            const int i = i0 + 8 * hf;
            float v[2];
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              v[e] = j0 + e <= i ? acc[sub][2 * hf + e] * __expf(cum_i[hf] - cum_j[e]) * del_j[e] : 0.f;
            }
            *reinterpret_cast<uint32_t*>(mm + i * kRegsLdm + j0) = wm::pack_bf16(v[0], v[1]);
          }
        }
      }

      // Y = C S^T for the warp's 16 columns (state rows), S rounded to bf16 from the registers.
      regs_state_readout(y, s, cs, ldn, nk);
#pragma unroll
      for (int mb = 0; mb < 2; ++mb) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const float e = __expf(__shfl_sync(kFullMask, cum, 16 * mb + g + 8 * hf));
#pragma unroll
          for (int pb = 0; pb < 2; ++pb) {
            y[mb][pb][2 * hf] *= e;
            y[mb][pb][2 * hf + 1] *= e;
          }
        }
      }
    }

    // S = exp(cum_last) S + sum_j (x_j w_j)^T B_j, w_j = exp(cum_last - cum_j) delta_j.
    if (update) regs_state_update(s, __expf(cum_last), __expf(cum_last - cum) * delta, xs, ldx, wrow, bs, ldn, nk);

    if (kOutputs) {
      __syncthreads();  // Mm
      // Y += Mm x (Mm is zero above the diagonal: block row 0 needs k block 0 only).
#pragma unroll
      for (int ks = 0; ks < 2; ++ks) {
        uint32_t bx[4];
        wm::ldmatrix_x4_trans(bx, wm::b_trans(xs, ldx, 16 * ks, wrow));
#pragma unroll
        for (int mb = ks; mb < 2; ++mb) {
          uint32_t a[4];
          wm::ldmatrix_x4(a, wm::a_rows<T>(mm, kRegsLdm, 16 * mb, 16 * ks));
          wm::mma_bf16(y[mb][0], a, bx[0], bx[1]);
          wm::mma_bf16(y[mb][1], a, bx[2], bx[3]);
        }
      }
      // y = Y + D x, two columns per store.
      T* yo = static_cast<T*>(p.y) + b * p.y_batch_stride + h * p.y_head_stride + p0;
#pragma unroll
      for (int mb = 0; mb < 2; ++mb)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int i = 16 * mb + g + 8 * hf;
#pragma unroll
          for (int pb = 0; pb < 2; ++pb) {
            const int pc = wrow + 8 * pb + 2 * q;
            if (i < clen && pc < prows) {
              const uint32_t xv = *reinterpret_cast<const uint32_t*>(xs + i * ldx + pc);
              const float v0 = y[mb][pb][2 * hf] + dskip[pb][0] * wm::bf16_lo(xv);
              const float v1 = y[mb][pb][2 * hf + 1] + dskip[pb][1] * wm::bf16_hi(xv);
              *reinterpret_cast<uint32_t*>(yo + (t0 + i) * p.y_len_stride + pc) = wm::pack_bf16(v0, v1);
            }
          }
        }
    }
  }

  if (kOutputs && p.final_state != nullptr) {
#pragma unroll
    for (int t = 0; t < kRegsNTiles; ++t)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int row = wrow + g + 8 * hf, col = 8 * t + 2 * q;
        if (t < np / 8 && row < prows && col < nstate) {
          float* dst = p.final_state + (head_state + p0 + row) * nstate + col;
          dst[0] = s[t][2 * hf];
          dst[1] = s[t][2 * hf + 1];
        }
      }
  }
}

/// Whether the register forward takes a launch: bf16 tiles that move in 16-byte vectors, N
/// padded to at most kRegsMaxN, and y (kOutputs) / chunk_states (kChunkStates) on 4-byte
/// boundaries with even strides (two columns per store).
inline bool regs_fwd_ok(const SsdScanParams& p, bool outputs, bool chunk_states) {
  if (p.element_loads || p.tiles_kernels || p.dstate_pad > kRegsMaxN || (p.p_tile != 32 && p.p_tile != 64)) {
    return false;
  }
  if (!ssd_vec16_ok(p, 2, /*backward=*/false)) return false;
  auto even = [](const void* ptr, std::initializer_list<int64_t> strides) {
    if (reinterpret_cast<uintptr_t>(ptr) % 4 != 0) return false;
    for (const int64_t s : strides) {
      if (s % 2 != 0) return false;
    }
    return true;
  };
  if (outputs && !even(p.y, {p.y_batch_stride, p.y_len_stride, p.y_head_stride})) return false;
  if (chunk_states && !even(p.chunk_states, {})) return false;
  return true;
}

}  // namespace ssd

template <bool kOutputs, bool kChunkStates>
cudaError_t ssd_fwd_regs_launch(const SsdScanParams& p, cudaStream_t stream) {
  const ssd::RegsFwdSmem lay(p.p_tile, p.dstate_pad);
  const dim3 grid(p.p_tiles, p.nheads, p.batch);
  cudaError_t err = cudaSuccess;
  BOOL_SWITCH(p.dt_softplus, kSoftplus, [&] {
    auto kernel = &ssd::ssd_fwd_regs_kernel<kOutputs, kChunkStates, kSoftplus>;
    static DynamicSmemOptIn opt_in;
    err = opt_in.ensure(kernel, lay.bytes);
    if (err != cudaSuccess) return;
    kernel<<<grid, p.p_tile * 2, lay.bytes, stream>>>(p);
    err = cudaGetLastError();
  });
  return err;
}

}  // namespace aim::kernels
