#pragma once
// Inside the distributed layer: what stands behind a DistContext, the process-group factory, and
// what the CUDA-only file (dist_cuda.cpp, NCCL) provides to the rest.
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <cstdint>
#include <exception>
#include <string>

#include "aim/train/dist.h"

namespace aim::train {

struct DistContext::Impl {
  int rank = 0;
  int world_size = 1;
  std::chrono::milliseconds timeout{0};
  c10::intrusive_ptr<c10d::Store> store;  ///< rank 0's instance serves the others
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  bool mpi_initialised = false;  ///< MPI_Init_thread was ours, so MPI_Finalize is too
  bool released = false;

  /// Releases the group, then the store, then MPI. clean: barrier first, rank 0 keeps serving
  /// the store until every rank has released its group, MPI is finalized. Otherwise the group is
  /// aborted and nothing waits. Returns "" or what went wrong; never throws.
  std::string release(bool clean);
};

namespace detail {

/// The message without the C++ stack that LibTorch's errors carry.
inline std::string message_of(const std::exception& e) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) {
    return c10_error->what_without_backtrace();
  }
  return e.what();
}

/// A process group of `size` ranks over `store` with one backend, "gloo" or "nccl", serving
/// tensors on `device`.
c10::intrusive_ptr<c10d::ProcessGroup> make_process_group(
    const c10::intrusive_ptr<c10d::Store>& store, int rank, int size, const std::string& backend,
    torch::Device device, std::chrono::milliseconds timeout);

// ---- dist_cuda.cpp: builds with AIM_WITH_CUDA

/// cuda:local_rank for a device without index (at most one rank per GPU), else `requested`;
/// made current.
torch::Device select_cuda_device(torch::Device requested, int local_rank, int local_world_size);

// ---- dist_cuda.cpp: builds with AIM_WITH_NCCL (CUDA and nccl.h)

/// NCCL versions as (major << 32 | minor << 16 | patch): of the nccl.h compiled here and of the
/// one LibTorch was built with. Their options struct embeds NCCL's config struct, so they must
/// agree in major and minor version.
struct NcclVersions {
  uint64_t header = 0;
  uint64_t libtorch = 0;
};
NcclVersions nccl_versions();

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int size,
                                                    std::chrono::milliseconds timeout);

}  // namespace detail
}  // namespace aim::train
