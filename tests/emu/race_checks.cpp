// The emulator under ThreadSanitizer (aim_emu_race_tests, AIM_EMU_TSAN): what it must let pass
// and what it must report. The reporting cases are disabled tests, each run alone by ctest
// (emu_race.reports.*), which passes when the sanitizer's report is in the output.
#include <gtest/gtest.h>

#include <vector>

#include "emu_runtime.h"
#include "emu_warp_mma.h"
#include "mma.h"

namespace {

// ---------------------------------------------------------------- ordered: no report

// Each thread reads its neighbour's shared-memory write after a barrier.
__global__ void handoff_after_barrier(float* out) {
  float* s = ::emu::dynamic_shared<float>();
  s[threadIdx.x] = static_cast<float>(threadIdx.x + blockIdx.x);
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

// Every block writes its partial sum, counts itself in with an atomic after a fence, and the
// last block to arrive adds the partials (ssd_step's pattern).
__global__ void last_block_adds(const float* in, float* partial, unsigned* arrivals, float* total) {
  float* s = ::emu::dynamic_shared<float>();
  s[threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x];
  __syncthreads();
  if (threadIdx.x == 0) {
    float v = 0.f;
    for (unsigned i = 0; i < blockDim.x; ++i) v += s[i];
    partial[blockIdx.x] = v;
  }
  __threadfence();
  __syncthreads();
  unsigned* last = reinterpret_cast<unsigned*>(s + blockDim.x);
  if (threadIdx.x == 0) *last = atomicAdd(arrivals, 1u) == gridDim.x - 1 ? 1u : 0u;
  __syncthreads();
  if (*last == 0) return;
  if (threadIdx.x == 0) {
    float v = 0.f;
    for (unsigned b = 0; b < gridDim.x; ++b) v += partial[b];
    *total = v;
    *arrivals = 0;
  }
}

// Asynchronous copies into shared memory, read by other threads after the wait and a barrier.
__global__ void cp_async_then_barrier(const float* in, float* out) {
  float* s = ::emu::dynamic_shared<float>();
  emu_cp_async16(s + 4 * threadIdx.x, in + 4 * threadIdx.x, true);
  emu_cp_async_commit();
  emu_cp_async_wait(0);
  __syncthreads();
  out[threadIdx.x] = s[4 * ((threadIdx.x + 1) % blockDim.x)];
}

// Warps load an accumulator tile, scale it and store it in place: each element is read and
// written by the one lane that holds it.
__global__ void wmma_tile_in_place(float* out) {
  float* s = ::emu::dynamic_shared<float>();
  for (unsigned i = threadIdx.x; i < 32 * 24; i += blockDim.x) s[i] = 1.f + static_cast<float>(i);
  __syncthreads();
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc;
  float* tile = s + (threadIdx.x / 32) * 16 * 24;
  nvcuda::wmma::load_matrix_sync(acc, tile, 24, nvcuda::wmma::mem_row_major);
  for (int e = 0; e < acc.num_elements; ++e) acc.x[e] *= 2.f;
  nvcuda::wmma::store_matrix_sync(tile, acc, 24, nvcuda::wmma::mem_row_major);
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

TEST(EmuRace, OrderedHandoffsPass) {
  std::vector<float> out(6 * 64, -1.f);
  handoff_after_barrier ^ emu::Cfg(6, 64, 64 * sizeof(float))(out.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
  EXPECT_EQ(out[0], 1.f);
  EXPECT_EQ(out[5 * 64 + 63], 5.f);

  std::vector<float> in(8 * 32);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i % 7);
  std::vector<float> partial(8);
  unsigned arrivals = 0;
  float total = 0.f;
  last_block_adds ^ emu::Cfg(8, 32, 33 * sizeof(float))(in.data(), partial.data(), &arrivals, &total);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
  float want = 0.f;
  for (float v : in) want += v;
  EXPECT_EQ(total, want);
  EXPECT_EQ(arrivals, 0u);

  std::vector<float> src(4 * 32), got(32);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<float>(i);
  cp_async_then_barrier ^ emu::Cfg(1, 32, 4 * 32 * sizeof(float))(src.data(), got.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
  EXPECT_EQ(got[0], 4.f);

  std::vector<float> tiles(64);
  wmma_tile_in_place ^ emu::Cfg(1, 64, 32 * 24 * sizeof(float))(tiles.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
  EXPECT_EQ(tiles[0], 2.f);
  EXPECT_EQ(tiles[63], 128.f);
}

// ---------------------------------------------------------------- races: reported

__global__ void missing_barrier(float* out) {
  float* s = ::emu::dynamic_shared<float>();
  s[threadIdx.x] = 1.f;
  out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];  // no __syncthreads before
}

// Lane 0 writes, the lanes shuffle, lane 1 reads: a shuffle is not a memory barrier (on a GPU
// only __syncwarp / __syncthreads order the lanes' shared-memory accesses).
__global__ void shuffle_handoff(float* out) {
  float* s = ::emu::dynamic_shared<float>();
  if (threadIdx.x == 0) s[0] = 1.f;
  const float v = __shfl_sync(0xffffffffu, 2.f, 0);
  if (threadIdx.x == 1) out[0] = s[0] + v;
}

// The destination of another thread's cp.async read after the wait but before a barrier.
__global__ void cp_async_without_barrier(const float* in, float* out) {
  float* s = ::emu::dynamic_shared<float>();
  emu_cp_async16(s + 4 * threadIdx.x, in + 4 * threadIdx.x, true);
  emu_cp_async_commit();
  emu_cp_async_wait(0);
  out[threadIdx.x] = s[4 * ((threadIdx.x + 1) % blockDim.x)];
}

// Two blocks write one element with nothing ordering them.
__global__ void blocks_write_one_element(float* out) {
  if (threadIdx.x == 0) out[0] = static_cast<float>(blockIdx.x);
}

TEST(EmuRaceReports, DISABLED_MissingBarrier) {
  std::vector<float> out(64);
  missing_barrier ^ emu::Cfg(1, 64, 64 * sizeof(float))(out.data());
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
}

TEST(EmuRaceReports, DISABLED_ShuffleOrdersNoMemory) {
  std::vector<float> out(1);
  shuffle_handoff ^ emu::Cfg(1, 32, sizeof(float))(out.data());
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
}

TEST(EmuRaceReports, DISABLED_CpAsyncReadBeforeTheBarrier) {
  std::vector<float> src(4 * 32), out(32);
  cp_async_without_barrier ^ emu::Cfg(1, 32, 4 * 32 * sizeof(float))(src.data(), out.data());
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
}

TEST(EmuRaceReports, DISABLED_BlocksWriteOneElement) {
  std::vector<float> out(1);
  blocks_write_one_element ^ emu::Cfg(2, 32)(out.data());
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
}

}  // namespace
