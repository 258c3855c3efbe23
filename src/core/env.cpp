#include "aim/core/env.h"

#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "aim/core/error.h"

namespace aim {

namespace {

bool read_int(const char* name, int& out) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return false;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < 0 || x > 1 << 24) {
    throw Error(str_cat("environment variable ", name, ": expected a non-negative integer, found '", v, "'"));
  }
  out = static_cast<int>(x);
  return true;
}

struct Names {
  const char* launcher;
  const char* rank;
  const char* size;
  const char* local_rank;
  const char* local_size;  ///< nullptr: derived (Slurm)
};

/// The task count of node `node` in a Slurm tasks-per-node list such as "8(x3),4"; -1 when the
/// list cannot be read or has no such node.
int slurm_tasks_on_node(const char* list, int node) {
  if (list == nullptr) return -1;
  const std::string s(list);
  int index = 0;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t end = s.find(',', pos);
    if (end == std::string::npos) end = s.size();
    const std::string item = s.substr(pos, end - pos);
    char* rest = nullptr;
    const long tasks = std::strtol(item.c_str(), &rest, 10);
    long repeat = 1;
    if (rest != nullptr && std::strncmp(rest, "(x", 2) == 0) repeat = std::strtol(rest + 2, nullptr, 10);
    else if (rest == nullptr || *rest != '\0') return -1;
    if (tasks < 1 || repeat < 1) return -1;
    if (node < index + repeat) return static_cast<int>(tasks);
    index += static_cast<int>(repeat);
    pos = end + 1;
  }
  return -1;
}

}  // namespace

LaunchEnv detect_launch_env() {
  static const Names kLaunchers[] = {
      {"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
       "OMPI_COMM_WORLD_LOCAL_SIZE"},
      {"pmi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"},
      // Only inside a job step (srun): a batch script itself also carries SLURM_PROCID=0 and
      // SLURM_NTASKS=N, and a program run there directly is one process, not rank 0 of N.
      {"slurm", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", nullptr},
      {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"},
  };
  LaunchEnv env;
  for (const auto& n : kLaunchers) {
    int rank = 0, size = 0;
    if (!read_int(n.rank, rank) || !read_int(n.size, size)) continue;
    if (size < 1 || rank >= size) {
      throw Error(str_cat(n.rank, "=", rank, " and ", n.size, "=", size, ": expected 0 <= rank < size"));
    }
    env.launcher = n.launcher;
    env.rank = rank;
    env.world_size = size;
    if (!read_int(n.local_rank, env.local_rank)) env.local_rank = rank;
    if (n.local_size != nullptr) {
      if (!read_int(n.local_size, env.local_world_size)) env.local_world_size = size;
    } else {
      // Slurm: this node's entry of the step's tasks per node ("8(x2),4"), indexed by the node.
      int node = 0;
      if (!read_int("SLURM_NODEID", node)) node = 0;
      const int here = slurm_tasks_on_node(std::getenv("SLURM_STEP_TASKS_PER_NODE"), node);
      env.local_world_size = here > 0 ? here : size;
    }
    return env;
  }
  return env;
}

void refuse_launcher(const std::string& command) {
  const LaunchEnv env = detect_launch_env();
  AIM_CHECK(env.world_size <= 1, command, " runs as one process, but this is rank ", env.rank, " of ", env.world_size,
            " (", env.launcher, "): every rank would do the whole work and write the same outputs\n---> HINT: run it ",
            "without mpirun / srun / torchrun");
}

void tune_host_allocator() {
#if defined(__GLIBC__)
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if ((tunables != nullptr && std::strstr(tunables, "malloc") != nullptr) ||
      std::getenv("MALLOC_MMAP_THRESHOLD_") != nullptr || std::getenv("MALLOC_TRIM_THRESHOLD_") != nullptr) {
    return;
  }
  // Order matters: a fixed mmap threshold first. Setting only the trim threshold would also freeze
  // the mmap threshold at 128 KiB, which made the tokenizer step 1.6x slower.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

}  // namespace aim
