#pragma once
// CPU emulation of the nvcuda::wmma subset kernels/ uses. Every lane holds the whole tile,
// row-major, so element-wise loops over x[0 .. num_elements) touch each element once per lane
// as they touch each of the lane's own elements on a GPU. Products accumulate in fp32.
// load_matrix_sync and store_matrix_sync are warp collectives, as on the device: every lane of
// the warp arrives before any lane moves data, so a warp may load a tile, update it and store it
// in place. Their constraints are checked: a 256-bit aligned pointer, and a leading dimension
// that is a multiple of 16 bytes.
#include <string>

#include "cuda_bf16.h"
#include "emu_runtime.h"

namespace nvcuda::wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K>
struct fragment_shape;
template <int M, int N, int K>
struct fragment_shape<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct fragment_shape<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct fragment_shape<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = fragment_shape<Use, M, N, K>::rows;
  static constexpr int cols = fragment_shape<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  T x[num_elements];
};

template <typename Use, int M, int N, int K, typename T, typename L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, const T& v) {
  for (int e = 0; e < f.num_elements; ++e) f.x[e] = v;
}

// A tile element read by this lane: every lane here gets the whole tile, but for
// ThreadSanitizer each element is read by one lane (element e by lane e % 32, the lane that
// stores it) and the others read it unseen, so a warp that loads a tile and stores it in place
// does not race with itself. Other builds read it plainly.
#if defined(__SANITIZE_THREAD__)
template <typename T>
__attribute__((no_sanitize_thread, noipa)) T emu_unwatched_read(const T* p) {
  return *p;
}
template <typename T>
inline T emu_tile_read(const T* p, int element) {
  return element % 32 == ::emu::lane_id() ? *p : emu_unwatched_read(p);
}
#else
template <typename T>
inline T emu_tile_read(const T* p, int) {
  return *p;
}
#endif

template <typename T>
inline void emu_tile_collective(const T* p, unsigned ld, const char* op) {
  ::emu::warp_collective(0xffffffffu, op);
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) ::emu::fault(std::string(op) + ": pointer not 256-bit aligned");
  if (ld * sizeof(T) % 16 != 0)
    ::emu::fault(std::string(op) + ": leading dimension " + std::to_string(ld) +
                 " is not a multiple of 16 bytes");
}

template <typename Use, int M, int N, int K, typename T, typename L>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const T* p, unsigned ld) {
  emu_tile_collective(p, ld, "wmma::load_matrix_sync");
  static_assert(std::is_same<L, row_major>::value || std::is_same<L, col_major>::value,
                "operand fragments carry their layout");
  constexpr bool kRow = std::is_same<L, row_major>::value;
  for (int r = 0; r < f.rows; ++r)
    for (int c = 0; c < f.cols; ++c) f.x[r * f.cols + c] = emu_tile_read(kRow ? p + r * ld + c : p + r + c * ld, r * f.cols + c);
}

template <int M, int N, int K, typename T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ld,
                             layout_t layout) {
  emu_tile_collective(p, ld, "wmma::load_matrix_sync");
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      f.x[r * N + c] = emu_tile_read(layout == mem_row_major ? p + r * ld + c : p + r + c * ld, r * N + c);
}

template <int M, int N, int K, typename T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ld,
                              layout_t layout) {
  emu_tile_collective(p, ld, "wmma::store_matrix_sync");
  // Each element stored by one lane (element e by lane e % 32), as on a GPU each lane stores
  // its own: a lane reading another's element without __syncwarp / __syncthreads after the
  // store races with it (ThreadSanitizer), though every lane holds the whole tile here.
  const int lane = ::emu::lane_id();
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      if ((r * N + c) % 32 == lane) (layout == mem_row_major ? p[r * ld + c] : p[r + c * ld]) = f.x[r * N + c];
}

template <int M, int N, int K, typename Tin, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d,
                     const fragment<matrix_a, M, N, K, Tin, LA>& a,
                     const fragment<matrix_b, M, N, K, Tin, LB>& b,
                     const fragment<accumulator, M, N, K, float>& c) {
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float acc = c.x[i * N + j];
      for (int k = 0; k < K; ++k)
        acc += static_cast<float>(a.x[i * K + k]) * static_cast<float>(b.x[k * N + j]);
      out[i * N + j] = acc;
    }
  for (int e = 0; e < M * N; ++e) d.x[e] = out[e];
}

}  // namespace nvcuda::wmma
