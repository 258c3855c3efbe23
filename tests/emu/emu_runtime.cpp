// The emulator's scheduler: the threads of a block as fibers, barriers, warp
// collectives and launch checks. See include/emu_runtime.h for the model.
#include "emu_runtime.h"

#include <sys/mman.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <vector>

// Built with AddressSanitizer (AIM_EMU_ASAN): the kernels' memory accesses are checked, the
// fiber switches are announced to it, and the shared memory around a launch's is poisoned.
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define AIM_EMU_ASAN 1
// LibTorch keeps process-lifetime allocations (no leak report at exit) and is not built with
// the sanitizer (allocations and frees may pair new with free across the boundary).
extern "C" const char* __asan_default_options() {
  return "detect_leaks=0:alloc_dealloc_mismatch=0";
}
#else
#define AIM_EMU_ASAN 0
#endif

// Built for ThreadSanitizer (AIM_EMU_TSAN: the kernels instrumented, this file not): every
// emulated thread is a sanitizer fiber, switched without synchronisation, and the orderings a
// GPU guarantees are announced as acquire / release pairs (see include/emu_runtime.h).
#if defined(AIM_EMU_TSAN)
#include <sanitizer/tsan_interface.h>
#define AIM_EMU_TSAN_ON 1
// The sanitizer's dynamic annotations.
extern "C" void AnnotateIgnoreWritesBegin(const char* file, int line);
extern "C" void AnnotateIgnoreWritesEnd(const char* file, int line);
extern "C" void AnnotateIgnoreSyncBegin(const char* file, int line);
extern "C" void AnnotateIgnoreSyncEnd(const char* file, int line);
#else
#define AIM_EMU_TSAN_ON 0
#endif

thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {

thread_local ThreadState* g_thread = nullptr;
thread_local BlockState* g_block = nullptr;

namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr unsigned kFullMask = 0xffffffffu;

struct ErrorState {
  cudaError_t err = cudaSuccess;
  std::string message;
};
thread_local ErrorState t_error;
thread_local uint64_t t_launches = 0;
thread_local dim3 t_last_grid, t_last_block;
thread_local bool t_last_dependent = false;
thread_local uint64_t t_dependent_launches = 0;

std::mutex g_attr_mutex;
std::map<const void*, int>& func_attrs() {
  static std::map<const void*, int> m;
  return m;
}

// ---------------------------------------------------------------- fiber contexts

#if defined(__x86_64__)
// A minimal switch: callee-saved registers and the x87 / SSE control words, on the fibers' own
// stacks. ucontext's swapcontext also saves the signal mask with a system call per switch, which
// took three quarters of the emulated tests' time.
extern "C" void aim_emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl aim_emu_switch
    .type aim_emu_switch, @function
aim_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $16, %rsp
    stmxcsr 8(%rsp)
    fnstcw (%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr 8(%rsp)
    fldcw (%rsp)
    addq $16, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size aim_emu_switch, .-aim_emu_switch
)");

struct Context {
  void* sp = nullptr;
};

// A context that starts `entry` (which never returns) on [stack, stack + bytes): the frame
// aim_emu_switch pops, then entry's address for its `ret`, then a null return address, with the
// stack aligned as at a call.
void context_make(Context& c, void* stack, size_t bytes, void (*entry)()) {
  auto top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t{15};
  auto* slot = reinterpret_cast<uint64_t*>(top);
  *--slot = 0;                                     // entry's return address (never used)
  *--slot = reinterpret_cast<uint64_t>(entry);     // popped by ret
  for (int r = 0; r < 6; ++r) *--slot = 0;         // rbp, rbx, r12-r15
  slot -= 2;                                       // x87 control word, MXCSR
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  // Plain stores (not memcpy, which ThreadSanitizer sees as the host's writes to the stack).
  *reinterpret_cast<volatile uint16_t*>(slot) = fpucw;
  *reinterpret_cast<volatile uint32_t*>(reinterpret_cast<char*>(slot) + 8) = mxcsr;
  c.sp = slot;
}

void context_switch(Context& from, Context& to) { aim_emu_switch(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc{};
};

void context_make(Context& c, void* stack, size_t bytes, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;  // entry never returns
  makecontext(&c.uc, entry, 0);
}

void context_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

// ---------------------------------------------------------------- blocks

enum class Wait { kRunning, kBlock, kCluster, kWarp, kDone };

struct Fiber {
  ThreadState state;
  int block = 0;  // the block's rank in the cluster
  int index = 0;  // in Block::fibers: block * threads + state.linear
  Context ctx;
  Wait wait = Wait::kRunning;
  unsigned mask = 0;
  const char* op = nullptr;
  uint64_t collectives = 0;  // warp collectives entered so far
  uint64_t deposit[2] = {0, 0};
  unsigned char wide[2][kGatherBytes] = {};  // warp_gather's deposits, by the same slots
  void* stack = nullptr;
  void* tsan = nullptr;  // the fiber's sanitizer context (AIM_EMU_TSAN)
};

// Blocks run in rotating sets of fibers, stacks, thread states and shared memory, so that with
// ThreadSanitizer only blocks a set count apart are ordered (through their set's objects): a
// race between blocks of different sets shows. Up to kSets sets of at most 1024 threads in all
// (the sanitizer's barrier costs grow with the product of a block's threads and all the fibers
// it knows); one set otherwise.
constexpr int kSets = AIM_EMU_TSAN_ON ? 4 : 1;
// With ThreadSanitizer, a dependent launch runs on the other of two pools of fibers, stacks and
// sets than the grid before it: a fiber's own history is ordered before it, so the previous
// grid's fibers would otherwise be ordered before the early part of the dependent one.
constexpr int kPools = AIM_EMU_TSAN_ON ? 2 : 1;
int sets_for(size_t fibers) {
  int n = 1;
  while (n < kSets && (n + 1) * fibers <= 1024) ++n;
  return n;
}

// The sanitizer's synchronisation objects of a set (their addresses are the keys).
struct SetSync {
  char done[2] = {};                      // the set's blocks have finished, by parity of their run
  unsigned runs = 0;                      // blocks run on the set so far
  char cluster = 0;                       // cluster.sync
  char block[kMaxClusterBlocks] = {};     // __syncthreads, per block of the cluster
};

// Static __shared__ objects of a block (translate.cmake's rewrite): carved from an arena at the
// first thread's declaration in each block, poisoned then.
constexpr size_t kStaticSharedBytes = 64 * 1024;  // CUDA allows 48 KiB
constexpr size_t kStaticSharedGap = 64;           // between objects, poisoned for AddressSanitizer
struct StaticShared {
  unsigned char* arena = nullptr;
  size_t used = 0;
  size_t bytes = 0;  // the objects' sizes, without the gaps: what the kernel declares
  std::vector<std::pair<const void*, void*>> objects;  // (declaration's tag, object) this block
};

// The blocks of one cluster (one block without clusters), run together.
struct Block {
  std::vector<BlockState> states;  // by rank in the cluster
  int threads = 0;                 // per block
  size_t smem_bytes = 0;           // dynamic shared memory per block
  int smem_attribute = -1;         // the kernel's cudaFuncSetAttribute limit; -1: not set
  std::vector<Fiber> fibers;       // block-major
  Context scheduler;
  BlockBody body = nullptr;
  void* body_ctx = nullptr;
  Fiber* current = nullptr;
  int pool = 0;                     // the grid's pool (kPools)
  int set = 0;                      // the running set (kSets)
  bool early = false;               // a dependent launch's threads start before the previous
                                    // grid's end (ThreadSanitizer's model)
  StaticShared statics;             // the running set's static shared memory
  bool fault = false;
  std::string fault_message;
};
thread_local Block* t_block = nullptr;

// Per OS thread and set, kept across launches: the synchronisation objects and the static
// shared arena.
struct SetResources {
  SetSync sync;
  unsigned char* statics = nullptr;
};
thread_local SetResources t_sets[kPools][kSets];

#if AIM_EMU_TSAN_ON
// The launching thread's sanitizer context, and the objects that order a grid after what the
// host did before it and the host after the grid's end.
// t_prior_launch: the host as it was when it launched the previous grid (released at that
// grid's end, before the host is ordered after the grid): where a dependent grid's threads
// start. t_fence: fence.sc, per pool.
thread_local void* t_host_fiber = nullptr;
thread_local char t_grid_start = 0, t_grid_done = 0, t_prior_launch = 0;
thread_local char t_fence[kPools] = {};
thread_local bool t_launched = false;  // a grid has run on this thread
thread_local int t_last_pool = 0;
// From its first launch on, the host's own accesses are not seen (ATen's, in libraries built
// without the sanitizer, never are), and what it allocates is new memory to the sanitizer
// rather than the host's write: memory ordering is checked between emulated threads, and a
// dependent grid's threads, ordered after the host only as it was at the previous launch, do
// not see a tensor allocated since as written by it. Ended at the thread's exit (the sanitizer
// reports a thread that ends with its accesses ignored).
struct HostAccessesUnseen {
  bool on = false;
  void begin() {
    if (!on) AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
    on = true;
  }
  ~HostAccessesUnseen() {
    if (on) AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
  }
};
thread_local HostAccessesUnseen t_host_unseen;
// Sanitizer fibers by (pool, set and thread), created once (each takes a fraction of a
// millisecond), without the ordering after the creating thread that creation implies: a fiber
// is ordered only by what it acquires.
thread_local std::vector<void*> t_tsan_fibers[kPools];
void* tsan_fiber(int pool, size_t i) {
  auto& fibers = t_tsan_fibers[pool];
  while (fibers.size() <= i) {
    AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
    void* f = __tsan_create_fiber(0);
    AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
    __tsan_set_fiber_name(f, pool == 0 ? "emulated GPU thread" : "emulated GPU thread (dependent launch)");
    fibers.push_back(f);
  }
  return fibers[i];
}
#endif

// Byte copies and fills the sanitizer does not see (it intercepts memcpy and memset): the
// emulator's own moves of lanes' deposits and its poisoning of shared memory are not accesses
// of the emulated program.
void copy_bytes(void* dst, const void* src, size_t n) {
#if AIM_EMU_TSAN_ON
  auto* d = static_cast<volatile unsigned char*>(dst);
  const auto* s = static_cast<const volatile unsigned char*>(src);
  for (size_t i = 0; i < n; ++i) d[i] = s[i];
#else
  std::memcpy(dst, src, n);
#endif
}
void fill_bytes(void* dst, unsigned char v, size_t n) {
#if AIM_EMU_TSAN_ON
  auto* d = static_cast<volatile unsigned char*>(dst);
  size_t i = 0;
  if (reinterpret_cast<uintptr_t>(dst) % 8 == 0) {
    auto* w = static_cast<volatile uint64_t*>(dst);
    const uint64_t word = 0x0101010101010101ull * v;
    for (; i + 8 <= n; i += 8) w[i / 8] = word;
  }
  for (; i < n; ++i) d[i] = v;
#else
  std::memset(dst, v, n);
#endif
}

#if AIM_EMU_ASAN
// The scheduler's stack, as the sanitizer reports it when a fiber starts or resumes.
thread_local const void* t_sched_bottom = nullptr;
thread_local size_t t_sched_size = 0;
#endif

size_t page_size() {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return page;
}
char* stack_bottom(const Fiber& f) { return static_cast<char*>(f.stack) + page_size(); }

// The scheduler runs fiber `f` until it waits, exits or faults.
void enter_fiber(Block& b, Fiber& f) {
#if AIM_EMU_TSAN_ON
  __tsan_switch_to_fiber(f.tsan, __tsan_switch_to_fiber_no_sync);
#endif
#if AIM_EMU_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(&fake_stack, stack_bottom(f), kStackBytes);
#endif
  context_switch(b.scheduler, f.ctx);
#if AIM_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
}

// The running fiber `f` returns to the scheduler; `exiting`: it is never resumed.
void leave_fiber(Fiber& f, bool exiting) {
#if AIM_EMU_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(exiting ? nullptr : &fake_stack, t_sched_bottom, t_sched_size);
#endif
#if AIM_EMU_TSAN_ON
  __tsan_switch_to_fiber(t_host_fiber, __tsan_switch_to_fiber_no_sync);
#endif
  context_switch(f.ctx, t_block->scheduler);
  if (exiting) std::abort();
#if AIM_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, &t_sched_bottom, &t_sched_size);
#endif
}

void fiber_entry() {
#if AIM_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &t_sched_bottom, &t_sched_size);
#endif
  Block* b = t_block;
#if AIM_EMU_TSAN_ON
  // A thread starts after what the host did before the launch (in a dependent launch: before
  // the previous launch) and after the blocks that ran on its set before (the set's objects are
  // reused); not after any other block, nor after threads of its own block that have already
  // finished (they release into the other object).
  SetSync& sync = t_sets[b->pool][b->set].sync;
  const unsigned parity = sync.runs & 1u;
  __tsan_acquire(b->early ? &t_prior_launch : &t_grid_start);
  __tsan_acquire(&sync.done[parity]);
#endif
  b->body(b->body_ctx);
  Fiber& f = *b->current;
#if AIM_EMU_TSAN_ON
  __tsan_release(&sync.done[parity ^ 1u]);
  __tsan_release(&t_grid_done);
#endif
  f.wait = Wait::kDone;
  leave_fiber(f, /*exiting=*/true);
}

std::string where(const Fiber& f) {
  const BlockState& s = t_block->states[f.block];
  std::ostringstream o;
  o << "block (" << s.block_idx.x << "," << s.block_idx.y << "," << s.block_idx.z << ") thread ("
    << f.state.tid.x << "," << f.state.tid.y << "," << f.state.tid.z << ")";
  return o.str();
}

const char* wait_name(Wait w) {
  switch (w) {
    case Wait::kRunning: return "running";
    case Wait::kBlock: return "__syncthreads";
    case Wait::kCluster: return "cluster.sync";
    case Wait::kWarp: return "a warp collective";
    case Wait::kDone: return "exited";
  }
  return "?";
}

void suspend(Fiber& f) { leave_fiber(f, /*exiting=*/false); }

// Raises a fault from inside a fiber: the scheduler abandons the block.
[[noreturn]] void fault_in_fiber(Fiber& f, const std::string& what) {
  t_block->fault = true;
  t_block->fault_message = where(f) + ": " + what;
  f.wait = Wait::kDone;
  leave_fiber(f, /*exiting=*/true);
  __builtin_unreachable();
}

// Releases what can be released once every fiber waits or is done. Returns false on deadlock
// (the fault is recorded).
// `only` >= 0: only what block `only` of the cluster can release by itself (its __syncthreads,
// its warps' collectives), and false without a fault when there is none.
bool release(Block& b, int only = -1) {
  const int nblocks = static_cast<int>(b.states.size());
  const int first_block = only < 0 ? 0 : only, end_block = only < 0 ? nblocks : only + 1;
  const int n = end_block * b.threads;
  // A cluster barrier releases when every thread of the cluster waits at it (kernels here call
  // it from every thread; one that exited first is reported); a block barrier when every live
  // thread of that block waits at it.
  if (only < 0) {
    int alive = 0, at_cluster = 0;
    const Fiber* exited = nullptr;
    for (const auto& f : b.fibers) {
      if (f.wait == Wait::kDone) {
        exited = &f;
        continue;
      }
      ++alive;
      if (f.wait == Wait::kCluster) ++at_cluster;
    }
    if (alive > 0 && at_cluster == alive) {
      if (exited != nullptr) {
        for (const auto& f : b.fibers)
          if (f.wait == Wait::kCluster) {
            b.fault = true;
            b.fault_message = "deadlock: " + where(f) + " waits at cluster.sync for " + where(*exited) +
                              ", which has exited";
            return false;
          }
      }
      for (auto& f : b.fibers)
        if (f.wait == Wait::kCluster) f.wait = Wait::kRunning;
      return true;
    }
  }
  bool released = false;
  for (int k = first_block; k < end_block; ++k) {
    int alive = 0, at_block = 0;
    for (int i = k * b.threads; i < (k + 1) * b.threads; ++i) {
      const Fiber& f = b.fibers[i];
      if (f.wait == Wait::kDone) continue;
      ++alive;
      if (f.wait == Wait::kBlock) ++at_block;
    }
    if (alive > 0 && at_block == alive) {
      for (int i = k * b.threads; i < (k + 1) * b.threads; ++i)
        if (b.fibers[i].wait == Wait::kBlock) b.fibers[i].wait = Wait::kRunning;
      released = true;
    }
  }
  if (released) return true;
  std::string problem;
  for (int w0 = first_block * b.threads; w0 < n; w0 += (w0 % b.threads) + 32 < b.threads ? 32 : b.threads - w0 % b.threads) {
    Fiber* first = nullptr;
    const int warp_end = std::min(w0 + 32, (w0 / b.threads + 1) * b.threads);
    for (int i = w0; i < warp_end; ++i)
      if (b.fibers[i].wait == Wait::kWarp) {
        first = &b.fibers[i];
        break;
      }
    if (first == nullptr) continue;
    const unsigned mask = first->mask;
    bool ready = true;
    for (int l = 0; l < 32 && ready; ++l) {
      if (!(mask >> l & 1u)) continue;
      Fiber& f = b.fibers[w0 + l];
      if (f.wait == Wait::kWarp) {
        if (f.mask != mask) {
          problem = where(f) + " is in a warp collective with mask " + std::to_string(f.mask) +
                    " while lane " + std::to_string(first->state.linear & 31) + " uses mask " +
                    std::to_string(mask);
          ready = false;
        } else if (mask == kFullMask && f.collectives != first->collectives) {
          problem = where(f) + " is at its warp collective #" + std::to_string(f.collectives) +
                    " (" + f.op + ") while " + where(*first) + " is at #" +
                    std::to_string(first->collectives) + " (" + first->op + ")";
          ready = false;
        }
      } else {
        ready = false;
        if (problem.empty() || f.wait == Wait::kDone) {
          problem = where(*first) + " waits in " + first->op + " for " + where(f) + ", which " +
                    (f.wait == Wait::kDone ? "has exited" : std::string("waits at ") + wait_name(f.wait));
        }
      }
    }
    if (ready) {
      for (int l = 0; l < 32; ++l)
        if (mask >> l & 1u) b.fibers[w0 + l].wait = Wait::kRunning;
      released = true;
    }
  }
  if (released) return true;
  if (only >= 0) return false;
  b.fault = true;
  if (problem.empty()) {
    for (const auto& f : b.fibers)
      if (f.wait == Wait::kBlock || f.wait == Wait::kCluster) {
        problem = where(f) + " waits at " + wait_name(f.wait) + ", but other threads wait elsewhere";
        break;
      }
  }
  b.fault_message = "deadlock: " + problem;
  return false;
}

// Fiber stacks, kept for the thread's later launches (a test makes thousands of launches).
struct StackPool {
  std::vector<void*> stacks;
  ~StackPool() {
    for (void* p : stacks) munmap(p, kStackBytes + page_size());
  }
  void* get(size_t i) {
    while (stacks.size() <= i) {
      const size_t page = page_size();
      void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) throw std::runtime_error("emu: cannot map a fiber stack");
      mprotect(p, page, PROT_NONE);  // guard page below the stack
      stacks.push_back(p);
    }
    return stacks[i];
  }
};
thread_local StackPool t_stacks[kPools];

// Runs one block to completion. Returns false on a fault.
bool run_block(Block& b) {
  b.statics.used = 0;
  b.statics.bytes = 0;
  b.statics.objects.clear();
#if AIM_EMU_ASAN
  ASAN_POISON_MEMORY_REGION(b.statics.arena, kStaticSharedBytes);
#endif
  for (auto& f : b.fibers) {
    f.wait = Wait::kRunning;
    f.collectives = 0;
    f.state.async_copies.clear();
    f.state.async_committed = 0;
    f.state.waited_for_prior_grid = false;
    f.state.observed = false;
    context_make(f.ctx, stack_bottom(f), kStackBytes, fiber_entry);
  }
  const bool reverse = schedule() == Schedule::kReverse;
  const int nblocks = static_cast<int>(b.states.size());
  const int t = b.threads;
  for (;;) {
    // The blocks of a cluster one at a time, each as far as it gets by itself (up to a cluster
    // barrier, or its end): the most skew between them, so a read of a peer's shared memory
    // without a cluster barrier sees it unwritten (or already overwritten).
    for (int kk = 0; kk < nblocks; ++kk) {
      const int k = reverse ? nblocks - 1 - kk : kk;
      for (;;) {
        bool ran = false;
        for (int i = 0; i < t; ++i) {
          Fiber& f = b.fibers[k * t + (reverse ? t - 1 - i : i)];
          if (f.wait != Wait::kRunning) continue;
          ran = true;
          b.current = &f;
          g_thread = &f.state;
          g_block = &b.states[f.block];
          threadIdx = f.state.tid;
          blockIdx = g_block->block_idx;
          blockDim = g_block->block_dim;
          gridDim = g_block->grid_dim;
          enter_fiber(b, f);
          if (b.fault) return false;
        }
        if (!ran && !release(b, k)) break;
      }
    }
    bool any_alive = false;
    for (const auto& f : b.fibers) any_alive |= f.wait != Wait::kDone;
    if (!any_alive) return true;
    if (!release(b)) return false;
  }
}

}  // namespace

DeviceProps& device() {
  static DeviceProps d;
  return d;
}

std::string last_message() { return t_error.message; }

uint64_t launch_count() { return t_launches; }
dim3 last_launch_grid() { return t_last_grid; }
dim3 last_launch_block() { return t_last_block; }
bool last_launch_dependent() { return t_last_dependent; }
uint64_t dependent_launch_count() { return t_dependent_launches; }

namespace {
std::atomic<int> g_schedule{-1};
}  // namespace

Schedule schedule() {
  int s = g_schedule.load(std::memory_order_relaxed);
  if (s < 0) {
    const char* env = std::getenv("AIM_EMU_SCHEDULE");
    const std::string v = env == nullptr ? "" : env;
    if (v != "" && v != "forward" && v != "reverse") {
      throw std::runtime_error("AIM_EMU_SCHEDULE: expected forward or reverse, found '" + v + "'");
    }
    s = v == "reverse" ? 1 : 0;
    g_schedule.store(s, std::memory_order_relaxed);
  }
  return s == 1 ? Schedule::kReverse : Schedule::kForward;
}

void set_schedule(Schedule s) {
  g_schedule.store(s == Schedule::kReverse ? 1 : 0, std::memory_order_relaxed);
}

void set_error(cudaError_t err, const std::string& message) {
  if (t_error.err == cudaSuccess) {
    t_error.err = err;
    t_error.message = message;
  }
}

cudaError_t take_error() {
  const cudaError_t e = t_error.err;
  t_error.err = cudaSuccess;
  return e;
}

cudaError_t peek_error() { return t_error.err; }

int func_max_dynamic_smem(const void* func) {
  std::lock_guard<std::mutex> lock(g_attr_mutex);
  auto it = func_attrs().find(func);
  return it == func_attrs().end() ? device().smem_per_block : it->second;
}

int func_dynamic_smem_attribute(const void* func) {
  std::lock_guard<std::mutex> lock(g_attr_mutex);
  auto it = func_attrs().find(func);
  return it == func_attrs().end() ? -1 : it->second;
}

void set_func_max_dynamic_smem(const void* func, int bytes) {
  std::lock_guard<std::mutex> lock(g_attr_mutex);
  func_attrs()[func] = bytes;
}

void* static_shared(const void* tag, size_t bytes, size_t align) {
  Block& b = *t_block;
  if (b.states.size() > 1) {
    fault("static __shared__ memory in a cluster of " + std::to_string(b.states.size()) +
          " blocks: the emulator keeps one copy per set of blocks, not per block of a cluster");
  }
  StaticShared& st = b.statics;
  for (const auto& [t, object] : st.objects) {
    if (t == tag) return object;
  }
  const size_t at = (st.used + kStaticSharedGap + align - 1) / align * align;
  if (at + bytes > kStaticSharedBytes) {
    fault("static __shared__ memory beyond " + std::to_string(kStaticSharedBytes) + " bytes in one block");
  }
  unsigned char* object = st.arena + at;
  st.used = at + bytes;
  st.bytes += bytes;
  // Static and dynamic shared memory share one limit: 48 KiB together, unless the kernel opted in
  // to more dynamic memory (the GPU refuses the launch; here the first block says so).
  const size_t per_block = static_cast<size_t>(device().smem_per_block);
  const size_t dynamic_limit = b.smem_attribute >= 0 ? static_cast<size_t>(b.smem_attribute)
                                                     : per_block - std::min(st.bytes, per_block);
  if (b.smem_bytes > dynamic_limit) {
    fault("launch beyond the shared memory limit: " + std::to_string(b.smem_bytes) + " B dynamic + " +
          std::to_string(st.bytes) + " B static shared memory pass " + std::to_string(per_block) +
          " B without cudaFuncAttributeMaxDynamicSharedMemorySize set for the kernel");
  }
#if AIM_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(object, bytes);
#endif
  fill_bytes(object, 0xff, bytes);
  st.objects.emplace_back(tag, object);
  return object;
}

void block_barrier() {
  Fiber& f = *t_block->current;
#if AIM_EMU_TSAN_ON
  char* sync = &t_sets[t_block->pool][t_block->set].sync.block[f.block];
  __tsan_release(sync);
#endif
  f.wait = Wait::kBlock;
  suspend(f);
#if AIM_EMU_TSAN_ON
  __tsan_acquire(sync);
#endif
}

void cluster_barrier() {
  Fiber& f = *t_block->current;
#if AIM_EMU_TSAN_ON
  char* sync = &t_sets[t_block->pool][t_block->set].sync.cluster;
  __tsan_release(sync);
#endif
  f.wait = Wait::kCluster;
  suspend(f);
#if AIM_EMU_TSAN_ON
  __tsan_acquire(sync);
#endif
}

void* map_shared_rank(const void* addr, unsigned rank) {
  Block& b = *t_block;
  Fiber& f = *b.current;
  if (rank >= b.states.size()) {
    fault_in_fiber(f, "map_shared_rank to rank " + std::to_string(rank) + " in a cluster of " +
                          std::to_string(b.states.size()) + " blocks");
  }
  const auto* own = b.states[f.block].dynamic_smem;
  const auto* p = static_cast<const unsigned char*>(addr);
  if (p < own || p > own + b.smem_bytes) {
    fault_in_fiber(f, "map_shared_rank of an address outside the block's dynamic shared memory");
  }
  return b.states[rank].dynamic_smem + (p - own);
}

uint64_t warp_exchange(unsigned mask, uint64_t bits, int src_lane, const char* op) {
  Block& b = *t_block;
  Fiber& f = *b.current;
  const int lane = f.state.linear & 31;
  const int warp0 = f.index - lane;
  if (!(mask >> lane & 1u)) fault_in_fiber(f, std::string(op) + " with a mask that leaves out the calling lane");
  const int n = b.threads;
  if (f.state.linear - lane + 32 - __builtin_clz(mask) > n)
    fault_in_fiber(f, std::string(op) + " with a mask naming lanes the block does not have (" +
                          std::to_string(n) + " threads)");
  if (!(mask >> src_lane & 1u))
    fault_in_fiber(f, std::string(op) + " reads lane " + std::to_string(src_lane) +
                          ", outside the mask");
  const int slot = static_cast<int>(f.collectives & 1u);
  f.deposit[slot] = bits;
  f.op = op;
  f.mask = mask;
  f.wait = Wait::kWarp;
  suspend(f);
  ++f.collectives;
  // Every lane of the mask deposited into this slot before the release; none can overwrite it
  // before every lane has passed the next collective.
  return b.fibers[warp0 + src_lane].deposit[slot];
}

void warp_gather(unsigned mask, const void* mine, size_t bytes, void* all, const char* op) {
  if (bytes > kGatherBytes) fault(std::string(op) + ": more bytes per lane than the emulator gathers");
  Fiber& f = *t_block->current;
  const int slot = static_cast<int>(f.collectives & 1u);
  copy_bytes(f.wide[slot], mine, bytes);
  const int lane = f.state.linear & 31;
  warp_exchange(mask, 0, lane, op);
  // As in warp_exchange: no lane can deposit into this slot again before every lane has passed
  // the next collective.
  const int warp0 = f.index - lane;
  for (int k = 0; k < 32; ++k) {
    if (mask >> k & 1u) {
      copy_bytes(static_cast<unsigned char*>(all) + k * bytes, t_block->fibers[warp0 + k].wide[slot], bytes);
    }
  }
}

void warp_collective(unsigned mask, const char* op) {
  const int lane = t_block->current->state.linear & 31;
  warp_exchange(mask, 0, lane, op);
}

void fault(const std::string& what) { fault_in_fiber(*t_block->current, what); }

void wait_for_prior_grid() {
#if AIM_EMU_TSAN_ON
  if (t_block->early && !g_thread->waited_for_prior_grid) __tsan_acquire(&t_grid_start);
#endif
  g_thread->waited_for_prior_grid = true;
}

void device_fence() {
#if AIM_EMU_TSAN_ON
  char* fence = &t_fence[t_block->pool];
  __tsan_release(fence);
  if (g_thread->observed) __tsan_acquire(fence);
  g_thread->observed = false;
#endif
}

namespace {
std::atomic<uint64_t> g_prefetched_bytes{0};
}  // namespace

uint64_t prefetched_bytes() { return g_prefetched_bytes.load(); }

void prefetch_to_l2(const void* p, uint32_t bytes) {
  g_prefetched_bytes += bytes;
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0 || bytes == 0 || bytes % 16 != 0 || bytes >= (1u << 20)) {
    fault("cp.async.bulk.prefetch.L2 of " + std::to_string(bytes) +
          " bytes at an address or of a size that is not a multiple of 16, or of 1 MiB or more");
  }
#if AIM_EMU_ASAN
  // Every byte of the range inside an allocation (a range that runs past the end of the one it
  // starts in crosses that allocation's redzone).
  if (__asan_region_is_poisoned(const_cast<void*>(p), bytes) != nullptr) {
    fault("cp.async.bulk.prefetch.L2 of " + std::to_string(bytes) + " bytes reaches outside the allocation it starts in");
  }
#endif
}

void allow_dependent_grid() {
  if (!g_thread->waited_for_prior_grid) {
    fault("griddepcontrol.launch_dependents before griddepcontrol.wait: the next grid could start "
          "while the grid before this one still runs");
  }
}

unsigned warp_ballot(unsigned mask, bool pred) {
  Block& b = *t_block;
  Fiber& f = *b.current;
  const int lane = f.state.linear & 31;
  const int warp0 = f.index - lane;
  warp_exchange(mask, pred ? 1u : 0u, lane, "__ballot_sync");
  const int slot = static_cast<int>((f.collectives - 1) & 1u);
  unsigned out = 0;
  for (int l = 0; l < 32; ++l)
    if ((mask >> l & 1u) && b.fibers[warp0 + l].deposit[slot] != 0) out |= 1u << l;
  return out;
}

bool run_grid(dim3 grid, dim3 block, size_t dynamic_smem, const void* func, BlockBody body,
              void* ctx, dim3 cluster, bool dependent) {
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  const uint64_t cluster_blocks = static_cast<uint64_t>(cluster.x) * cluster.y * cluster.z;
  std::ostringstream cfg;
  cfg << "grid (" << grid.x << "," << grid.y << "," << grid.z << "), block (" << block.x << ","
      << block.y << "," << block.z << "), " << dynamic_smem << " B dynamic shared memory";
  if (cluster_blocks > 1) cfg << ", cluster (" << cluster.x << "," << cluster.y << "," << cluster.z << ")";
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    set_error(cudaErrorInvalidConfiguration, "launch outside the device limits: " + cfg.str());
    return false;
  }
  if (cluster_blocks == 0 || cluster_blocks > kMaxClusterBlocks || grid.x % cluster.x != 0 ||
      grid.y % cluster.y != 0 || grid.z % cluster.z != 0) {
    set_error(cudaErrorInvalidClusterSize,
              "cluster dimension not dividing the grid or beyond " + std::to_string(kMaxClusterBlocks) +
                  " blocks: " + cfg.str());
    return false;
  }
  const size_t allowed = static_cast<size_t>(func_max_dynamic_smem(func));
  if (dynamic_smem > static_cast<size_t>(device().smem_optin) ||
      (dynamic_smem > static_cast<size_t>(device().smem_per_block) && dynamic_smem > allowed)) {
    set_error(cudaErrorInvalidValue,
              "dynamic shared memory beyond the kernel's limit (" + std::to_string(allowed) +
                  " B; cudaFuncSetAttribute raises it up to " +
                  std::to_string(device().smem_optin) + " B): " + cfg.str());
    return false;
  }

  ++t_launches;
  t_last_grid = grid;
  t_last_block = block;
  t_last_dependent = dependent;
  t_dependent_launches += dependent ? 1 : 0;
  const int nblocks = static_cast<int>(cluster_blocks);
#if AIM_EMU_TSAN_ON
  t_host_unseen.begin();  // from here on, the grid's allocations (fibers, shared memory) are new
  const bool early = dependent && t_launched;
  const int pool = early ? t_last_pool ^ 1 : 0;
  t_last_pool = pool;
#else
  const int pool = 0;
#endif
  Block b;
  b.pool = pool;
#if AIM_EMU_TSAN_ON
  b.early = early;
#endif
  b.body = body;
  b.body_ctx = ctx;
  b.threads = static_cast<int>(threads);
  b.smem_bytes = dynamic_smem;
  b.smem_attribute = func_dynamic_smem_attribute(func);
  b.states.resize(nblocks);
  // Per set: dynamic shared memory for each block of a cluster, and the fibers. Dynamic shared
  // memory starts as a NaN pattern: reads before writes show up. It is aligned as a GPU's, with
  // at least 256 bytes on either side, poisoned for the sanitizer.
  const size_t nfibers = threads * cluster_blocks;
  const int nsets = sets_for(nfibers);
  std::vector<std::vector<unsigned char>> smem(nsets * nblocks, std::vector<unsigned char>(dynamic_smem + 768));
  std::vector<unsigned char*> smem_at(nsets * nblocks);
  std::vector<std::vector<Fiber>> set_fibers(nsets, std::vector<Fiber>(nfibers));
  for (int s = 0; s < nsets; ++s) {
    if (t_sets[pool][s].statics == nullptr) t_sets[pool][s].statics = new unsigned char[kStaticSharedBytes];
    for (int k = 0; k < nblocks; ++k) {
      auto& m = smem[s * nblocks + k];
      const uintptr_t base = reinterpret_cast<uintptr_t>(m.data());
      unsigned char* at = m.data() + 256 + (256 - base % 256) % 256;
      smem_at[s * nblocks + k] = at;
#if AIM_EMU_ASAN
      ASAN_POISON_MEMORY_REGION(m.data(), static_cast<size_t>(at - m.data()));
      ASAN_POISON_MEMORY_REGION(at + dynamic_smem, static_cast<size_t>(m.data() + m.size() - (at + dynamic_smem)));
#endif
    }
    for (uint64_t i = 0; i < nfibers; ++i) {
      Fiber& f = set_fibers[s][i];
      const uint64_t t = i % threads;
      f.block = static_cast<int>(i / threads);
      f.index = static_cast<int>(i);
      f.state.linear = static_cast<int>(t);
      f.state.tid = dim3(static_cast<unsigned>(t % block.x),
                         static_cast<unsigned>(t / block.x % block.y),
                         static_cast<unsigned>(t / (static_cast<uint64_t>(block.x) * block.y)));
      f.stack = t_stacks[pool].get(s * nfibers + i);
#if AIM_EMU_TSAN_ON
      f.tsan = tsan_fiber(pool, s * nfibers + i);
#endif
    }
  }
  for (int k = 0; k < nblocks; ++k) {
    BlockState& st = b.states[k];
    st.block_dim = block;
    st.grid_dim = grid;
    st.cluster_dim = cluster;
    st.cluster_rank = static_cast<unsigned>(k);
  }
#if AIM_EMU_TSAN_ON
  t_host_fiber = __tsan_get_current_fiber();
  __tsan_release(&t_grid_start);
#endif
  Block* saved_block = t_block;
  BlockState* saved_state = g_block;
  ThreadState* saved_thread = g_thread;
  t_block = &b;
  g_block = &b.states[0];
  bool ok = true;
  const bool reverse = schedule() == Schedule::kReverse;
  auto order = [reverse](unsigned i, unsigned n) { return reverse ? n - 1 - i : i; };
  const dim3 clusters(grid.x / cluster.x, grid.y / cluster.y, grid.z / cluster.z);
  uint64_t ran = 0;
  for (unsigned z = 0; z < clusters.z && ok; ++z)
    for (unsigned y = 0; y < clusters.y && ok; ++y)
      for (unsigned x = 0; x < clusters.x && ok; ++x) {
        const int s = static_cast<int>(ran++ % nsets);
        const dim3 c(order(x, clusters.x), order(y, clusters.y), order(z, clusters.z));
        for (int k = 0; k < nblocks; ++k) {
          const unsigned kx = k % cluster.x, ky = k / cluster.x % cluster.y, kz = k / (cluster.x * cluster.y);
          b.states[k].block_idx = dim3(c.x * cluster.x + kx, c.y * cluster.y + ky, c.z * cluster.z + kz);
          b.states[k].dynamic_smem = smem_at[s * nblocks + k];
          fill_bytes(b.states[k].dynamic_smem, 0xff, dynamic_smem);
        }
        b.set = s;
        b.statics.arena = t_sets[pool][s].statics;
        b.fibers.swap(set_fibers[s]);
        ok = run_block(b);
        b.fibers.swap(set_fibers[s]);
        ++t_sets[pool][s].sync.runs;
      }
#if AIM_EMU_TSAN_ON
  __tsan_release(&t_prior_launch);  // the host as it launched this grid
  __tsan_acquire(&t_grid_done);
  t_launched = true;
#endif
#if AIM_EMU_ASAN
  // Fibers abandoned by a fault leave their frames' redzones poisoned on stacks reused later.
  if (!ok) {
    for (const auto& fs : set_fibers)
      for (const auto& f : fs) ASAN_UNPOISON_MEMORY_REGION(stack_bottom(f), kStackBytes);
  }
  for (auto& m : smem) ASAN_UNPOISON_MEMORY_REGION(m.data(), m.size());
#endif
  t_block = saved_block;
  g_block = saved_state;
  g_thread = saved_thread;
  if (!ok) set_error(cudaErrorLaunchFailure, b.fault_message + " [" + cfg.str() + "]");
  return ok;
}

}  // namespace emu
