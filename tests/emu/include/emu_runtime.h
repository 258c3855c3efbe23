#pragma once
// A CPU emulator for the CUDA subset kernels/ uses, so that CI (which has no GPU) runs the real
// kernel source against the references. The kernel files are compiled by the host compiler
// after textual rewrites (tests/emu/translate.cmake): `k<<<cfg>>>(args)` becomes
// `k ^ ::emu::Cfg(cfg)(args)`, `extern __shared__ T name[];` a pointer to the block's dynamic
// shared memory, and a static `__shared__` object one poisoned at each block's start.
// Everything else is these headers.
//
// Execution model. Blocks run one after another. The threads of a block are cooperative fibers
// on one OS thread: a thread runs until it reaches a barrier (__syncthreads, or a warp
// collective: shuffles, ballots, wmma tile loads and stores), then the next one runs. A barrier
// releases when every thread it waits for has arrived. Without a barrier, a thread therefore
// sees no write of a thread that runs after it: in the forward schedule a later thread (or
// block), in the reverse schedule (emu::Schedule) an earlier one, so a missing barrier shows in
// one of the two runs. Shared memory starts poisoned (0xff, NaN for floats) in every block.
// wmma fragments hold the whole tile in every lane.
//
// Bounds. Built with AddressSanitizer (the default, AIM_EMU_ASAN), the kernels' loads and stores
// are checked: global memory against the host allocations the tensors live in (an access past
// a tensor's own allocation is reported; one into a parent tensor of a view is not), dynamic
// shared memory against the launch's size (the bytes around it are poisoned), and each static
// shared object against its own size (emu::static_shared leaves poisoned gaps between them).
//
// Thread block clusters (cudaLaunchKernelEx with a cluster dimension; cooperative_groups.h's
// this_cluster()): the blocks of one cluster run together, their threads as fibers of one
// scheduler, each block with its own dynamic shared memory. cluster.sync() is a barrier over
// every thread of the cluster, and map_shared_rank() gives another block's dynamic shared
// memory. The blocks run one at a time, each as far as it gets before a cluster barrier (the
// first rank first, or the last in the reverse schedule), so a read of a peer's shared memory
// that a cluster barrier does not order reads it unwritten (poison) or already overwritten.
// Static shared memory (one object per block of the schedule, not per block of a cluster) is
// reported in a cluster of more than one block.
//
// What it reports (launch status cudaErrorLaunchFailure, message in emu::last_message()):
// a barrier that can never release (threads of one block waiting at different barriers, a
// lane that exited before a full-mask warp collective), lanes of one warp at different
// collectives, a mask naming lanes that do not exist, a wmma tile misaligned or with a leading
// dimension that is not a multiple of 16 bytes; and, as the launch status a GPU gives,
// launch configurations outside the device's limits (block size, grid y/z, dynamic shared memory
// beyond 48 KiB without the opt-in attribute, or beyond the opt-in limit).
//
// Programmatic dependent launches (cudaLaunchKernelEx with programmatic stream serialization)
// run after the previous grid as any launch; a thread that lets the next grid start
// (griddepcontrol.launch_dependents) before it waited for the previous one is reported.
//
// Built for ThreadSanitizer (AIM_EMU_TSAN, tests/emu/CMakeLists.txt: the kernels instrumented,
// the runtime not), every emulated thread is a sanitizer fiber, switched without
// synchronisation, and only what orders memory on a GPU is announced to it:
//   - a thread starts after the host's work before the launch; in a dependent launch, only
//     after what the host had done when it launched the previous grid: the previous grid comes
//     before it only from griddepcontrol.wait on. (From its first launch on, the host's own
//     accesses are not checked, and what it allocates is new memory: ATen's ops, in libraries
//     built without the sanitizer, are not seen anyway. Memory ordering is checked between
//     emulated threads.);
//   - __syncthreads and cluster.sync order the accesses before them (of the block, of the
//     cluster) before those after them;
//   - atomics are relaxed: they do not race with each other and order nothing by themselves.
//     __threadfence (fence.sc) releases what its thread did before it (and what its block did
//     before a barrier it passed) to the fences that come later; a fence acquires, ordering the
//     accesses after it, only in a thread that read an atomic since its previous fence. So a
//     hand-off needs, as PTX's release and acquire patterns do, a fence after the writes and
//     before the arrival atomic, and in the thread that read the count a fence after that
//     atomic (then a barrier for the rest of its block);
//   - the host continues after the grid.
// Shuffles, ballots, ldmatrix and mma order nothing, nor does anything order two blocks, except
// that blocks run in rotating sets of fibers and shared memory (each block is ordered after the
// previous block of its set): four sets for blocks of up to 256 threads, fewer for larger ones
// (at most 1024 threads in all sets; one set, every block ordered after the previous, for
// blocks of 1024). A dependent launch takes the other of two pools of fibers, stacks and sets,
// so nothing of the grid before it is ordered before its early part. wmma tiles are read and
// stored for the sanitizer element by element by the lane that holds them on a GPU. Two
// accesses to one location, one of them a write, that these do not order are reported whatever
// order they ran in: a missing barrier, a lane reading another lane's shared-memory write after
// a shuffle, a cp.async destination read before the wait and a barrier, blocks writing the
// same element, a last-arriving block's hand-off without a fence on either side, a dependent
// grid touching before its wait what the grid before it writes or reads.
//
// What it cannot show: a fence after an atomic the emulator's order makes sufficient where the
// GPU's need not (the fences ran in one order here; what a fence orders after it is what every
// earlier fence ordered before it, arrived or not), a missing atomic, the memory model beyond
// the orderings above, a dependent grid reading early what an ATen op wrote (not seen),
// fast-math rounding, performance.
// The GPU tests (tests/ops/*_cuda_test.cpp) remain the verification on a device.
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif

// ---------------------------------------------------------------- runtime types

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

// The vector types kernels use for 16-byte loads and stores (CUDA's vector_types.h).
struct alignas(8) float2 {
  float x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorLaunchFailure = 4,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidClusterSize = 912,
};
using cudaError = cudaError_t;

struct CUstream_st;
using cudaStream_t = CUstream_st*;

enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr {
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

namespace emu {

/// The emulated device. Defaults are an H100 SXM's; tests may change them (e.g. fewer SMs to
/// reach other tilings) and restore them.
struct DeviceProps {
  int sm_count = 132;
  int smem_per_block = 48 * 1024;
  int smem_optin = 227 * 1024;
  int cc_major = 9;
};
DeviceProps& device();

/// Message of the last failed launch (empty when none failed since the last take).
std::string last_message();
void set_error(cudaError_t err, const std::string& message);
cudaError_t take_error();
cudaError_t peek_error();

/// Kernel launches run so far by this thread (tests check that a path went through a kernel).
uint64_t launch_count();
/// Grid and block of this thread's last kernel launch that ran (tests check which form of a
/// kernel a launch chose).
dim3 last_launch_grid();
dim3 last_launch_block();
/// Whether that launch asked for programmatic stream serialization (a dependent launch), and
/// how many of this thread's launches so far did.
bool last_launch_dependent();
uint64_t dependent_launch_count();

/// The order in which blocks, and the threads of a block between barriers, run. kReverse (the
/// last block first; in each round the last thread first) shows the reads of what an earlier
/// thread or block wrote without a barrier, which kForward lets pass. The default is kForward,
/// or kReverse when the environment sets AIM_EMU_SCHEDULE=reverse (ctest runs the kernel tests
/// in both orders).
enum class Schedule { kForward, kReverse };
Schedule schedule();
void set_schedule(Schedule s);

int func_max_dynamic_smem(const void* func);
void set_func_max_dynamic_smem(const void* func, int bytes);

// ---------------------------------------------------------------- threads and barriers

/// An asynchronous global -> shared copy (cp.async) in flight: the source is read when it is
/// issued, the destination written when the thread waits for its group (emu_warp_mma.h), so a
/// read of the destination before the wait sees what was there before.
struct AsyncCopy {
  void* dst = nullptr;
  unsigned char data[16] = {};
  uint64_t group = 0;  ///< the thread's committed groups when it was issued
};

struct ThreadState {
  dim3 tid;
  int linear = 0;
  std::vector<AsyncCopy> async_copies;  ///< in flight, oldest first
  uint64_t async_committed = 0;         ///< groups committed so far
  bool waited_for_prior_grid = false;   ///< griddepcontrol.wait executed
  bool observed = false;                ///< an atomic since the thread's last fence (ThreadSanitizer)
};
struct BlockState {
  dim3 block_idx, block_dim, grid_dim;
  unsigned char* dynamic_smem = nullptr;
  dim3 cluster_dim;
  unsigned cluster_rank = 0;  ///< the block's rank in its cluster, x fastest
};
extern thread_local ThreadState* g_thread;
extern thread_local BlockState* g_block;

/// Block barrier (__syncthreads).
void block_barrier();
/// Cluster barrier (cooperative_groups::cluster_group::sync): every thread of the cluster.
void cluster_barrier();
/// `addr` (in the calling block's dynamic shared memory) in the dynamic shared memory of the
/// block of rank `rank` in the same cluster.
void* map_shared_rank(const void* addr, unsigned rank);
/// Warp collective: deposits `bits`, waits for the lanes of `mask`, returns the bits `src_lane`
/// deposited (src_lane must be in mask). `op` names the collective for the error messages.
uint64_t warp_exchange(unsigned mask, uint64_t bits, int src_lane, const char* op);
/// Warp collective over `bytes` (at most kGatherBytes) of every lane: deposits this lane's,
/// waits for the lanes of `mask` (all 32 here), then copies lane k's deposit to
/// all + k * bytes for every lane k of the mask.
constexpr size_t kGatherBytes = 64;
void warp_gather(unsigned mask, const void* mine, size_t bytes, void* all, const char* op);
/// A warp collective that exchanges nothing (wmma tile loads and stores).
void warp_collective(unsigned mask, const char* op);
/// Aborts the block from inside a thread with a finding (reported as a launch failure).
[[noreturn]] void fault(const std::string& what);
/// Ballot: every lane of `mask` contributes pred; returns the lanes' bits.
unsigned warp_ballot(unsigned mask, bool pred);

/// griddepcontrol.wait. Launches run one after another here, so the previous grid has always
/// completed; the thread's call is recorded for the check below, and with ThreadSanitizer the
/// thread of a dependent launch is ordered after the previous grid from here on.
void wait_for_prior_grid();
/// griddepcontrol.launch_dependents. A thread that calls it before wait_for_prior_grid() is a
/// fault: the next grid could then start while the grid before this one still runs, and read
/// what that grid has not written yet (kernels/grid_dependency.cuh's rule).
void allow_dependent_grid();
/// cp.async.bulk.prefetch.L2: checks the rules (a 16-byte aligned address, a size that is a
/// positive multiple of 16 under 1 MiB: the SASS keeps 16 bits of it in 16-byte units) and, with the sanitizer, that the range lies inside one
/// allocation (the tensor's); prefetches nothing.
void prefetch_to_l2(const void* p, uint32_t bytes);
/// Bytes asked for by prefetch_to_l2 so far, in every thread (tests check what a kernel asks
/// for ahead of its loads).
uint64_t prefetched_bytes();
/// __threadfence (fence.sc.gpu) for ThreadSanitizer: releases what the thread did so far to
/// the fences after it, and, where the thread read an atomic since its last fence, acquires
/// what the fences before it released.
void device_fence();

inline int lane_id() { return g_thread->linear & 31; }

/// A static shared-memory object of the running block (translate.cmake rewrites each
/// `__shared__` declaration to a call, `tag` the address of a static variable of its own): the
/// same object for every thread of the block, filled with 0xff (NaN for floats) when the first
/// thread reaches the declaration, as a GPU leaves it holding whatever was there, so a read
/// before the block wrote it shows. Objects are apart from each other, the gaps poisoned for
/// AddressSanitizer.
void* static_shared(const void* tag, size_t bytes, size_t align);

template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(g_block->dynamic_smem);
}

// ---------------------------------------------------------------- launch

using BlockBody = void (*)(void* ctx);
/// Runs `body(ctx)` as every thread of every block of the grid. Returns false (with the error
/// recorded) when the configuration is invalid or the emulation found a fault.
bool run_grid(dim3 grid, dim3 block, size_t dynamic_smem, const void* func, BlockBody body,
              void* ctx, dim3 cluster = dim3(1, 1, 1), bool dependent = false);
/// Largest number of blocks a cluster may have (the portable limit; kernels here do not opt in
/// to more).
constexpr unsigned kMaxClusterBlocks = 8;

template <typename... A>
struct PendingLaunch {
  dim3 grid, block;
  size_t smem;
  std::tuple<A...> args;
};

struct Cfg {
  dim3 grid, block;
  size_t smem;
  Cfg(dim3 g, dim3 b, size_t s = 0, cudaStream_t = nullptr) : grid(g), block(b), smem(s) {}
  template <typename... A>
  PendingLaunch<std::decay_t<A>...> operator()(A&&... a) const {
    return {grid, block, smem, std::tuple<std::decay_t<A>...>(std::forward<A>(a)...)};
  }
};

/// Runs `kernel(args...)` over the grid, converting the arguments as a launch does.
template <typename... P, typename... A>
bool launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, dim3 cluster,
                   std::tuple<A...> args, bool dependent = false) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with a wrong argument count");
  struct Ctx {
    void (*kernel)(P...);
    std::tuple<std::decay_t<P>...> args;
  };
  Ctx ctx{kernel, std::apply([](auto&... a) { return std::tuple<std::decay_t<P>...>(a...); }, args)};
  return run_grid(grid, block, smem, reinterpret_cast<const void*>(kernel),
                  [](void* c) {
                    auto* x = static_cast<Ctx*>(c);
                    std::apply(x->kernel, x->args);
                  },
                  &ctx, cluster, dependent);
}

template <typename... P, typename... A>
void operator^(void (*kernel)(P...), PendingLaunch<A...>&& launch) {
  launch_kernel(kernel, launch.grid, launch.block, launch.smem, dim3(1, 1, 1), std::move(launch.args));
}

}  // namespace emu

// ---------------------------------------------------------------- language

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Static shared memory in code translate.cmake does not rewrite (the emulator's own tests): one
// object per OS thread, shared by the fibers (threads) of the block running on it. kernels/ gets
// one object per block instead (emu::static_shared).
#define __shared__ static thread_local

// The built-in variables, set by the scheduler before it runs a thread (variables, not macros,
// so that fields of the same names, e.g. cudaLaunchConfig_t's, keep theirs).
extern thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

inline void __syncthreads() { ::emu::block_barrier(); }

template <typename T>
inline uint64_t emu_bits_of(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a wide type");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
inline T emu_from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  const int lane = ::emu::lane_id();
  const int s = (lane & ~(width - 1)) + (src & (width - 1));
  return emu_from_bits<T>(::emu::warp_exchange(mask, emu_bits_of(v), s, "__shfl_sync"));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = ::emu::lane_id();
  int s = lane ^ lane_mask;
  if ((s & ~(width - 1)) != (lane & ~(width - 1))) s = lane;
  return emu_from_bits<T>(::emu::warp_exchange(mask, emu_bits_of(v), s, "__shfl_xor_sync"));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = ::emu::lane_id();
  int s = lane - static_cast<int>(delta);
  if (s < (lane & ~(width - 1))) s = lane;
  return emu_from_bits<T>(::emu::warp_exchange(mask, emu_bits_of(v), s, "__shfl_up_sync"));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = ::emu::lane_id();
  int s = lane + static_cast<int>(delta);
  if (s >= (lane & ~(width - 1)) + width) s = lane;
  return emu_from_bits<T>(::emu::warp_exchange(mask, emu_bits_of(v), s, "__shfl_down_sync"));
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return ::emu::warp_ballot(mask, pred != 0); }

// Atomics: blocks run one at a time and fibers switch only at barriers, so these are plain.
// (The value's type follows the address's, as CUDA's overloads do.) For ThreadSanitizer they
// are relaxed atomics: they do not race with each other and order nothing (a fence does).
template <typename T>
struct emu_same_type {
  using type = T;
};
// The old value at p, replaced by old + v (add) or by v.
template <typename T>
inline T emu_atomic_update(T* p, T v, bool add) {
#if defined(__SANITIZE_THREAD__)
  ::emu::g_thread->observed = true;
  if constexpr (std::is_integral_v<T>) {
    return add ? __atomic_fetch_add(p, v, __ATOMIC_RELAXED) : __atomic_exchange_n(p, v, __ATOMIC_RELAXED);
  } else {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomics on 4- or 8-byte values");
    using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
    Bits* bits = reinterpret_cast<Bits*>(p);
    Bits seen = __atomic_load_n(bits, __ATOMIC_RELAXED);
    for (;;) {
      T old;
      std::memcpy(&old, &seen, sizeof(T));
      const T next = add ? old + v : v;
      Bits want;
      std::memcpy(&want, &next, sizeof(T));
      if (__atomic_compare_exchange_n(bits, &seen, want, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return old;
    }
  }
#else
  const T old = *p;
  *p = add ? old + v : v;
  return old;
#endif
}
template <typename T>
inline T atomicAdd(T* p, typename emu_same_type<T>::type v) {
  return emu_atomic_update(p, v, true);
}
template <typename T>
inline T atomicExch(T* p, typename emu_same_type<T>::type v) {
  return emu_atomic_update(p, v, false);
}

// Memory ordering: blocks run one after another, so a fence orders nothing that is not already
// ordered (for ThreadSanitizer it is announced: fence.sc, see the model above), and a load past
// L1 is a load.
inline void __threadfence() {
#if defined(__SANITIZE_THREAD__)
  ::emu::device_fence();
#endif
}
template <typename T>
inline T __ldcg(const T* p) {
  return *p;
}

// ---------------------------------------------------------------- math intrinsics
// The GPU's fast-math versions differ from these in the last bits; the tests' tolerances are
// the ones stated for the device.

inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline unsigned __float_as_uint(float f) { return emu_from_bits<unsigned>(emu_bits_of(f)); }
inline float __uint_as_float(unsigned u) { return emu_from_bits<float>(emu_bits_of(u)); }
inline int __float_as_int(float f) { return emu_from_bits<int>(emu_bits_of(f)); }
inline float __int_as_float(int u) { return emu_from_bits<float>(emu_bits_of(u)); }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __clz(unsigned v) { return v == 0 ? 32 : __builtin_clz(v); }
inline int __clzll(unsigned long long v) { return v == 0 ? 64 : __builtin_clzll(v); }
inline int __ffs(unsigned v) { return __builtin_ffs(static_cast<int>(v)); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}
inline unsigned long long __double2ull_rn(double x) {
  return static_cast<unsigned long long>(std::nearbyint(x));
}
inline unsigned long long __double2ull_rd(double x) {
  return static_cast<unsigned long long>(std::floor(x));
}
// CUDA's global min/max overloads.
#define EMU_MINMAX(T)                                 \
  inline T min(T a, T b) { return b < a ? b : a; } \
  inline T max(T a, T b) { return a < b ? b : a; }
EMU_MINMAX(int)
EMU_MINMAX(unsigned)
EMU_MINMAX(long)
EMU_MINMAX(unsigned long)
EMU_MINMAX(long long)
EMU_MINMAX(unsigned long long)
EMU_MINMAX(float)
EMU_MINMAX(double)
#undef EMU_MINMAX

// ---------------------------------------------------------------- host API

inline cudaError_t cudaGetLastError() { return ::emu::take_error(); }
inline cudaError_t cudaPeekAtLastError() { return ::emu::peek_error(); }
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "error";
  }
}
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *v = ::emu::device().sm_count; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = ::emu::device().smem_per_block; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = ::emu::device().smem_optin; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *v = ::emu::device().cc_major; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
// Extended launches: a cluster dimension, and programmatic stream serialization (recorded; the
// grids run in order either way).
enum cudaLaunchAttributeID {
  cudaLaunchAttributeClusterDimension = 4,
  cudaLaunchAttributeProgrammaticStreamSerialization = 6,
};
union cudaLaunchAttributeValue {
  struct {
    unsigned x, y, z;
  } clusterDim;
  int programmaticStreamSerializationAllowed;
  char pad[64];
};
struct cudaLaunchAttribute {
  cudaLaunchAttributeID id;
  cudaLaunchAttributeValue val;
};
struct cudaLaunchConfig_t {
  dim3 gridDim, blockDim;
  size_t dynamicSmemBytes = 0;
  cudaStream_t stream = nullptr;
  cudaLaunchAttribute* attrs = nullptr;
  unsigned numAttrs = 0;
};

namespace emu {
/// The cluster dimension a launch configuration asks for (1 x 1 x 1 without the attribute),
/// and whether it is a programmatic dependent launch; false for an attribute not emulated.
inline bool launch_attributes(const cudaLaunchConfig_t* config, dim3* cluster, bool* dependent = nullptr) {
  *cluster = dim3(1, 1, 1);
  if (dependent != nullptr) *dependent = false;
  for (unsigned i = 0; i < config->numAttrs; ++i) {
    const auto& a = config->attrs[i];
    if (a.id == cudaLaunchAttributeClusterDimension) {
      *cluster = dim3(a.val.clusterDim.x, a.val.clusterDim.y, a.val.clusterDim.z);
    } else if (a.id == cudaLaunchAttributeProgrammaticStreamSerialization) {
      if (dependent != nullptr) *dependent = a.val.programmaticStreamSerializationAllowed != 0;
    } else {
      return false;
    }
  }
  return true;
}
}  // namespace emu

template <typename... P, typename... A>
inline cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* config, void (*kernel)(P...),
                                      A&&... args) {
  dim3 cluster;
  bool dependent = false;
  if (!::emu::launch_attributes(config, &cluster, &dependent)) {
    ::emu::set_error(cudaErrorInvalidValue, "cudaLaunchKernelEx: an attribute the emulator does not know");
    return ::emu::take_error();
  }
  ::emu::launch_kernel(kernel, config->gridDim, config->blockDim, config->dynamicSmemBytes, cluster,
                       std::tuple<std::decay_t<A>...>(std::forward<A>(args)...), dependent);
  return ::emu::take_error();
}

/// Clusters of the configuration's size that fit on the device at once: one block per SM when
/// the shared memory is within the kernel's limit (the emulator has no register or occupancy
/// model), else none.
template <typename F>
inline cudaError_t cudaOccupancyMaxActiveClusters(int* count, F* func, const cudaLaunchConfig_t* config) {
  dim3 cluster;
  if (!::emu::launch_attributes(config, &cluster)) return cudaErrorInvalidValue;
  const unsigned blocks = cluster.x * cluster.y * cluster.z;
  if (blocks == 0 || blocks > ::emu::kMaxClusterBlocks) return cudaErrorInvalidClusterSize;
  const size_t allowed = static_cast<size_t>(::emu::func_max_dynamic_smem(reinterpret_cast<const void*>(func)));
  *count = config->dynamicSmemBytes <= allowed ? ::emu::device().sm_count / static_cast<int>(blocks) : 0;
  return cudaSuccess;
}

template <typename F>
inline cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (value < 0 || value > ::emu::device().smem_optin) return cudaErrorInvalidValue;
  ::emu::set_func_max_dynamic_smem(reinterpret_cast<const void*>(func), value);
  return cudaSuccess;
}
