#pragma once
// CPU emulation of the cooperative_groups subset kernels/ uses: the thread block cluster
// (see emu_runtime.h for how clusters run).
#include "emu_runtime.h"

namespace cooperative_groups {

class cluster_group {
 public:
  void sync() const { ::emu::cluster_barrier(); }
  unsigned block_rank() const { return ::emu::g_block->cluster_rank; }
  unsigned num_blocks() const {
    const dim3 c = ::emu::g_block->cluster_dim;
    return c.x * c.y * c.z;
  }
  dim3 dim_blocks() const { return ::emu::g_block->cluster_dim; }
  template <typename T>
  T* map_shared_rank(T* addr, unsigned rank) const {
    return static_cast<T*>(::emu::map_shared_rank(addr, rank));
  }
};

inline cluster_group this_cluster() { return {}; }

}  // namespace cooperative_groups
