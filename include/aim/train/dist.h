#pragma once
// Data-parallel plumbing over PyTorch's c10d: one process group per run (Gloo on CPU, NCCL on
// CUDA), the few collectives the trainer needs, and DDP's bucketed gradient all-reduce
// (c10d::Reducer) with gradient accumulation. At world size 1 nothing is created and every
// collective returns its input, so single-process code takes the same path.
//
// Rendezvous: every rank reaches a c10d TCPStore that rank 0 serves.
//   - MASTER_ADDR and MASTER_PORT set (torchrun, Slurm, by hand): the store is there.
//     Under Slurm, export them before srun, e.g.
//       export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
//       export MASTER_PORT=29500
//   - otherwise, under mpirun (Open MPI or a PMI launcher) in a build with MPI: rank 0 serves on
//     an ephemeral port and MPI broadcasts "host:port"; host is MASTER_ADDR when set, else
//     127.0.0.1 when all ranks share a node, else rank 0's host name.
// Gloo binds to GLOO_SOCKET_IFNAME (comma-separated interfaces) when set, else to the address
// the host name resolves to (loopback when it does not resolve).
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "aim/core/config.h"
#include "aim/core/env.h"

namespace aim::train {

/// Reduction of all_reduce: kMean is the sum divided by the world size.
enum class ReduceOp { kSum, kMean, kMax, kMin };

/// How far tensors on this rank are from rank 0's (ReplicaCheck::identical() means bitwise).
struct ReplicaCheck {
  double max_abs_diff = 0;  ///< max |x - x_root| over ranks and elements, in fp64
  int64_t mismatched = 0;   ///< elements whose bits differ from rank 0's, summed over ranks
  bool identical() const { return mismatched == 0; }
};

/// One rank's view of the run: who it is, where it computes, and its process group.
/// Collectives must be called by every rank in the same order.
class DistContext {
 public:
  /// A single process on `device` (world size 1, no process group).
  explicit DistContext(torch::Device device = torch::kCPU);
  DistContext(DistContext&&) noexcept;
  DistContext& operator=(DistContext&&) noexcept;
  /// Releases as finalize() does, errors ignored, when no exception is in flight. During
  /// unwinding the process group is aborted and MPI is left to the launcher, so a failing rank
  /// exits instead of waiting for the others.
  ~DistContext();

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  int local_rank() const { return local_rank_; }
  int local_world_size() const { return local_world_size_; }
  bool is_main() const { return rank_ == 0; }
  bool distributed() const { return world_size_ > 1; }
  /// Where this rank computes: cuda:(local_rank % GPUs) for a CUDA device given without index.
  torch::Device device() const { return device_; }
  /// "none" (world size 1) | "gloo" | "nccl".
  const std::string& backend() const { return backend_; }
  /// "none" | "env" (MASTER_ADDR/MASTER_PORT) | "mpi".
  const std::string& rendezvous() const { return rendezvous_; }
  /// host:port of rank 0's store ("" at world size 1).
  const std::string& store_address() const { return store_address_; }

  void barrier();
  /// In place. Any device, dtype and layout: staged through a contiguous copy on device() when
  /// needed. kMean divides the sum by the world size (floating point only).
  void all_reduce_(torch::Tensor& tensor, ReduceOp op = ReduceOp::kSum);
  double all_reduce(double value, ReduceOp op = ReduceOp::kSum);
  /// Whether `flag` is true on any rank / on every rank (stop requests, errors, agreement).
  bool any_true(bool flag);
  bool all_true(bool flag);
  /// Overwrites every tensor with rank `root`'s values (no autograd): parameters and buffers at
  /// start so that all ranks begin identical.
  void broadcast_(const std::vector<torch::Tensor>& tensors, int root = 0);
  /// Compares every tensor with rank 0's copy; the same result on every rank.
  ReplicaCheck compare_with_root(const std::vector<torch::Tensor>& tensors);

  /// Barrier, then the process group and the store are released (rank 0 keeps its store until
  /// every rank has let go of it) and MPI is finalized if init_distributed() initialised it.
  /// Idempotent; a failing barrier is reported after the release.
  void finalize();

 private:
  struct Impl;
  friend class GradSync;
  friend DistContext init_distributed(const DistConfig&, const LaunchEnv&, torch::Device);

  int rank_ = 0;
  int world_size_ = 1;
  int local_rank_ = 0;
  int local_world_size_ = 1;
  torch::Device device_;
  std::string backend_ = "none";
  std::string rendezvous_ = "none";
  std::string store_address_;
  std::unique_ptr<Impl> impl_;
};

/// Joins the run that `env` describes. World size 1: no process group. Otherwise the store (see
/// the top of this file), then the process group: config.backend "auto" is NCCL for a CUDA
/// device and Gloo for the CPU; timeouts are config.timeout_s. For CUDA, the chosen GPU becomes
/// the current device. Throws aim::Error naming the variable or key at fault.
DistContext init_distributed(const DistConfig& config, const LaunchEnv& env, torch::Device device);

/// Bucketing of GradSync.
struct GradSyncOptions {
  /// Byte caps of the first bucket and of the others, c10d's (and DDP's) defaults.
  int64_t first_bucket_bytes = int64_t{1} << 20;
  int64_t bucket_bytes = int64_t{25} << 20;
};

/// Averages gradients over ranks during the backward pass, as DDP does: parameters in buckets
/// (rebuilt in gradient-arrival order after the first synchronised backward), each bucket
/// all-reduced as soon as its gradients are ready. Every parameter must receive a gradient in a
/// synchronised backward (the next prepare_for_backward() throws otherwise). Destroy it before
/// its DistContext.
class GradSync {
 public:
  /// `params`: unique leaf tensors that require grad, on ctx.device(). Collective: ranks must
  /// pass the same shapes in the same order (checked).
  GradSync(std::vector<torch::Tensor> params, DistContext& ctx, GradSyncOptions options = {});
  GradSync(GradSync&&) noexcept;
  GradSync& operator=(GradSync&&) noexcept;
  ~GradSync();

  /// Call before each micro-batch's backward. sync=false: gradients accumulate locally, nothing
  /// is sent (DDP's no_sync). sync=true, on the last micro-batch of a step: when that backward
  /// returns, each .grad holds the mean over ranks of the ranks' accumulated gradients.
  /// Nothing at world size 1.
  void prepare_for_backward(bool sync);
  /// Number of gradient buckets (0 at world size 1).
  int64_t bucket_count() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace aim::train
