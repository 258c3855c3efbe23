// The CPU emulator itself (tests/emu/include/emu_runtime.h): that it runs CUDA's execution model
// faithfully enough for the kernel tests to mean something, and that the faults it promises to
// report are reported. The kernels here are written for the emulator in this file.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "cooperative_groups.h"
#include "emu_runtime.h"
#include "grid_dependency.cuh"  // kernels/, as translated for the emulator
#include "mma.h"
#include "warp_mma.cuh"  // kernels/, as translated for the emulator

namespace {

// Runs a test's launches in one schedule, restoring the previous one.
class ScheduleGuard {
 public:
  explicit ScheduleGuard(emu::Schedule s) : saved_(emu::schedule()) { emu::set_schedule(s); }
  ~ScheduleGuard() { emu::set_schedule(saved_); }

 private:
  emu::Schedule saved_;
};

__global__ void block_sum(const float* x, float* out, int n) {
  __shared__ float warp_sums[32];
  float v = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += x[blockIdx.x * n + i];
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (unsigned w = 0; w < blockDim.x / 32; ++w) s += warp_sums[w];
    out[blockIdx.x] = s;
  }
}

TEST(Emulator, ShufflesAndSharedMemoryReduceABlock) {
  std::vector<float> x(3 * 1000), out(3, -1.f);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 7) - 2.f;
  block_sum ^ emu::Cfg(3, 128)(x.data(), out.data(), 1000);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
  for (int b = 0; b < 3; ++b) {
    double want = 0;
    for (int i = 0; i < 1000; ++i) want += x[b * 1000 + i];
    EXPECT_EQ(out[b], want) << "block " << b;
  }
}

// Thread i writes slot i, then reads slot i + 1: with the barrier it sees the neighbour's write;
// without it, the emulator (like a GPU, without a guarantee) lets the read come first.
template <bool kBarrier>
__global__ void neighbour(float* out) {
  float* s = emu::dynamic_shared<float>();
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  if (kBarrier) __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

TEST(Emulator, BarriersOrderSharedMemoryAndTheirAbsenceShows) {
  ScheduleGuard forward(emu::Schedule::kForward);
  std::vector<float> out(64);
  neighbour<true> ^ emu::Cfg(1, 64, 64 * sizeof(float))(out.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
  for (int i = 0; i < 64; ++i) EXPECT_EQ(out[i], static_cast<float>((i + 1) % 64));
  neighbour<false> ^ emu::Cfg(1, 64, 64 * sizeof(float))(out.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
  // Dynamic shared memory starts as NaN: thread 0 read slot 1 before thread 1 wrote it.
  EXPECT_TRUE(std::isnan(out[0]));
}

// Thread i writes slot i, then reads slot i - 1 (an earlier thread's); block b also reads what
// block b - 1 wrote to global memory. Neither is ordered on a GPU. The forward schedule runs
// the writer first and hides both; the reverse schedule runs it last, and both reads show.
template <bool kBarrier>
__global__ void earlier_neighbour(float* out, float* flags) {
  float* s = emu::dynamic_shared<float>();
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  if (kBarrier) __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = s[(threadIdx.x + blockDim.x - 1) % blockDim.x];
  if (threadIdx.x == 0) {
    if (blockIdx.x > 0) out[blockIdx.x * blockDim.x] = flags[blockIdx.x - 1];
    flags[blockIdx.x] = 1.f;
  }
}

TEST(Emulator, TheReverseScheduleShowsReadsOfEarlierWrites) {
  const int threads = 64, blocks = 2;
  auto run = [&](emu::Schedule s, bool barrier) {
    ScheduleGuard guard(s);
    std::vector<float> out(threads * blocks, -1.f), flags(blocks, 0.f);
    auto* kernel = barrier ? earlier_neighbour<true> : earlier_neighbour<false>;
    kernel ^ emu::Cfg(blocks, threads, threads * sizeof(float))(out.data(), flags.data());
    EXPECT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
    return out;
  };
  for (auto s : {emu::Schedule::kForward, emu::Schedule::kReverse}) {
    const auto ordered = run(s, /*barrier=*/true);
    for (int i = 1; i < threads; ++i) EXPECT_EQ(ordered[i], static_cast<float>(i - 1));
  }
  const auto forward = run(emu::Schedule::kForward, false);
  EXPECT_EQ(forward[1], 0.f);              // thread 0 wrote first: the race passes
  EXPECT_EQ(forward[threads], 1.f);        // block 0 ran first
  const auto reverse = run(emu::Schedule::kReverse, false);
  EXPECT_TRUE(std::isnan(reverse[1]));     // thread 1 read before thread 0 wrote
  EXPECT_EQ(reverse[threads], 0.f);        // block 1 ran before block 0
}

// A static shared array as translate.cmake rewrites it: each block starts with it poisoned,
// whatever the previous block left there.
__global__ void static_shared_reads(float* out) {
  using emu_shared_t_s = float[32];
  static char emu_shared_tag_s;
  emu_shared_t_s& s = *static_cast<emu_shared_t_s*>(
      ::emu::static_shared(&emu_shared_tag_s, sizeof(emu_shared_t_s), alignof(emu_shared_t_s)));
  out[blockIdx.x * 32 + threadIdx.x] = s[threadIdx.x];  // before any write: garbage on a GPU
  s[threadIdx.x] = 1.f;
}

TEST(Emulator, StaticSharedMemoryStartsPoisonedInEveryBlock) {
  std::vector<float> out(64, 0.f);
  static_shared_reads ^ emu::Cfg(2, 32)(out.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
  for (int i = 0; i < 64; ++i) EXPECT_TRUE(std::isnan(out[i])) << "element " << i;
}

// Half a warp at __syncthreads, the other half in a full-mask shuffle: a deadlock on a GPU.
__global__ void split_warp(float* out) {
  if ((threadIdx.x & 31) < 16) {
    __syncthreads();
  } else {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
  }
}

__global__ void shuffle_after_exit(float* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<float>(threadIdx.x), 1);
}

__global__ void partial_warp_shuffle(float* out) {
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.f, 1);
}

TEST(Emulator, ReportsDivergentBarriersAndCollectives) {
  std::vector<float> out(64, 0.f);
  split_warp ^ emu::Cfg(1, 64)(out.data());
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  EXPECT_NE(emu::last_message().find("deadlock"), std::string::npos) << emu::last_message();

  shuffle_after_exit ^ emu::Cfg(1, 32)(out.data());
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  EXPECT_NE(emu::last_message().find("has exited"), std::string::npos) << emu::last_message();

  partial_warp_shuffle ^ emu::Cfg(1, 48)(out.data());
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  EXPECT_NE(emu::last_message().find("lanes the block does not have"), std::string::npos)
      << emu::last_message();
  // A fault leaves the emulator usable.
  std::vector<float> x(64, 1.f), sum(1);
  block_sum ^ emu::Cfg(1, 64)(x.data(), sum.data(), 64);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
  EXPECT_EQ(sum[0], 64.f);
}

__global__ void touch_smem(float* out) {
  float* s = emu::dynamic_shared<float>();
  s[threadIdx.x] = 1.f;
  out[threadIdx.x] = s[threadIdx.x];
}

TEST(Emulator, LaunchLimitsAreTheDevicesOwn) {
  std::vector<float> out(32);
  // Over 48 KiB of dynamic shared memory needs the opt-in attribute, up to the device's limit.
  const size_t big = 100 * 1024;
  touch_smem ^ emu::Cfg(1, 32, big)(out.data());
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_NE(emu::last_message().find("dynamic shared memory"), std::string::npos);
  ASSERT_EQ(cudaFuncSetAttribute(touch_smem, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(big)),
            cudaSuccess);
  touch_smem ^ emu::Cfg(1, 32, big)(out.data());
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
  EXPECT_NE(cudaFuncSetAttribute(touch_smem, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 emu::device().smem_optin + 1),
            cudaSuccess);
  // Grid y and z stop at 65535; blocks at 1024 threads.
  touch_smem ^ emu::Cfg(dim3(1, 70000), 32)(out.data());
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  touch_smem ^ emu::Cfg(1, 2048)(out.data());
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
}

// A warp loads an accumulator tile from shared memory, scales it and stores it back in place
// (the SSD kernels' state update): the tile operations are warp collectives, so every lane
// loads before any lane stores.
__global__ void wmma_in_place(float* tile, const __nv_bfloat16* a, const __nv_bfloat16* b) {
  using namespace nvcuda;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::load_matrix_sync(acc, tile, 16, wmma::mem_row_major);
  for (int e = 0; e < acc.num_elements; ++e) acc.x[e] *= 2.f;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(tile, acc, 16, wmma::mem_row_major);
}

__global__ void wmma_bad_ld(float* t) {
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc;
  nvcuda::wmma::load_matrix_sync(acc, t, 18, nvcuda::wmma::mem_row_major);
}

TEST(Emulator, TileOperationsAreWarpCollectives) {
  alignas(32) float tile[256];
  alignas(32) __nv_bfloat16 a[256], b[256];
  std::vector<float> want(256);
  for (int i = 0; i < 256; ++i) {
    tile[i] = static_cast<float>(i % 17) - 8.f;
    a[i] = __nv_bfloat16(static_cast<float>(i % 5) - 2.f);
    b[i] = __nv_bfloat16(static_cast<float>(i % 3) - 1.f);
  }
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) {
      float v = 2.f * tile[r * 16 + c];
      for (int k = 0; k < 16; ++k) v += float(a[r * 16 + k]) * float(b[k + c * 16]);  // b col-major
      want[r * 16 + c] = v;
    }
  wmma_in_place ^ emu::Cfg(1, 32)(tile, a, b);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
  for (int i = 0; i < 256; ++i) EXPECT_EQ(tile[i], want[i]) << "element " << i;
  // A leading dimension that is not a multiple of 16 bytes is undefined on a device: reported.
  alignas(32) float wide[16 * 18];
  wmma_bad_ld ^ emu::Cfg(1, 32)(wide);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  EXPECT_NE(emu::last_message().find("leading dimension 18"), std::string::npos) << emu::last_message();
}

// Register fragments (kernels/warp_mma.cuh): a 16 x 16 A and a 16 x 16 B (two 8-column blocks)
// in shared memory, each stored both ways; ldmatrix through every address helper, then mma, give
// A B in the accumulator layout the header states. The layouts are the PTX ISA's; the kernels
// that use them are checked against their references through these same emulated operations.
__global__ void mma_fragments(const float* a, const float* b, float* out) {
  namespace wm = aim::kernels_emu::warp_mma;
  constexpr int ld = 24;  // 48-byte rows
  __nv_bfloat16* sm = emu::dynamic_shared<__nv_bfloat16>();
  __nv_bfloat16 *a_mk = sm, *a_km = sm + 16 * ld, *b_kn = sm + 32 * ld, *b_nk = sm + 48 * ld;
  for (int i = threadIdx.x; i < 256; i += 32) {
    const int r = i / 16, c = i % 16;
    a_mk[r * ld + c] = __nv_bfloat16(a[i]);  // A[r][c]
    a_km[c * ld + r] = __nv_bfloat16(a[i]);
    b_kn[r * ld + c] = __nv_bfloat16(b[i]);  // B[r][c], r = k
    b_nk[c * ld + r] = __nv_bfloat16(b[i]);
  }
  __syncthreads();
  const int lane = threadIdx.x, g = lane / 4, q = lane % 4;
  for (int variant = 0; variant < 2; ++variant) {
    uint32_t fa[4], fb[4];
    if (variant == 0) {
      wm::ldmatrix_x4(fa, wm::a_rows<__nv_bfloat16>(a_mk, ld, 0, 0));
      wm::ldmatrix_x4(fb, wm::b_rows<__nv_bfloat16>(b_nk, ld, 0, 0));
    } else {
      wm::ldmatrix_x4_trans(fa, wm::a_trans<__nv_bfloat16>(a_km, ld, 0, 0));
      wm::ldmatrix_x4_trans(fb, wm::b_trans<__nv_bfloat16>(b_kn, ld, 0, 0));
    }
    float d[2][4] = {{1.f, 1.f, 1.f, 1.f}, {1.f, 1.f, 1.f, 1.f}};
    wm::mma_bf16(d[0], fa, fb[0], fb[1]);
    wm::mma_bf16(d[1], fa, fb[2], fb[3]);
    for (int blk = 0; blk < 2; ++blk)
      for (int e = 0; e < 4; ++e) {
        out[variant * 256 + (g + 8 * (e / 2)) * 16 + 8 * blk + 2 * q + e % 2] = d[blk][e];
      }
  }
}

// cp.async: the destination holds nothing defined from the issue (poison here, whatever it held
// before) until the issuing thread waits for the group; an invalid source fills zeros.
__global__ void async_copy(const float* src, float* out) {
  namespace wm = aim::kernels_emu::warp_mma;
  float* sm = emu::dynamic_shared<float>();
  if (threadIdx.x == 0) {
    sm[0] = 42.f;
    sm[8] = 42.f;
    wm::cp_async16(sm, src, true);
    wm::cp_async16(sm + 4, src, false);
    wm::cp_async_commit();
    wm::cp_async16(sm + 8, src + 4, true);
    wm::cp_async_commit();
    out[0] = sm[0];  // before any wait: poison (the copy was issued into it)
    wm::cp_async_wait<1>();
    out[1] = sm[0];
    out[2] = sm[4];
    out[3] = sm[8];  // the second group is still in flight
    wm::cp_async_wait<0>();
    out[4] = sm[8];
  }
}

__global__ void ldmatrix_misaligned(float* out) {
  namespace wm = aim::kernels_emu::warp_mma;
  __nv_bfloat16* sm = emu::dynamic_shared<__nv_bfloat16>();
  uint32_t r[4];
  wm::ldmatrix_x4(r, sm + 4 + 8 * threadIdx.x);  // 8 bytes past a 16-byte boundary
  out[threadIdx.x] = static_cast<float>(r[0]);
}

TEST(Emulator, RegisterFragmentsMultiplyAsThePtxLayoutsSay) {
  std::vector<float> a(256), b(256), out(512, 0.f);
  for (int i = 0; i < 256; ++i) {
    a[i] = static_cast<float>(i % 7) - 3.f;
    b[i] = static_cast<float>(i % 5) * 0.5f - 1.f;
  }
  mma_fragments ^ emu::Cfg(1, 32, 64 * 24 * 2)(a.data(), b.data(), out.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
  for (int variant = 0; variant < 2; ++variant)
    for (int r = 0; r < 16; ++r)
      for (int c = 0; c < 16; ++c) {
        float want = 1.f;
        for (int k = 0; k < 16; ++k) want += a[r * 16 + k] * b[k * 16 + c];
        EXPECT_EQ(out[variant * 256 + r * 16 + c], want) << "variant " << variant << " (" << r << ", " << c << ")";
      }

  alignas(16) float src[8] = {1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f, 8.f};
  std::vector<float> got(5, 0.f);
  async_copy ^ emu::Cfg(1, 32, 64)(src, got.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
  EXPECT_TRUE(std::isnan(got[0])) << got[0];
  EXPECT_EQ(got[1], 1.f);
  EXPECT_EQ(got[2], 0.f);
  EXPECT_TRUE(std::isnan(got[3])) << got[3];
  EXPECT_EQ(got[4], 5.f);

  std::vector<float> sink(32);
  ldmatrix_misaligned ^ emu::Cfg(1, 32, 1024)(sink.data());
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  EXPECT_NE(emu::last_message().find("16-byte aligned"), std::string::npos) << emu::last_message();
}

// Clusters: every block writes its slot values, then block rank r adds slot r over the
// cluster's blocks (the SSD backward's reduction over heads). Without the first cluster barrier
// a block reads a peer that has not written yet; without the last one a block could exit (and
// its shared memory go) while a peer still reads it.
template <bool kBarrier>
__global__ void cluster_slot_sums(float* out, unsigned* ranks) {
  namespace cg = cooperative_groups;
  const cg::cluster_group cluster = cg::this_cluster();
  float* s = emu::dynamic_shared<float>();
  const unsigned rank = cluster.block_rank(), n = cluster.num_blocks();
  const unsigned block = blockIdx.x + blockIdx.y * gridDim.x;
  s[threadIdx.x] = static_cast<float>(block * 100 + threadIdx.x);
  if (kBarrier) cluster.sync();
  float v = 0.f;
  for (unsigned q = 0; q < n; ++q) v += cluster.map_shared_rank(s, q)[(threadIdx.x + rank) % blockDim.x];
  out[block * blockDim.x + threadIdx.x] = v;
  if (threadIdx.x == 0) ranks[block] = rank;
  cluster.sync();
}

cudaError_t launch_clustered(void (*kernel)(float*, unsigned*), dim3 grid, dim3 cluster, float* out,
                             unsigned* ranks) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = cluster.x;
  attr.val.clusterDim.y = cluster.y;
  attr.val.clusterDim.z = cluster.z;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(64);
  cfg.dynamicSmemBytes = 64 * sizeof(float);
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kernel, out, ranks);
}

TEST(Emulator, ClustersShareSharedMemoryAcrossTheirBlocks) {
  const dim3 grid(2, 4), cluster(1, 2);
  const int blocks = 8, threads = 64;
  for (auto schedule : {emu::Schedule::kForward, emu::Schedule::kReverse}) {
    ScheduleGuard guard(schedule);
    std::vector<float> out(blocks * threads, -1.f);
    std::vector<unsigned> ranks(blocks, 99);
    ASSERT_EQ(launch_clustered(cluster_slot_sums<true>, grid, cluster, out.data(), ranks.data()),
              cudaSuccess)
        << emu::last_message();
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        const unsigned block = x + y * grid.x, rank = y % 2;
        EXPECT_EQ(ranks[block], rank) << "block (" << x << "," << y << ")";
        for (unsigned t = 0; t < threads; ++t) {
          // The cluster's blocks are (x, y0) and (x, y0 + 1).
          const unsigned y0 = y - rank, slot = (t + rank) % threads;
          const float want = static_cast<float>((x + y0 * grid.x) * 100 + slot) +
                             static_cast<float>((x + (y0 + 1) * grid.x) * 100 + slot);
          ASSERT_EQ(out[block * threads + t], want) << "block " << block << " thread " << t;
        }
      }
  }
  // Without the barrier, the block that runs first reads its peer before the peer wrote: in
  // both schedules (blocks of a cluster run one at a time up to a cluster barrier).
  for (auto schedule : {emu::Schedule::kForward, emu::Schedule::kReverse}) {
    ScheduleGuard guard(schedule);
    std::vector<float> out(blocks * threads);
    std::vector<unsigned> ranks(blocks);
    ASSERT_EQ(launch_clustered(cluster_slot_sums<false>, grid, cluster, out.data(), ranks.data()),
              cudaSuccess);
    // The thread that runs last in its block (its own block's slots are all written by then).
    const bool fwd = schedule == emu::Schedule::kForward;
    const unsigned first_rank = fwd ? 0 : 1, last_thread = fwd ? threads - 1 : 0;
    for (unsigned block = 0; block < static_cast<unsigned>(blocks); ++block) {
      const bool runs_first = block / grid.x % 2 == first_rank;
      EXPECT_EQ(std::isnan(out[block * threads + last_thread]), runs_first) << "block " << block;
    }
  }
}

// A block reuses its shared memory after reading its peer's, with no cluster barrier between
// the peer's read of it and the overwrite: the peer, run after it, reads the new values.
__global__ void cluster_overwrite_race(float* out, unsigned*) {
  namespace cg = cooperative_groups;
  const cg::cluster_group cluster = cg::this_cluster();
  float* s = emu::dynamic_shared<float>();
  s[threadIdx.x] = 1.f;
  cluster.sync();
  const float peer = *cluster.map_shared_rank(s + threadIdx.x, cluster.block_rank() ^ 1u);
  s[threadIdx.x] = 2.f;  // a second cluster.sync() belongs before this
  out[blockIdx.x * blockDim.x + threadIdx.x] = peer;
  cluster.sync();
}

TEST(Emulator, ClusterReadsOfOverwrittenSharedMemoryShow) {
  for (auto schedule : {emu::Schedule::kForward, emu::Schedule::kReverse}) {
    ScheduleGuard guard(schedule);
    std::vector<float> out(2 * 64);
    std::vector<unsigned> ranks(2);
    ASSERT_EQ(launch_clustered(cluster_overwrite_race, dim3(2), dim3(2), out.data(), ranks.data()),
              cudaSuccess)
        << emu::last_message();
    // The block run second reads 2 where the kernel meant 1.
    const int second = schedule == emu::Schedule::kForward ? 1 : 0;
    EXPECT_EQ(out[second * 64], 2.f);
    EXPECT_EQ(out[(1 - second) * 64], 1.f);
  }
}

__global__ void cluster_sync_on_one_rank(float* out, unsigned*) {
  namespace cg = cooperative_groups;
  if (cg::this_cluster().block_rank() == 0) cg::this_cluster().sync();
  out[threadIdx.x] = 1.f;
}

__global__ void cluster_static_shared(float* out, unsigned*) {
  static char tag;
  float* s = static_cast<float*>(::emu::static_shared(&tag, 64 * sizeof(float), alignof(float)));
  s[threadIdx.x] = 1.f;
  out[threadIdx.x] = s[threadIdx.x];
}

TEST(Emulator, ReportsClusterFaultsAndLimits) {
  std::vector<float> out(8 * 64);
  std::vector<unsigned> ranks(8);
  // Blocks of one cluster at different barriers: a deadlock on a GPU.
  EXPECT_EQ(launch_clustered(cluster_sync_on_one_rank, dim3(2), dim3(2), out.data(), ranks.data()),
            cudaErrorLaunchFailure);
  EXPECT_NE(emu::last_message().find("deadlock"), std::string::npos) << emu::last_message();
  EXPECT_EQ(launch_clustered(cluster_static_shared, dim3(2), dim3(2), out.data(), ranks.data()),
            cudaErrorLaunchFailure);
  EXPECT_NE(emu::last_message().find("static __shared__"), std::string::npos) << emu::last_message();
  // One block per cluster keeps static shared memory.
  EXPECT_EQ(launch_clustered(cluster_static_shared, dim3(2), dim3(1), out.data(), ranks.data()),
            cudaSuccess)
      << emu::last_message();
  // The cluster must divide the grid and stay within the portable 8 blocks.
  EXPECT_EQ(launch_clustered(cluster_slot_sums<true>, dim3(3), dim3(2), out.data(), ranks.data()),
            cudaErrorInvalidClusterSize);
  EXPECT_EQ(launch_clustered(cluster_slot_sums<true>, dim3(16), dim3(16), out.data(), ranks.data()),
            cudaErrorInvalidClusterSize);
  // Occupancy: clusters of one block per SM, none beyond the kernel's shared memory limit.
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = 4;
  attr.val.clusterDim.y = attr.val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(8);
  cfg.blockDim = dim3(64);
  cfg.dynamicSmemBytes = 1024;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  int active = -1;
  ASSERT_EQ(cudaOccupancyMaxActiveClusters(&active, cluster_slot_sums<true>, &cfg), cudaSuccess);
  EXPECT_EQ(active, emu::device().sm_count / 4);
  cfg.dynamicSmemBytes = 100 * 1024;
  ASSERT_EQ(cudaOccupancyMaxActiveClusters(&active, cluster_slot_sums<true>, &cfg), cudaSuccess);
  EXPECT_EQ(active, 0);
}

// Programmatic dependent launches (kernels/grid_dependency.cuh). kWaitFirst false lets the next
// grid start before this one waited for the previous: the rule that keeps every grid before the
// previous one complete when a dependent starts, reported as a fault.
template <bool kWaitFirst>
__global__ void dependent_double(const float* in, float* out) {
  aim::kernels_emu::prefetch_to_l2(in, 64 * sizeof(float));
  if (kWaitFirst) aim::kernels_emu::wait_for_prior_grid();
  aim::kernels_emu::allow_dependent_grid();
  if (!kWaitFirst) aim::kernels_emu::wait_for_prior_grid();
  out[threadIdx.x] = 2.f * in[threadIdx.x];
}

TEST(Emulator, DependentLaunchesWaitBeforeTheNextGridMayStart) {
  alignas(16) float in[64], out[64];
  for (int i = 0; i < 64; ++i) in[i] = static_cast<float>(i) - 7.f;
  const auto dependent = emu::dependent_launch_count();
  ASSERT_EQ(aim::kernels_emu::launch_maybe_dependent(true, dependent_double<true>, dim3(1), dim3(64), 0, nullptr,
                                                 in, out),
            cudaSuccess)
      << emu::last_message();
  EXPECT_TRUE(emu::last_launch_dependent());
  EXPECT_EQ(emu::dependent_launch_count() - dependent, 1u);
  for (int i = 0; i < 64; ++i) EXPECT_EQ(out[i], 2.f * in[i]);
  // Asked not to, or on a device before sm_90: a plain launch.
  ASSERT_EQ(aim::kernels_emu::launch_maybe_dependent(false, dependent_double<true>, dim3(1), dim3(64), 0, nullptr,
                                                 in, out),
            cudaSuccess);
  EXPECT_FALSE(emu::last_launch_dependent());
  const int saved = emu::device().cc_major;
  emu::device().cc_major = 8;
  ASSERT_EQ(aim::kernels_emu::launch_maybe_dependent(true, dependent_double<true>, dim3(1), dim3(64), 0, nullptr,
                                                 in, out),
            cudaSuccess);
  EXPECT_FALSE(emu::last_launch_dependent());
  emu::device().cc_major = saved;
  EXPECT_EQ(emu::dependent_launch_count() - dependent, 1u);

  EXPECT_EQ(aim::kernels_emu::launch_maybe_dependent(true, dependent_double<false>, dim3(1), dim3(64), 0, nullptr,
                                                 in, out),
            cudaErrorLaunchFailure);
  EXPECT_NE(emu::last_message().find("launch_dependents before griddepcontrol.wait"), std::string::npos)
      << emu::last_message();
}

// An L2 prefetch asks for the 16-byte aligned interior of a range (the instruction's rule, which
// the emulator checks); an instruction outside that rule is reported.
__global__ void prefetch_range(const unsigned char* p, int64_t bytes) { aim::kernels_emu::prefetch_to_l2(p, bytes); }
__global__ void prefetch_raw(const unsigned char* p, unsigned bytes) { emu::prefetch_to_l2(p, bytes); }

TEST(Emulator, PrefetchesFollowTheBulkInstructionsRules) {
  alignas(16) unsigned char buf[256] = {};
  for (const auto& [offset, bytes] : std::vector<std::pair<int, int64_t>>{{0, 256}, {3, 200}, {5, 9}, {0, 0}}) {
    prefetch_range ^ emu::Cfg(1, 32)(buf + offset, bytes);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess) << offset << " + " << bytes << ": " << emu::last_message();
  }
  // A range of 1 MiB or more goes in instructions of less than 1 MiB each.
  std::vector<float> big(3 << 18);  // 3 MiB
  prefetch_range ^ emu::Cfg(1, 1)(reinterpret_cast<const unsigned char*>(big.data()), int64_t{3} << 20);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
  prefetch_raw ^ emu::Cfg(1, 1)(reinterpret_cast<const unsigned char*>(big.data()), 1u << 20);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  prefetch_raw ^ emu::Cfg(1, 32)(buf + 8, 64u);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  EXPECT_NE(emu::last_message().find("cp.async.bulk.prefetch.L2"), std::string::npos) << emu::last_message();
  prefetch_raw ^ emu::Cfg(1, 32)(buf, 24u);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
#if defined(__SANITIZE_ADDRESS__)
  // With the sanitizer, a range past the tensor's allocation is reported.
  std::vector<float> v(64);  // 256 bytes, 16-byte aligned by the allocator
  prefetch_range ^ emu::Cfg(1, 32)(reinterpret_cast<const unsigned char*>(v.data()), int64_t{256});
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << emu::last_message();
  prefetch_range ^ emu::Cfg(1, 32)(reinterpret_cast<const unsigned char*>(v.data()), int64_t{272});
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  EXPECT_NE(emu::last_message().find("outside the allocation"), std::string::npos) << emu::last_message();
#endif
}

#if defined(__SANITIZE_ADDRESS__)
// Built with AddressSanitizer (AIM_EMU_ASAN): an access one element past a global allocation
// or past the launch's dynamic shared memory ends the process with the sanitizer's report.
__global__ void write_past(float* out, int n) {
  out[n + threadIdx.x] = 1.f;
}

__global__ void read_past_shared(float* out, int n) {
  float* s = emu::dynamic_shared<float>();
  out[threadIdx.x] = s[n + threadIdx.x];
}

TEST(EmulatorDeathTest, OutOfBoundsAccessesAreReported) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  std::vector<float> in_bounds(64);
  write_past ^ emu::Cfg(1, 32)(in_bounds.data(), 32);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  read_past_shared ^ emu::Cfg(1, 32, 64 * sizeof(float))(in_bounds.data(), 32);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_DEATH(
      {
        std::vector<float> out(64);
        write_past ^ emu::Cfg(1, 32)(out.data(), 33);
      },
      "heap-buffer-overflow");
  EXPECT_DEATH(
      {
        std::vector<float> out(64);
        read_past_shared ^ emu::Cfg(1, 32, 64 * sizeof(float))(out.data(), 33);
      },
      "use-after-poison");
}

// And with its alignment check: a 16-byte vector load from an address 16 does not divide ends
// the process, as it would fault on a GPU ("misaligned address").
__global__ void copy_vector(const float* in, float* out) {
  reinterpret_cast<float4*>(out)[threadIdx.x] = reinterpret_cast<const float4*>(in)[threadIdx.x];
}

TEST(EmulatorDeathTest, MisalignedVectorAccessesAreReported) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  alignas(16) float in[4 * 33] = {}, out[4 * 32] = {};
  copy_vector ^ emu::Cfg(1, 32)(in, out);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_DEATH(copy_vector ^ emu::Cfg(1, 32)(in + 2, out), "misaligned address");
}
#endif

}  // namespace
