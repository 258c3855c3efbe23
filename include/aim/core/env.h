#pragma once
// Which process this is in a multi-process launch: Open MPI (mpirun), MPICH/PMI, Slurm (srun)
// or torchrun-style variables; a single process otherwise.
#include <string>

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

}  // namespace aim
