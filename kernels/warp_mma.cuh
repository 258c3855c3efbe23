#pragma once
// Warp-level tensor-core primitives with explicit register fragments (sm_80 and later):
// ldmatrix from shared memory, mma.sync m16n8k16 in bf16 with fp32 accumulators, and 16-byte
// asynchronous global -> shared copies. Kernels that keep an accumulator in registers across
// many products (e.g. the SSD scan's state) use these instead of WMMA, whose fragments have no
// defined layout.
//
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16"), lane l, g = l / 4, q = l % 4:
//   A (16 x 16, row-major):  a[0] = A[g][2q, 2q+1],   a[1] = A[g+8][2q, 2q+1],
//                            a[2] = A[g][2q+8, 2q+9], a[3] = A[g+8][2q+8, 2q+9]
//   B (16 x 8, K x N):       b[0] = B[2q, 2q+1][g],   b[1] = B[2q+8, 2q+9][g]
//   C / D (16 x 8, fp32):    c[0], c[1] = C[g][2q, 2q+1],  c[2], c[3] = C[g+8][2q, 2q+1]
// Two bf16 in one 32-bit register: the lower index in the low half.
// ldmatrix x4: lane l gives the address of row l % 8 of 8 x 8 matrix l / 8 (16 bytes, 16-byte
// aligned); r[m] gets matrix m's row g, elements 2q and 2q+1, or with .trans its column g, rows
// 2q and 2q+1 (the transposed matrix's row g).
//
// The CPU emulator (tests/emu) compiles this without __CUDACC__ and takes the same operations
// from emu_warp_mma.h, which models them as warp collectives with these layouts.
#include <cuda_bf16.h>

#include <cstdint>

#if !defined(__CUDACC__)
#include "emu_warp_mma.h"
#endif

namespace aim::kernels::warp_mma {

/// Two floats as bf16 (round to nearest even) in one register, `lo` in the low half.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
#if defined(__CUDACC__)
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
#else
  return emu_pack_bf16(lo, hi);
#endif
}
__device__ __forceinline__ float bf16_lo(uint32_t v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t v) { return __uint_as_float(v & 0xffff0000u); }

/// Four 8 x 8 bf16 matrices from shared memory (see above); `row` is this lane's row address.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
#if defined(__CUDACC__)
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
#else
  emu_ldmatrix_x4(r, row, /*trans=*/false);
#endif
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
#if defined(__CUDACC__)
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
#else
  emu_ldmatrix_x4(r, row, /*trans=*/true);
#endif
}

// Row addresses for ldmatrix_x4 (elements; `ld` the row stride) of the common operand tiles:
//   a_rows:   A (16 x 16 at m0, k0) of a row-major [M][K] array (non-trans): r = a[0..3]
//   a_trans:  A of an array stored [K][M] (A^T row-major; .trans):               r = a[0..3]
//   b_rows:   B of two 8-column blocks (n0, n0 + 8), k0.. k0 + 15, of an array stored [N][K]
//             (B^T row-major; non-trans): r[0], r[1] = block n0's b[0], b[1]; r[2], r[3] block n0 + 8's
//   b_trans:  the same B blocks of an array stored [K][N] (B row-major; .trans)
template <typename T>
__device__ __forceinline__ const T* a_rows(const T* base, int ld, int m0, int k0) {
  const int lane = threadIdx.x & 31;
  return base + (m0 + (lane & 15)) * ld + k0 + (lane >> 4) * 8;
}
template <typename T>
__device__ __forceinline__ const T* a_trans(const T* base, int ld, int m0, int k0) {
  const int lane = threadIdx.x & 31;
  return base + (k0 + (lane >> 4) * 8 + (lane & 7)) * ld + m0 + ((lane >> 3) & 1) * 8;
}
template <typename T>
__device__ __forceinline__ const T* b_rows(const T* base, int ld, int k0, int n0) {
  const int lane = threadIdx.x & 31;
  return base + (n0 + (lane >> 4) * 8 + (lane & 7)) * ld + k0 + ((lane >> 3) & 1) * 8;
}
template <typename T>
__device__ __forceinline__ const T* b_trans(const T* base, int ld, int k0, int n0) {
  const int lane = threadIdx.x & 31;
  return base + (k0 + ((lane >> 3) & 1) * 8 + (lane & 7)) * ld + n0 + (lane >> 4) * 8;
}

/// d += A B: a 16 x 16 bf16 A, a 16 x 8 bf16 B, fp32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t b0,
                                         const uint32_t b1) {
#if defined(__CUDACC__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  emu_mma_bf16_16816(d, a, b0, b1);
#endif
}

/// 16 bytes from global to shared memory, asynchronously; with `valid` false the destination
/// gets zeros and nothing is read. Both addresses 16-byte aligned.
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src, bool valid) {
#if defined(__CUDACC__)
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(gmem_src),
               "r"(valid ? 16 : 0));
#else
  emu_cp_async16(smem_dst, gmem_src, valid);
#endif
}
/// Closes this thread's group of copies issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDACC__)
  asm volatile("cp.async.commit_group;\n" ::);
#else
  emu_cp_async_commit();
#endif
}
/// Waits until at most kPending of this thread's committed groups are still in flight (the
/// copies of the others are then in shared memory; other threads see them after a barrier).
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDACC__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#else
  emu_cp_async_wait(kPending);
#endif
}

}  // namespace aim::kernels::warp_mma
