// The emulator under ThreadSanitizer (aim_emu_race_tests, AIM_EMU_TSAN): what it must let pass
// and what it must report. The reporting cases are disabled tests, each run alone by ctest
// (emu_race.reports.*), which passes when the sanitizer's report is in the output.
#include <gtest/gtest.h>

#include <tuple>
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

// Every thread writes its partial, thread 0 counts the block in with an atomic after a barrier,
// and the last block to arrive adds the partials, with fences on both sides of the hand-off
// (thread 0's, as in cooperative groups' grid barrier: its fence orders what the barrier
// ordered before it, and the barrier passes on what its fence ordered): kFences 3 both, 1 only
// the writers' (before the arrival), 2 only the last block's (after it).
template <int kFences>
__global__ void last_block_adds(const float* in, float* partial, unsigned* arrivals, float* total) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  partial[i] = 2.f * in[i];
  __syncthreads();
  unsigned* last = ::emu::dynamic_shared<unsigned>();
  if (threadIdx.x == 0) {
    if (kFences & 1) __threadfence();
    *last = atomicAdd(arrivals, 1u) == gridDim.x - 1 ? 1u : 0u;
    if ((kFences & 2) && *last) __threadfence();
  }
  __syncthreads();
  if (*last == 0) return;
  float v = 0.f;
  for (unsigned b = 0; b < gridDim.x; ++b) v += partial[b * blockDim.x + threadIdx.x];
  total[threadIdx.x] = v;
  if (threadIdx.x == 0) atomicExch(arrivals, 0u);
}

// ssd_step's hand-off: every thread fences after its writes, then the barrier and thread 0's
// arrival; the thread that read the last arrival fences, then the barrier. With
// kFenceAfterTheBarrier, every thread of the last block fences after that barrier instead
// (ssd_step until it used the form above): only thread 0's fence follows the atomic read in its
// own thread (PTX's acquire pattern), and no barrier after that fence passes on what it
// ordered. The model then orders the other threads' reads after nothing; the hardware may well
// order them, but the memory model's patterns do not say so.
template <bool kFenceAfterTheBarrier>
__global__ void last_block_adds_every_thread_fences(const float* in, float* partial, unsigned* arrivals,
                                                    float* total) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  partial[i] = 2.f * in[i];
  __threadfence();
  __syncthreads();
  unsigned* last = ::emu::dynamic_shared<unsigned>();
  if (threadIdx.x == 0) {
    *last = atomicAdd(arrivals, 1u) == gridDim.x - 1 ? 1u : 0u;
    if (!kFenceAfterTheBarrier && *last) __threadfence();
  }
  __syncthreads();
  if (*last == 0) return;
  if (kFenceAfterTheBarrier) __threadfence();
  float v = 0.f;
  for (unsigned b = 0; b < gridDim.x; ++b) v += partial[b * blockDim.x + threadIdx.x];
  total[threadIdx.x] = v;
  if (threadIdx.x == 0) atomicExch(arrivals, 0u);
}

// Runs a hand-off kernel over 8 blocks of 32 threads and checks the sums it hands over.
template <typename K>
void run_last_block_adds(K kernel) {
  std::vector<float> in(8 * 32), partial(8 * 32), total(32);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i % 7);
  unsigned arrivals = 0;
  kernel ^ emu::Cfg(8, 32, sizeof(unsigned))(in.data(), partial.data(), &arrivals, total.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
  for (unsigned t = 0; t < 32; ++t) {
    float want = 0.f;
    for (unsigned b = 0; b < 8; ++b) want += 2.f * in[b * 32 + t];
    EXPECT_EQ(total[t], want);
  }
  EXPECT_EQ(arrivals, 0u);
}

// Programmatic dependent launches: a producer, and consumers launched as its dependents that
// read, before their griddepcontrol.wait, what the host wrote before the producer's launch
// (weights), and after it what the producer wrote.
__global__ void produce(const float* w, float* a) {
  a[blockIdx.x * blockDim.x + threadIdx.x] = w[threadIdx.x] + static_cast<float>(blockIdx.x);
}
__global__ void consume_after_wait(const float* w, const float* a, float* out) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  const float weight = w[threadIdx.x];  // before the wait: the host's, from before the producer
  ::emu::wait_for_prior_grid();
  ::emu::allow_dependent_grid();
  out[i] = weight * a[i];
}
// Reads the producer's output before its wait: allowed two launches after the producer (the
// grid between waited for it before it let this one start).
__global__ void consume_two_after(const float* a, float* out) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  const float v = a[i];
  ::emu::wait_for_prior_grid();
  out[i] += v;
}
// What a dependent grid must not do before its wait: read what the grid before it writes, or
// write what it reads.
__global__ void consume_before_wait(const float* a, float* out) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  const float v = a[i];
  ::emu::wait_for_prior_grid();
  out[i] = v;
}
__global__ void overwrite_before_wait(float* w) {
  if (blockIdx.x == 0) w[threadIdx.x] = 0.f;
  ::emu::wait_for_prior_grid();
}

template <typename... P, typename... A>
void launch_dependent(void (*kernel)(P...), A... args) {
  ::emu::launch_kernel(kernel, dim3(2), dim3(32), 0, dim3(1, 1, 1), std::make_tuple(args...), /*dependent=*/true);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
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

  run_last_block_adds(last_block_adds<3>);
  run_last_block_adds(last_block_adds_every_thread_fences<false>);

  std::vector<float> w(32), a(64), chained(64);
  for (size_t i = 0; i < w.size(); ++i) w[i] = 1.f + static_cast<float>(i);
  produce ^ emu::Cfg(2, 32)(w.data(), a.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
  launch_dependent(consume_after_wait, w.data(), a.data(), chained.data());
  launch_dependent(consume_two_after, a.data(), chained.data());
  EXPECT_EQ(chained[33], 2.f * (2.f + 1.f) + (2.f + 1.f));

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

TEST(EmuRaceReports, DISABLED_ArrivalWithoutFence) { run_last_block_adds(last_block_adds<2>); }

TEST(EmuRaceReports, DISABLED_LastBlockReadsWithoutFence) { run_last_block_adds(last_block_adds<1>); }

TEST(EmuRaceReports, DISABLED_FenceAfterTheBarrier) {
  run_last_block_adds(last_block_adds_every_thread_fences<true>);
}

TEST(EmuRaceReports, DISABLED_DependentReadsBeforeTheWait) {
  std::vector<float> w(32, 1.f), a(64), out(64);
  produce ^ emu::Cfg(2, 32)(w.data(), a.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
  launch_dependent(consume_before_wait, a.data(), out.data());
}

TEST(EmuRaceReports, DISABLED_DependentWritesBeforeTheWait) {
  std::vector<float> w(32, 1.f), a(64);
  produce ^ emu::Cfg(2, 32)(w.data(), a.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
  launch_dependent(overwrite_before_wait, w.data());
}

TEST(EmuRaceReports, DISABLED_BlocksWriteOneElement) {
  std::vector<float> out(1);
  blocks_write_one_element ^ emu::Cfg(2, 32)(out.data());
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
}

}  // namespace
