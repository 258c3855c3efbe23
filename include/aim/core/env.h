#pragma once
// Which process this is in a multi-process launch: Open MPI (mpirun), MPICH/PMI, Slurm (srun)
// or torchrun-style variables; a single process otherwise. ScopedEnv: a variable set for a scope.
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace aim {

struct LaunchEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string launcher = "single";  ///< "openmpi" | "pmi" | "slurm" | "torchrun" | "single"
  bool is_main() const { return rank == 0; }
};

/// Reads the launcher's variables (first match in the order above). Throws aim::Error naming
/// the variable when one is malformed or inconsistent (rank >= world size).
LaunchEnv detect_launch_env();

/// For a command that runs as one process: throws aim::Error naming `command` when it was
/// started as one rank of several (mpirun, srun, torchrun), where every rank would do the whole
/// work and write the same outputs.
void refuse_launcher(const std::string& command);

/// Keeps the host allocator from returning memory to the kernel after every large free. glibc
/// serves blocks above a dynamic threshold (128 KiB at first) with mmap and trims the heap top
/// above another, so a CPU training step maps, zero-fills and unmaps the same activation buffers
/// again and again (page faults were 9% of a tokenizer step). Raises the mmap threshold to 32 MiB
/// (glibc's maximum) and disables trimming: 13% more tokenizer steps/s and about 7% more AiM
/// steps/s on 2 cores (docs/perf.md). Leaves the allocator alone when the user chose malloc
/// settings (GLIBC_TUNABLES naming malloc, MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_) and on
/// libcs other than glibc. Call once at start-up, before large allocations.
void tune_host_allocator();

/// Sets or unsets environment variables for one scope and restores their previous values, in
/// reverse order, when it ends: the benchmarks' and tests' way to run one path of a switch that
/// is read at run time (AIM_PDL, AIM_SSD_SCAN, ...). Not thread-safe, as setenv is not.
class ScopedEnv {
 public:
  ScopedEnv() = default;
  ScopedEnv(const char* name, const std::optional<std::string>& value) { set(name, value); }
  /// Sets `name` to `value`, or unsets it for std::nullopt.
  ScopedEnv& set(const char* name, const std::optional<std::string>& value) {
    const char* old = std::getenv(name);
    saved_.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
    if (value) {
      setenv(name, value->c_str(), 1);
    } else {
      unsetenv(name);
    }
    return *this;
  }
  ~ScopedEnv() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
      if (it->second) {
        setenv(it->first.c_str(), it->second->c_str(), 1);
      } else {
        unsetenv(it->first.c_str());
      }
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

}  // namespace aim
