#pragma once
// CPU emulation of kernels/warp_mma.cuh's primitives (ldmatrix, mma.sync m16n8k16 bf16 -> fp32,
// cp.async), with the register layouts of the PTX ISA that the header states.
//
// ldmatrix and mma are warp collectives (emu::warp_gather; every lane must take part, as
// .sync.aligned requires): ldmatrix reads each lane's own 16-byte row when the lane arrives,
// before any lane of the warp goes on, and hands the elements out by the fragment layout; mma
// gathers the lanes' fragments and each lane computes its own accumulators (products summed in
// fp32 over k in order). Row addresses must be 16-byte aligned.
//
// cp.async reads its source when issued, poisons its destination (0xff: NaN in fp32 and bf16)
// and writes the data only when the issuing thread waits for the copy's group
// (emu_cp_async_wait): a read of the destination between the issue and the wait, or by another
// thread without a barrier after the wait, sees the poison; so does a thread still reading a
// buffer that a copy was issued into (a missing barrier before the issue).
#include <cstdint>
#include <cstring>
#include <string>

#include "cuda_bf16.h"
#include "emu_runtime.h"

inline uint32_t emu_pack_bf16(float lo, float hi) {
  const __nv_bfloat16 a(lo), b(hi);
  return static_cast<uint32_t>(a.bits) | (static_cast<uint32_t>(b.bits) << 16);
}

inline void emu_ldmatrix_x4(uint32_t (&r)[4], const void* row, bool trans) {
  const char* op = trans ? "ldmatrix.x4.trans" : "ldmatrix.x4";
  if (reinterpret_cast<uintptr_t>(row) % 16 != 0) ::emu::fault(std::string(op) + ": row address not 16-byte aligned");
  uint16_t mine[8];
  std::memcpy(mine, row, 16);
  uint16_t rows[32][8];  // lane k's row: row k % 8 of matrix k / 8
  ::emu::warp_gather(0xffffffffu, mine, 16, rows, op);
  const int l = ::emu::lane_id(), g = l / 4, q = l % 4;
  for (int m = 0; m < 4; ++m) {
    const uint16_t* mat = rows[8 * m];  // 8 rows of 8 elements
    uint16_t lo, hi;
    if (trans) {
      lo = mat[(2 * q) * 8 + g];
      hi = mat[(2 * q + 1) * 8 + g];
    } else {
      lo = mat[g * 8 + 2 * q];
      hi = mat[g * 8 + 2 * q + 1];
    }
    r[m] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
  }
}

inline void emu_mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  struct Frags {
    uint32_t a[4], b[2];
  };
  const Frags mine{{a[0], a[1], a[2], a[3]}, {b0, b1}};
  Frags all[32];
  ::emu::warp_gather(0xffffffffu, &mine, sizeof(Frags), all, "mma.sync.m16n8k16");
  auto half = [](uint32_t v, int k) {
    const uint32_t u = k % 2 == 0 ? v << 16 : v & 0xffff0000u;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  };
  // A(r, k): lane 4 (r % 8) + (k % 8) / 2, register r / 8 + 2 (k / 8); B(k, n): lane 4 n + (k % 8) / 2,
  // register k / 8; the half by k's parity.
  auto A = [&](int r, int k) { return half(all[4 * (r % 8) + (k % 8) / 2].a[r / 8 + 2 * (k / 8)], k); };
  auto B = [&](int k, int n) { return half(all[4 * n + (k % 8) / 2].b[k / 8], k); };
  const int l = ::emu::lane_id(), g = l / 4, q = l % 4;
  for (int e = 0; e < 4; ++e) {
    const int r = g + 8 * (e / 2), n = 2 * q + e % 2;
    float acc = d[e];
    for (int k = 0; k < 16; ++k) acc += A(r, k) * B(k, n);
    d[e] = acc;
  }
}

inline void emu_cp_async16(void* dst, const void* src, bool valid) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || (valid && reinterpret_cast<uintptr_t>(src) % 16 != 0)) {
    ::emu::fault("cp.async: address not 16-byte aligned");
  }
  ::emu::AsyncCopy c;
  c.dst = dst;
  if (valid) std::memcpy(c.data, src, 16);
  // Until the wait the destination holds nothing defined: a read of it in that window (or a copy
  // issued into a buffer another thread still reads) sees the poison.
  std::memset(dst, 0xff, 16);
  c.group = ::emu::g_thread->async_committed;
  ::emu::g_thread->async_copies.push_back(c);
}

inline void emu_cp_async_commit() { ++::emu::g_thread->async_committed; }

inline void emu_cp_async_wait(int pending) {
  auto& t = *::emu::g_thread;
  // Complete every copy of a committed group older than the `pending` most recent ones.
  const uint64_t done_before = t.async_committed >= static_cast<uint64_t>(pending)
                                   ? t.async_committed - static_cast<uint64_t>(pending)
                                   : 0;
  size_t kept = 0;
  for (size_t i = 0; i < t.async_copies.size(); ++i) {
    auto& c = t.async_copies[i];
    if (c.group < done_before) {
      std::memcpy(c.dst, c.data, 16);
    } else {
      t.async_copies[kept++] = c;
    }
  }
  t.async_copies.resize(kept);
}
