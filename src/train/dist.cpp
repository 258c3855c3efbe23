// Rendezvous, process group and collectives (see aim/train/dist.h).
// LibTorch declares ProcessGroupGloo only with USE_C10D_GLOO defined (its CMake package defines
// it too). The precompiled <torch/torch.h> does not include it, so defining it here, before our
// includes, is enough.
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
// MPI's C API only.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1

#include "aim/train/dist.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>
#ifdef AIM_WITH_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef AIM_WITH_MPI
#include <mpi.h>
#endif
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "aim/core/error.h"
#include "dist_backends.h"

namespace aim::train {

namespace {

// DDP's bucket for broadcasting module states.
constexpr size_t kBroadcastBucketBytes = size_t{250} << 20;
// How long rank 0 waits, at a clean exit, for the other ranks to let go of its store.
constexpr std::chrono::milliseconds kReleaseWait{60000};

std::optional<std::string> env_var(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

using detail::message_of;

std::string where(int rank, int world_size) { return str_cat("rank ", rank, " of ", world_size); }

c10d::ReduceOp to_c10d(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kMean: return c10d::ReduceOp::SUM;
    case ReduceOp::kMax: return c10d::ReduceOp::MAX;
    case ReduceOp::kMin: return c10d::ReduceOp::MIN;
  }
  return c10d::ReduceOp::SUM;
}

/// Runs a collective; a failure (a rank gone, a timeout) becomes an aim::Error saying which.
template <typename F>
void collective(const char* what, const DistContext& ctx, int64_t timeout_s, F&& f) {
  try {
    f();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(str_cat("distributed ", what, " over ", ctx.backend(), " failed on ",
                        where(ctx.rank(), ctx.world_size()),
                        " (another rank failed or exited, or dist.timeout_s=", timeout_s,
                        " passed): ", message_of(e)));
  }
}

/// The tensor itself when it is contiguous on `device`, else a contiguous copy there.
torch::Tensor staged(const torch::Tensor& t, torch::Device device) {
  if (t.device() == device && t.is_contiguous()) return t;
  return t.to(device, /*non_blocking=*/false, /*copy=*/true).contiguous();
}

/// Same bits, integer type: equality of these is bitwise equality.
torch::Tensor bits_of(const torch::Tensor& t) {
  switch (t.element_size()) {
    case 1: return t.view(torch::kUInt8);
    case 2: return t.view(torch::kInt16);
    case 4: return t.view(torch::kInt32);
    case 8: return t.view(torch::kInt64);
    default:
      throw Error(str_cat("compare_with_root: expected elements of 1, 2, 4 or 8 bytes, found ",
                          t.scalar_type()));
  }
}

// ------------------------------------------------------------------------------ rendezvous

struct Rendezvous {
  c10::intrusive_ptr<c10d::Store> store;
  std::string method;
  std::string address;
  bool mpi_initialised = false;
};

c10::intrusive_ptr<c10d::Store> open_store(const std::string& host, uint16_t port, bool server,
                                           int world_size, std::chrono::milliseconds timeout,
                                           const std::string& origin) {
  c10d::TCPStoreOptions opts;
  opts.port = port;
  opts.isServer = server;
  opts.numWorkers = static_cast<size_t>(world_size);
  // Under MPI the others learn the port only after the server exists; everywhere, the process
  // group's own rendezvous is what waits for all ranks.
  opts.waitWorkers = false;
  opts.timeout = timeout;
  try {
    return c10::make_intrusive<c10d::TCPStore>(host, opts);
  } catch (const std::exception& e) {
    throw Error(str_cat("distributed rendezvous: ", server ? "could not serve" : "could not reach",
                        " the c10d store at ", host, ":", port, " (", origin, ") within ",
                        timeout.count() / 1000, " s (dist.timeout_s): ", message_of(e)));
  }
}

uint16_t master_port(const std::string& text) {
  char* end = nullptr;
  const long port = std::strtol(text.c_str(), &end, 10);
  if (end == text.c_str() || *end != '\0' || port < 1 || port > 65535) {
    throw Error(str_cat("environment variable MASTER_PORT: expected a port in 1..65535, found '",
                        text, "'"));
  }
  return static_cast<uint16_t>(port);
}

#ifdef AIM_WITH_MPI
std::string host_name() {
  std::array<char, 256> name{};
  if (gethostname(name.data(), name.size() - 1) != 0) return "127.0.0.1";
  return std::string(name.data());
}

// MPI only carries "host:port" from rank 0 to the others; all traffic goes through c10d.
Rendezvous mpi_rendezvous(const LaunchEnv& env, std::chrono::milliseconds timeout) {
  Rendezvous rv;
  rv.method = "mpi";
  int initialised = 0, finalized = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalized);
  AIM_CHECK(!finalized, "distributed rendezvous: MPI was finalized already in this process (one "
            "init_distributed() per process under mpirun)");
  if (!initialised) {
    int provided = 0;
    // Only the calling thread uses MPI.
    if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
      throw Error(str_cat("distributed rendezvous: MPI_Init_thread failed (launcher '",
                          env.launcher, "')"));
    }
    rv.mpi_initialised = true;
  }
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  AIM_CHECK(rank == env.rank && size == env.world_size, "distributed rendezvous: MPI says ",
            where(rank, size), ", the launcher's variables (", env.launcher, ") say ",
            where(env.rank, env.world_size));

  // Rank 0 always reaches the broadcast, with an address or with its error (a leading '!'), so
  // no rank is left waiting in MPI, which has no timeout.
  std::array<char, 1024> message{};
  if (rank == 0) {
    const std::string host = env_var("MASTER_ADDR").value_or(
        env.local_world_size == env.world_size ? std::string("127.0.0.1") : host_name());
    try {
      rv.store = open_store(host, 0, /*server=*/true, size, timeout, "rank 0, ephemeral port");
      rv.address = str_cat(host, ":", static_cast<c10d::TCPStore&>(*rv.store).getPort());
      std::snprintf(message.data(), message.size(), "%s", rv.address.c_str());
    } catch (const std::exception& e) {
      std::snprintf(message.data(), message.size(), "!%s", message_of(e).c_str());
    }
  }
  MPI_Bcast(message.data(), static_cast<int>(message.size()), MPI_CHAR, 0, MPI_COMM_WORLD);
  const std::string text(message.data());
  if (!text.empty() && text[0] == '!') {
    throw Error(str_cat("distributed rendezvous over MPI failed on rank 0: ", text.substr(1)));
  }
  if (rank != 0) {
    const auto colon = text.rfind(':');
    AIM_CHECK(colon != std::string::npos, "distributed rendezvous over MPI: expected host:port "
              "from rank 0, found '", text, "'");
    rv.address = text;
    rv.store = open_store(text.substr(0, colon), master_port(text.substr(colon + 1)),
                          /*server=*/false, size, timeout, "broadcast by rank 0 over MPI");
  }
  return rv;
}
#endif

Rendezvous rendezvous(const LaunchEnv& env, std::chrono::milliseconds timeout) {
  const auto addr = env_var("MASTER_ADDR");
  const auto port = env_var("MASTER_PORT");
  if (addr && port) {
    Rendezvous rv;
    rv.method = "env";
    const uint16_t p = master_port(*port);
    rv.address = str_cat(*addr, ":", p);
    rv.store = open_store(*addr, p, /*server=*/env.rank == 0, env.world_size, timeout,
                          "MASTER_ADDR, MASTER_PORT");
    return rv;
  }
  const bool mpi_launch = env.launcher == "openmpi" || env.launcher == "pmi";
#ifdef AIM_WITH_MPI
  if (mpi_launch) return mpi_rendezvous(env, timeout);
#endif
  throw Error(str_cat(
      "distributed run (launcher '", env.launcher, "', world size ", env.world_size,
      "): cannot find rank 0's store: expected MASTER_ADDR and MASTER_PORT, found MASTER_ADDR=",
      addr ? "'" + *addr + "'" : std::string("<unset>"), ", MASTER_PORT=",
      port ? "'" + *port + "'" : std::string("<unset>"),
      mpi_launch ? " (this build has no MPI to exchange them)" : "",
      "\n---> HINT: export MASTER_ADDR=<rank 0's host> MASTER_PORT=<free port> on every rank; "
      "under Slurm: export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | "
      "head -n 1) MASTER_PORT=29500"));
}

#ifdef AIM_WITH_GLOO
std::vector<std::shared_ptr<::gloo::transport::Device>> gloo_devices() {
  std::vector<std::shared_ptr<::gloo::transport::Device>> devices;
  if (const auto names = env_var("GLOO_SOCKET_IFNAME")) {
    size_t start = 0;
    while (start <= names->size()) {
      const size_t comma = std::min(names->find(',', start), names->size());
      const std::string name = names->substr(start, comma - start);
      start = comma + 1;
      if (name.empty()) continue;
      try {
        devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
      } catch (const std::exception& e) {
        throw Error(str_cat("environment variable GLOO_SOCKET_IFNAME: expected network "
                            "interfaces of this host, found '", name, "': ", message_of(e)));
      }
    }
    AIM_CHECK(!devices.empty(), "environment variable GLOO_SOCKET_IFNAME: expected interface "
              "names, found '", *names, "'");
  } else {
    devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  }
  return devices;
}
#endif

torch::Device resolve_device(torch::Device device, int local_rank, int local_world_size) {
  if (!device.is_cuda()) return device;
#ifdef AIM_WITH_CUDA
  return detail::select_cuda_device(device, local_rank, local_world_size);
#else
  throw Error(str_cat("device ", device.str(), ": this build has no CUDA"));
#endif
}

}  // namespace

// ------------------------------------------------------------------------------ process group

namespace detail {

c10::intrusive_ptr<c10d::ProcessGroup> make_process_group(
    const c10::intrusive_ptr<c10d::Store>& store, int rank, int size, const std::string& backend,
    torch::Device device, std::chrono::milliseconds timeout) {
  // Own key space: the context keeps keys of its own in the same store.
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>("pg", store);
  auto group = c10::make_intrusive<c10d::ProcessGroup>(prefixed, rank, size);
  if (backend == "gloo") {
#ifdef AIM_WITH_GLOO
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    options->devices = gloo_devices();
    options->threads = static_cast<int>(options->devices.size()) * 2;
    auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, size, options);
    group->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
    // Gloo also serves CUDA tensors (through host memory) when it is asked for on a GPU.
    if (device.is_cuda()) {
      group->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::GLOO, gloo);
    }
    group->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
#else
    throw Error("dist.backend 'gloo': this build has no Gloo headers (libgloo-dev), so no CPU "
                "process group\n---> HINT: install libgloo-dev and re-run cmake, or train on "
                "CUDA with dist.backend nccl");
#endif
  } else if (backend == "nccl") {
#ifdef AIM_WITH_NCCL
    group->setBoundDeviceId(device);
    auto nccl = make_nccl_backend(prefixed, rank, size, timeout);
    group->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::NCCL, nccl);
    group->setDefaultBackend(c10d::ProcessGroup::BackendType::NCCL);
    // Communicators now rather than at the first collective, so setup errors surface here.
    nccl->eagerConnectSingleDevice(device);
#elif defined(AIM_WITH_CUDA)
    throw Error("dist.backend 'nccl': this build found no nccl.h, so no NCCL process group\n"
                "---> HINT: install NCCL's headers (the nvidia-nccl wheel or the toolkit's) and "
                "re-run cmake, or set AIM_NCCL_INCLUDE_DIR");
#else
    throw Error("dist.backend 'nccl': this build has no CUDA");
#endif
  } else {
    throw Error(str_cat("dist.backend: expected gloo or nccl, found '", backend, "'"));
  }
  group->setGroupName("0");
  return group;
}

}  // namespace detail

// ------------------------------------------------------------------------------ context

std::string DistContext::Impl::release(bool clean) {
  if (released) return "";
  released = true;
  std::string error;
  if (group) {
    if (clean) {
      try {
        c10d::BarrierOptions opts;
        opts.timeout = timeout;
        group->barrier(opts)->wait();
      } catch (const std::exception& e) {
        error = str_cat("final barrier: ", message_of(e));
        clean = false;
      }
    }
    try {
      if (clean) {
        group->shutdown();
      } else {
        group->abort();
      }
    } catch (const std::exception& e) {
      if (error.empty()) error = str_cat("process group shutdown: ", message_of(e));
    }
    group.reset();
  }
  if (store) {
    if (clean) {
      // Rank 0 serves the store: it goes last, once every rank has released its group.
      try {
        store->set(str_cat("aim/released/", rank), std::vector<uint8_t>{1});
        if (rank == 0) {
          std::vector<std::string> keys;
          for (int r = 0; r < world_size; ++r) keys.push_back(str_cat("aim/released/", r));
          store->wait(keys, std::min(timeout, kReleaseWait));
        }
      } catch (const std::exception& e) {
        if (error.empty()) error = str_cat("store release: ", message_of(e));
        clean = false;
      }
    }
    store.reset();
  }
#ifdef AIM_WITH_MPI
  // After a failure MPI is left alone: MPI_Finalize would wait for the ranks that are still
  // running; the launcher ends the job when this process exits with an error.
  if (mpi_initialised && clean) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }
#endif
  return error;
}

DistContext::DistContext(torch::Device device) : device_(device), impl_(std::make_unique<Impl>()) {}

DistContext::DistContext(DistContext&&) noexcept = default;
DistContext& DistContext::operator=(DistContext&& other) noexcept {
  if (this != &other) {
    if (impl_) impl_->release(std::uncaught_exceptions() == 0);
    rank_ = other.rank_;
    world_size_ = other.world_size_;
    local_rank_ = other.local_rank_;
    local_world_size_ = other.local_world_size_;
    device_ = other.device_;
    backend_ = std::move(other.backend_);
    rendezvous_ = std::move(other.rendezvous_);
    store_address_ = std::move(other.store_address_);
    impl_ = std::move(other.impl_);
  }
  return *this;
}

DistContext::~DistContext() {
  if (impl_) impl_->release(std::uncaught_exceptions() == 0);
}

void DistContext::finalize() {
  if (!impl_) return;
  const std::string error = impl_->release(true);
  AIM_CHECK(error.empty(), "distributed finalize on ", where(rank_, world_size_), ": ", error);
}

void DistContext::barrier() {
  if (!distributed()) return;
  collective("barrier", *this, impl_->timeout.count() / 1000, [&] {
    c10d::BarrierOptions opts;
    opts.device = device_;
    opts.timeout = impl_->timeout;
    impl_->group->barrier(opts)->wait();
  });
}

void DistContext::all_reduce_(torch::Tensor& tensor, ReduceOp op) {
  AIM_CHECK(tensor.defined(), "all_reduce_: expected a tensor, found an undefined one");
  AIM_CHECK(op != ReduceOp::kMean || tensor.is_floating_point(),
            "all_reduce_ mean: expected a floating-point tensor, found ", tensor.scalar_type());
  if (!distributed()) return;
  torch::NoGradGuard no_grad;
  torch::Tensor buffer = staged(tensor, device_);
  collective("all_reduce", *this, impl_->timeout.count() / 1000, [&] {
    std::vector<torch::Tensor> list{buffer};
    c10d::AllreduceOptions opts;
    opts.reduceOp = to_c10d(op);
    opts.timeout = impl_->timeout;
    impl_->group->allreduce(list, opts)->wait();
  });
  // Gloo has no average: sum, then divide.
  if (op == ReduceOp::kMean) buffer.div_(world_size_);
  if (!buffer.is_same(tensor)) tensor.copy_(buffer);
}

double DistContext::all_reduce(double value, ReduceOp op) {
  if (!distributed()) return value;
  auto t = torch::full({1}, value, torch::TensorOptions().dtype(torch::kFloat64).device(device_));
  all_reduce_(t, op);
  return t.item<double>();
}

bool DistContext::any_true(bool flag) { return all_reduce(flag ? 1.0 : 0.0, ReduceOp::kMax) > 0.5; }

bool DistContext::all_true(bool flag) { return all_reduce(flag ? 1.0 : 0.0, ReduceOp::kMin) > 0.5; }

void DistContext::broadcast_(const std::vector<torch::Tensor>& tensors, int root) {
  AIM_CHECK(root >= 0 && root < world_size_, "broadcast_: expected a root rank in [0, ",
            world_size_, "), found ", root);
  for (size_t i = 0; i < tensors.size(); ++i) {
    AIM_CHECK(tensors[i].defined(), "broadcast_: tensor ", i, " is undefined");
  }
  if (!distributed() || tensors.empty()) return;
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> buffers;
  buffers.reserve(tensors.size());
  for (const auto& t : tensors) buffers.push_back(staged(t, device_));
  collective("broadcast", *this, impl_->timeout.count() / 1000, [&] {
    c10d::broadcast_coalesced(impl_->group, buffers, kBroadcastBucketBytes, root);
  });
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!buffers[i].is_same(tensors[i])) {
      auto target = tensors[i];
      target.copy_(buffers[i]);
    }
  }
}

ReplicaCheck DistContext::compare_with_root(const std::vector<torch::Tensor>& tensors) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < tensors.size(); ++i)
    AIM_CHECK(tensors[i].defined(), "compare_with_root: tensor ", i, " is undefined");
  // In groups of about 256 MB (or one larger tensor): a copy of every parameter at once would
  // need the model's size again in device memory at each checkpoint, enough to run a run sized
  // to fill its GPUs out of memory.
  constexpr int64_t kGroupBytes = int64_t{256} << 20;
  double max_abs_diff = 0;
  double mismatched = 0;
  for (size_t first = 0; first < tensors.size();) {
    size_t last = first;
    int64_t bytes = 0;
    while (last < tensors.size() && (last == first || bytes + tensors[last].nbytes() <= kGroupBytes))
      bytes += static_cast<int64_t>(tensors[last++].nbytes());
    std::vector<torch::Tensor> local, root;
    for (size_t i = first; i < last; ++i) {
      local.push_back(staged(tensors[i].detach(), device_));
      root.push_back(local.back().clone());
    }
    broadcast_(root, 0);
    for (size_t i = 0; i < local.size(); ++i) {
      if (local[i].numel() == 0) continue;
      mismatched += (bits_of(local[i]) != bits_of(root[i])).sum().item<double>();
      // NaN differences count as mismatched elements only.
      const double diff =
          (local[i].to(torch::kFloat64) - root[i].to(torch::kFloat64)).abs().nan_to_num(0.0).max()
              .item<double>();
      max_abs_diff = std::max(max_abs_diff, diff);
    }
    first = last;
  }
  ReplicaCheck check;
  check.max_abs_diff = all_reduce(max_abs_diff, ReduceOp::kMax);
  check.mismatched = static_cast<int64_t>(all_reduce(mismatched, ReduceOp::kSum));
  return check;
}

DistContext init_distributed(const DistConfig& config, const LaunchEnv& env, torch::Device device) {
  AIM_CHECK(config.backend == "auto" || config.backend == "nccl" || config.backend == "gloo",
            "dist.backend: expected auto, nccl or gloo, found '", config.backend, "'");
  AIM_CHECK(config.timeout_s >= 1, "dist.timeout_s: expected at least 1, found ",
            config.timeout_s);
  AIM_CHECK(env.world_size >= 1 && env.rank >= 0 && env.rank < env.world_size,
            "launch environment (", env.launcher, "): expected 0 <= rank < world size, found rank ",
            env.rank, ", world size ", env.world_size);
  DistContext ctx(resolve_device(device, env.local_rank, env.local_world_size));
  ctx.rank_ = env.rank;
  ctx.world_size_ = env.world_size;
  ctx.local_rank_ = env.local_rank;
  ctx.local_world_size_ = env.local_world_size;
  ctx.impl_->rank = env.rank;
  ctx.impl_->world_size = env.world_size;
  ctx.impl_->timeout = std::chrono::milliseconds(config.timeout_s * 1000);
  if (env.world_size == 1) return ctx;

  const std::string backend = config.backend == "auto"
                                  ? (ctx.device_.is_cuda() ? "nccl" : "gloo")
                                  : config.backend;
  AIM_CHECK(backend != "nccl" || ctx.device_.is_cuda(), "dist.backend: 'nccl' needs a CUDA "
            "device, found device ", ctx.device_.str(), "\n---> HINT: dist.backend gloo (or auto) "
            "on the CPU");
  Rendezvous rv = rendezvous(env, ctx.impl_->timeout);
  ctx.impl_->store = rv.store;
  ctx.impl_->mpi_initialised = rv.mpi_initialised;
  ctx.rendezvous_ = rv.method;
  ctx.store_address_ = rv.address;
  try {
    ctx.impl_->group = detail::make_process_group(rv.store, env.rank, env.world_size, backend,
                                                  ctx.device_, ctx.impl_->timeout);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(str_cat("distributed init: creating the ", backend, " process group on ",
                        where(env.rank, env.world_size), " (store ", rv.address, ", ",
                        "dist.timeout_s=", config.timeout_s, ") failed: ", message_of(e)));
  }
  ctx.backend_ = backend;
  return ctx;
}

}  // namespace aim::train
