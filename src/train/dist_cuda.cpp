// GPU selection and the NCCL process-group backend (when nccl.h was found) of the distributed
// layer; CUDA builds only.
// LibTorch declares ProcessGroupNCCL only with USE_C10D_NCCL defined (its CMake package defines
// it too); the precompiled <torch/torch.h> does not include it.
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL
#endif

#include <c10/cuda/CUDAFunctions.h>
#ifdef AIM_WITH_NCCL
#include <torch/csrc/cuda/nccl.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "aim/core/error.h"
#include "dist_backends.h"

namespace aim::train::detail {

torch::Device select_cuda_device(torch::Device requested, int local_rank, int local_world_size) {
  const int count = static_cast<int>(c10::cuda::device_count());
  AIM_CHECK(count > 0, "device ", requested.str(), ": no GPU is visible to this process");
  // One GPU visible to each rank (srun --gpus-per-task=1, --gpu-bind, or CUDA_VISIBLE_DEVICES set
  // per rank): it is this rank's, whatever the local rank. (Ranks made to share one GPU fail in
  // NCCL's own check for duplicate GPUs.)
  if (count == 1 && !requested.has_index() && local_world_size > 1) {
    c10::cuda::set_device(0);
    return torch::Device(torch::kCUDA, 0);
  }
  // NCCL needs one GPU per rank: wrapping ranks around the GPUs only fails later, in NCCL. The
  // requested device has an index either way (--device cuda gives the local rank's, modulo the
  // GPU count), so the count of ranks decides.
  AIM_CHECK(local_world_size <= count, "device ", requested.str(), ": ",
            local_world_size, " ranks on this node but ", count,
            " GPU(s) visible; expected at most one rank per GPU\n"
            "---> HINT: launch at most ", count, " rank(s) per node, or train on the CPU with --device cpu");
  const int index = requested.has_index() ? requested.index() : local_rank;
  AIM_CHECK(index < count, "device ", requested.str(), ": expected an index below ", count,
            " (the visible GPUs), found ", index);
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(index));
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
}

#ifdef AIM_WITH_NCCL
namespace {

std::string version_text(uint64_t v) {
  return str_cat(v >> 32, ".", (v >> 16) & 0xffff, ".", v & 0xffff);
}

}  // namespace

NcclVersions nccl_versions() {
  NcclVersions v;
  v.header = (uint64_t{NCCL_MAJOR} << 32) | (uint64_t{NCCL_MINOR} << 16) | uint64_t{NCCL_PATCH};
  v.libtorch = torch::cuda::nccl::version();
  return v;
}

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int size,
                                                    std::chrono::milliseconds timeout) {
  const NcclVersions v = nccl_versions();
  AIM_CHECK(v.header >> 16 == v.libtorch >> 16, "dist.backend nccl: this build compiled nccl.h ",
            version_text(v.header), " but LibTorch was built with NCCL ", version_text(v.libtorch),
            "\n---> HINT: point AIM_NCCL_INCLUDE_DIR at the nccl.h of NCCL ",
            version_text(v.libtorch), " and rebuild");
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, options);
}
#endif

}  // namespace aim::train::detail
