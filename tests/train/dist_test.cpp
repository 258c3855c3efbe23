// Distributed layer. Single-process behaviour and errors run in this process; two-rank runs are
// real: the parent tests (DistTest.*) start this binary twice, under mpirun (MPI rendezvous) or
// as two plain processes with torchrun's variables (MASTER_ADDR/MASTER_PORT), restricted to one
// child test (DistChild.*). A child works only when AIM_DIST_CHILD names it, and leaves
// rank<r>.ok in AIM_DIST_OUT when all its checks passed; the parent asserts exit codes and files.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "aim/core/env.h"
#include "aim/train/dist.h"
#include "test_util.h"
#include "train/dist_backends.h"

namespace aim::train {
namespace {

namespace fs = std::filesystem;

// Gradients through different summation orders (fp32): max|diff| / max|expected|.
constexpr double kGradTolerance = 1e-5;
// Per child process; a hung rank fails the parent instead of stalling ctest.
constexpr int kChildTimeoutS = 120;
// Children's collective timeout.
constexpr int64_t kChildDistTimeoutS = 60;

// ------------------------------------------------------------------------------ helpers

// Every multi-process test runs on Gloo: its headers are an optional build dependency.
#ifdef AIM_WITH_GLOO
#define AIM_SKIP_WITHOUT_GLOO() \
  do {                          \
  } while (0)
#else
#define AIM_SKIP_WITHOUT_GLOO() \
  GTEST_SKIP() << "this build has no Gloo headers (libgloo-dev): no CPU process group"
#endif

/// A TCP port nobody listens on right now.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    if (fd >= 0) ::close(fd);
    return 29500 + static_cast<int>(::getpid() % 1000);
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string self_exe() { return fs::read_symlink("/proc/self/exe").string(); }

fs::path fresh_dir(const std::string& name) {
  auto dir = fs::temp_directory_path() / ("aim_dist_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// Whether this process is the child `name`; the reason to skip otherwise.
bool child_active(const std::string& name) {
  const char* v = std::getenv("AIM_DIST_CHILD");
  return v != nullptr && name == v;
}
constexpr const char* kChildSkip = "runs only inside a multi-process DistTest (AIM_DIST_CHILD)";

/// What a child expects its rendezvous to be ("mpi" | "env").
std::string child_expected_rendezvous() {
  const char* v = std::getenv("AIM_DIST_EXPECT_RENDEZVOUS");
  return v ? v : "";
}

/// rank<r>.ok in AIM_DIST_OUT, written only when the test has no failure so far.
void report_ok(int rank) {
  if (::testing::Test::HasFailure()) return;
  const char* out = std::getenv("AIM_DIST_OUT");
  ASSERT_NE(out, nullptr) << "AIM_DIST_OUT is not set";
  std::ofstream(fs::path(out) / ("rank" + std::to_string(rank) + ".ok")) << "ok\n";
}

std::string child_env(const std::string& child, const fs::path& out,
                      const std::string& rendezvous) {
  return "AIM_DIST_CHILD=" + child + " AIM_DIST_OUT=" + out.string() +
         " AIM_DIST_EXPECT_RENDEZVOUS=" + rendezvous + " OMP_NUM_THREADS=1";
}

// Variables through which another launcher would claim the children: none may leak in from the
// environment ctest runs in (a Slurm allocation, say).
const char* const kLauncherVars[] = {
    "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "SLURM_PROCID",
    "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
    "MASTER_PORT"};

std::string unset_launcher_vars() {
  std::string s = "env";
  for (const char* v : kLauncherVars) s += std::string(" -u ") + v;
  return s;
}

/// `mpirun -np 2` of this binary restricted to `filter`, as child `child`.
test::RunResult run_mpi_children(const std::string& child, const std::string& filter,
                                 const fs::path& out) {
  // --oversubscribe: two ranks even where Open MPI counts fewer slots; --bind-to none: ranks
  // share the cores with everything else running. In containers, vader's single-copy transfers
  // (CMA) are refused by the kernel's ptrace rules, so they are turned off.
  const std::string cmd = unset_launcher_vars() + " " + child_env(child, out, "mpi") +
                          " GLOO_SOCKET_IFNAME=lo OMPI_MCA_btl_vader_single_copy_mechanism=none"
                          " timeout " + std::to_string(kChildTimeoutS) +
                          " mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2"
                          " -x AIM_DIST_CHILD -x AIM_DIST_OUT -x AIM_DIST_EXPECT_RENDEZVOUS"
                          " -x OMP_NUM_THREADS -x GLOO_SOCKET_IFNAME " +
                          self_exe() + " --gtest_filter=" + filter;
  return test::run_shell(cmd);
}

/// Two plain processes of this binary with torchrun's variables; prints "exit <r0> <r1>".
test::RunResult run_env_children(const std::string& child, const std::string& filter,
                                 const fs::path& out) {
  const int port = free_port();
  std::string cmd;
  for (int r = 0; r < 2; ++r) {
    cmd += "( " + unset_launcher_vars() + " " + child_env(child, out, "env") +
           " RANK=" + std::to_string(r) + " WORLD_SIZE=2 LOCAL_RANK=" + std::to_string(r) +
           " LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) +
           " timeout " + std::to_string(kChildTimeoutS) + " " + self_exe() +
           " --gtest_filter=" + filter + " > " + (out / ("log" + std::to_string(r))).string() +
           " 2>&1 ) & p" + std::to_string(r) + "=$!; ";
  }
  cmd += "wait $p0; r0=$?; wait $p1; r1=$?; echo \"exit $r0 $r1\"; "
         "cat " + (out / "log0").string() + " " + (out / "log1").string() + "; "
         "[ $r0 -eq 0 ] && [ $r1 -eq 0 ]";
  return test::run_shell(cmd);
}

/// Why the MPI tests cannot run here, or "".
std::string mpi_unavailable() {
#ifndef AIM_WITH_MPI
  return "this build has no MPI";
#else
  if (test::run_shell("command -v mpirun").code != 0) return "mpirun is not on PATH";
  return "";
#endif
}

void expect_both_ranks_ok(const fs::path& out, const test::RunResult& run) {
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(fs::exists(out / ("rank" + std::to_string(r) + ".ok")))
        << "rank " << r << " did not report success; output:\n" << run.output;
  }
}

std::vector<torch::Tensor> grads_of(const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> g;
  for (const auto& p : params) g.push_back(p.grad());
  return g;
}

torch::nn::Sequential make_net() {
  return torch::nn::Sequential(torch::nn::Linear(6, 16), torch::nn::Tanh(),
                               torch::nn::Linear(16, 16), torch::nn::Tanh(),
                               torch::nn::Linear(16, 3));
}

DistConfig child_config() {
  DistConfig config;
  config.timeout_s = kChildDistTimeoutS;
  return config;
}

// ------------------------------------------------------------------------------ one process

TEST(DistTest, SingleProcessCollectivesReturnTheirInput) {
  DistContext ctx = init_distributed(DistConfig{}, LaunchEnv{}, torch::kCPU);
  EXPECT_EQ(ctx.world_size(), 1);
  EXPECT_EQ(ctx.backend(), "none");
  EXPECT_EQ(ctx.rendezvous(), "none");
  EXPECT_FALSE(ctx.distributed());
  ctx.barrier();
  auto t = torch::tensor({1.5f, -2.0f, 3.0f});
  const auto original = t.clone();
  for (auto op : {ReduceOp::kSum, ReduceOp::kMean, ReduceOp::kMax, ReduceOp::kMin}) {
    ctx.all_reduce_(t, op);
    EXPECT_TRUE(torch::equal(t, original));
  }
  EXPECT_EQ(ctx.all_reduce(2.5, ReduceOp::kMean), 2.5);
  EXPECT_TRUE(ctx.any_true(true));
  EXPECT_FALSE(ctx.any_true(false));
  EXPECT_TRUE(ctx.all_true(true));
  EXPECT_FALSE(ctx.all_true(false));
  std::vector<torch::Tensor> list{t};
  ctx.broadcast_(list);
  EXPECT_TRUE(torch::equal(t, original));
  const auto check = ctx.compare_with_root(list);
  EXPECT_TRUE(check.identical());
  EXPECT_EQ(check.max_abs_diff, 0.0);
  ctx.finalize();
  ctx.finalize();  // idempotent
}

TEST(DistTest, SingleProcessGradSyncLeavesGradientsAlone) {
  DistContext ctx(torch::kCPU);
  torch::manual_seed(3);
  auto net = make_net();
  auto params = net->parameters();
  GradSync sync(params, ctx);
  EXPECT_EQ(sync.bucket_count(), 0);
  const auto x = torch::randn({4, 6});
  for (bool s : {false, true}) {
    sync.prepare_for_backward(s);
    net->forward(x).square().sum().backward();
  }
  // Expected: the same two backward passes without GradSync.
  std::vector<torch::Tensor> first = grads_of(params);
  for (auto& p : params) p.mutable_grad().reset();
  for (int i = 0; i < 2; ++i) net->forward(x).square().sum().backward();
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_TRUE(torch::equal(first[i], params[i].grad())) << "parameter " << i;
  }
}

TEST(DistTest, GradSyncRejectsBadParameters) {
  DistContext ctx(torch::kCPU);
  auto w = torch::randn({3}, torch::requires_grad());
  EXPECT_NE(
      test::error_of([&] { GradSync sync({w, w}, ctx); }).find("parameter 1 was passed before"),
      std::string::npos);
  auto derived = w * 2;
  EXPECT_NE(test::error_of([&] { GradSync sync({derived}, ctx); }).find("leaf tensor"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { GradSync sync({}, ctx); }).find("expected parameters"),
            std::string::npos);
}

TEST(DistTest, ConfigErrorsNameTheKey) {
  LaunchEnv two;
  two.world_size = 2;
  two.launcher = "torchrun";
  DistConfig bad_backend;
  bad_backend.backend = "mpi";
  const auto e1 = test::error_of([&] { init_distributed(bad_backend, two, torch::kCPU); });
  EXPECT_NE(e1.find("dist.backend"), std::string::npos) << e1;
  EXPECT_NE(e1.find("'mpi'"), std::string::npos) << e1;
  DistConfig nccl;
  nccl.backend = "nccl";
  const auto e2 = test::error_of([&] { init_distributed(nccl, two, torch::kCPU); });
  EXPECT_NE(e2.find("dist.backend"), std::string::npos) << e2;
  EXPECT_NE(e2.find("CUDA"), std::string::npos) << e2;
  DistConfig zero;
  zero.timeout_s = 0;
  const auto e3 = test::error_of([&] { init_distributed(zero, two, torch::kCPU); });
  EXPECT_NE(e3.find("dist.timeout_s"), std::string::npos) << e3;
}

TEST(DistTest, NoRendezvousNamesMasterAddrAndPort) {
  test::ScopedEnv env;
  env.set("MASTER_ADDR", std::nullopt).set("MASTER_PORT", std::nullopt);
  LaunchEnv two;
  two.world_size = 2;
  two.launcher = "slurm";
  const auto e = test::error_of([&] { init_distributed(DistConfig{}, two, torch::kCPU); });
  std::printf("    %s\n", e.c_str());
  EXPECT_NE(e.find("expected MASTER_ADDR and MASTER_PORT"), std::string::npos) << e;
  EXPECT_NE(e.find("MASTER_ADDR=<unset>"), std::string::npos) << e;
  EXPECT_NE(e.find("'slurm'"), std::string::npos) << e;
  EXPECT_NE(e.find("scontrol show hostnames"), std::string::npos) << e;

  env.set("MASTER_ADDR", "127.0.0.1");
  const auto e2 = test::error_of([&] { init_distributed(DistConfig{}, two, torch::kCPU); });
  EXPECT_NE(e2.find("MASTER_ADDR='127.0.0.1'"), std::string::npos) << e2;
  EXPECT_NE(e2.find("MASTER_PORT=<unset>"), std::string::npos) << e2;

  env.set("MASTER_PORT", "http");
  const auto e3 = test::error_of([&] { init_distributed(DistConfig{}, two, torch::kCPU); });
  EXPECT_NE(e3.find("MASTER_PORT: expected a port in 1..65535, found 'http'"), std::string::npos)
      << e3;
}

TEST(DistTest, UnreachableStoreTimesOut) {
  // Rank 1 of 2 with no rank 0 anywhere: an error naming the address once dist.timeout_s passed.
  const int port = free_port();
  test::ScopedEnv env;
  env.set("MASTER_ADDR", "127.0.0.1").set("MASTER_PORT", std::to_string(port));
  LaunchEnv env1;
  env1.rank = 1;
  env1.world_size = 2;
  env1.launcher = "torchrun";
  DistConfig config;
  config.timeout_s = 2;
  const auto start = std::chrono::steady_clock::now();
  const auto e = test::error_of([&] { init_distributed(config, env1, torch::kCPU); });
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("    after %.1f s: %.200s\n", seconds, e.c_str());
  EXPECT_NE(e.find("could not reach the c10d store at 127.0.0.1:" + std::to_string(port)),
            std::string::npos) << e;
  EXPECT_NE(e.find("MASTER_ADDR, MASTER_PORT"), std::string::npos) << e;
  EXPECT_LT(seconds, 30.0);
}

// The factory behind init_distributed, with one rank and an in-memory store.
TEST(DistTest, ProcessGroupOfOneRank) {
  std::vector<std::pair<std::string, torch::Device>> cases;
#ifdef AIM_WITH_GLOO
  cases.push_back({"gloo", torch::kCPU});
#endif
#ifdef AIM_WITH_NCCL
  if (torch::cuda::is_available()) {
    cases.push_back({"nccl", torch::Device(torch::kCUDA, 0)});
  } else {
    std::printf("    nccl case skipped: CUDA build, but no GPU is visible\n");
  }
#endif
  for (const auto& [backend, device] : cases) {
    SCOPED_TRACE(backend);
    auto store = c10::make_intrusive<c10d::HashStore>();
    auto group = detail::make_process_group(store, 0, 1, backend, device,
                                            std::chrono::milliseconds(30000));
    std::vector<torch::Tensor> t{torch::full({4}, 2.5f, torch::TensorOptions().device(device))};
    group->allreduce(t)->wait();
    EXPECT_TRUE(torch::equal(t[0].cpu(), torch::full({4}, 2.5f)));
    c10d::BarrierOptions opts;
    opts.device = device;
    group->barrier(opts)->wait();
    group->shutdown();
  }
}

TEST(DistTest, UnknownGlooInterfaceIsNamed) {
  AIM_SKIP_WITHOUT_GLOO();
  test::ScopedEnv env;
  env.set("GLOO_SOCKET_IFNAME", "lo,aim_no_such_if");
  auto store = c10::make_intrusive<c10d::HashStore>();
  const auto e = test::error_of([&] {
    detail::make_process_group(store, 0, 1, "gloo", torch::kCPU, std::chrono::milliseconds(5000));
  });
  EXPECT_NE(e.find("GLOO_SOCKET_IFNAME"), std::string::npos) << e;
  EXPECT_NE(e.find("'aim_no_such_if'"), std::string::npos) << e;
}

#ifdef AIM_WITH_NCCL
TEST(DistTest, NcclHeaderMatchesLibTorch) {
  const auto v = detail::nccl_versions();
  std::printf("    nccl.h %llu.%llu.%llu, LibTorch built with %llu.%llu.%llu\n",
              static_cast<unsigned long long>(v.header >> 32),
              static_cast<unsigned long long>((v.header >> 16) & 0xffff),
              static_cast<unsigned long long>(v.header & 0xffff),
              static_cast<unsigned long long>(v.libtorch >> 32),
              static_cast<unsigned long long>((v.libtorch >> 16) & 0xffff),
              static_cast<unsigned long long>(v.libtorch & 0xffff));
  EXPECT_EQ(v.header >> 16, v.libtorch >> 16);
}
#endif

// ------------------------------------------------------------------------------ two processes

TEST(DistTest, CollectivesOverMpiRendezvous) {
  AIM_SKIP_WITHOUT_GLOO();
  if (const auto why = mpi_unavailable(); !why.empty()) GTEST_SKIP() << why;
  const auto out = fresh_dir("collectives_mpi");
  const auto run = run_mpi_children("collectives", "DistChild.Collectives", out);
  EXPECT_EQ(run.code, 0) << run.output;
  expect_both_ranks_ok(out, run);
  fs::remove_all(out);
}

TEST(DistTest, CollectivesOverMasterAddrPort) {
  AIM_SKIP_WITHOUT_GLOO();
  const auto out = fresh_dir("collectives_env");
  const auto run = run_env_children("collectives", "DistChild.Collectives", out);
  EXPECT_EQ(run.code, 0) << run.output;
  expect_both_ranks_ok(out, run);
  fs::remove_all(out);
}

TEST(DistTest, GradSyncWithAccumulationEqualsOneProcess) {
  AIM_SKIP_WITHOUT_GLOO();
  if (const auto why = mpi_unavailable(); !why.empty()) GTEST_SKIP() << why;
  const auto out = fresh_dir("grad_sync");
  const auto run = run_mpi_children("grad_sync", "DistChild.GradSync", out);
  EXPECT_EQ(run.code, 0) << run.output;
  expect_both_ranks_ok(out, run);
  fs::remove_all(out);
}

TEST(DistTest, ExitedPeerFailsCollectivesInsteadOfHanging) {
  AIM_SKIP_WITHOUT_GLOO();
  const auto out = fresh_dir("peer_exit");
  const auto run = run_env_children("peer_exit", "DistChild.PeerExit", out);
  // Rank 1 leaves on purpose with status 3; rank 0 must report that and pass.
  EXPECT_NE(run.output.find("exit 0 3"), std::string::npos) << run.output;
  EXPECT_TRUE(fs::exists(out / "rank0.ok")) << run.output;
  fs::remove_all(out);
}

// ------------------------------------------------------------------------------ children

TEST(DistChild, Collectives) {
  if (!child_active("collectives")) GTEST_SKIP() << kChildSkip;
  DistContext ctx = init_distributed(child_config(), detect_launch_env(), torch::kCPU);
  ASSERT_EQ(ctx.world_size(), 2);
  EXPECT_EQ(ctx.backend(), "gloo");
  EXPECT_EQ(ctx.rendezvous(), child_expected_rendezvous());
  const int r = ctx.rank();
  ctx.barrier();

  // Rank r holds (r + 1) * x.
  const auto x = torch::tensor({1.0, -2.0, 0.5, 8.0}, torch::kFloat64);
  for (auto dtype : {torch::kFloat32, torch::kFloat64}) {
    const auto mine = (x * (r + 1)).to(dtype);
    auto sum = mine.clone(), mean = mine.clone(), max = mine.clone(), min = mine.clone();
    ctx.all_reduce_(sum, ReduceOp::kSum);
    ctx.all_reduce_(mean, ReduceOp::kMean);
    ctx.all_reduce_(max, ReduceOp::kMax);
    ctx.all_reduce_(min, ReduceOp::kMin);
    EXPECT_TRUE(torch::equal(sum, (x * 3).to(dtype))) << sum;
    EXPECT_TRUE(torch::equal(mean, (x * 1.5).to(dtype))) << mean;
    EXPECT_TRUE(torch::equal(max, torch::max(x, x * 2).to(dtype))) << max;
    EXPECT_TRUE(torch::equal(min, torch::min(x, x * 2).to(dtype))) << min;
  }
  // Non-contiguous: staged through a copy and written back.
  auto strided = torch::arange(12, torch::kFloat32).reshape({3, 4}).t() * (r + 1);
  ctx.all_reduce_(strided, ReduceOp::kSum);
  EXPECT_TRUE(torch::equal(strided, torch::arange(12, torch::kFloat32).reshape({3, 4}).t() * 3));
  EXPECT_EQ(ctx.all_reduce(r + 0.25, ReduceOp::kSum), 1.5);
  EXPECT_EQ(ctx.all_reduce(r + 0.25, ReduceOp::kMax), 1.25);
  EXPECT_TRUE(ctx.any_true(r == 1));
  EXPECT_FALSE(ctx.any_true(false));
  EXPECT_FALSE(ctx.all_true(r == 0));
  EXPECT_TRUE(ctx.all_true(true));

  // Different tensors per rank; after the broadcast every rank holds rank 0's.
  auto make = [](int seed) {
    torch::manual_seed(seed);
    return std::vector<torch::Tensor>{
        torch::randn({5, 7}), torch::randn({3}, torch::kFloat64),
        torch::randint(0, 1000, {4}, torch::kLong), torch::randn({4, 6}).t(),
        torch::randn({2, 3}).to(torch::kBFloat16)};
  };
  auto tensors = make(100 + r);
  const auto expected = make(100);
  const auto before = ctx.compare_with_root(tensors);
  EXPECT_FALSE(before.identical());
  EXPECT_GT(before.max_abs_diff, 0.0);
  EXPECT_GT(before.mismatched, 0);
  ctx.broadcast_(tensors);
  for (size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_TRUE(torch::equal(tensors[i], expected[i])) << "tensor " << i;
  }
  const auto after = ctx.compare_with_root(tensors);
  EXPECT_TRUE(after.identical()) << after.mismatched << " elements differ";
  EXPECT_EQ(after.max_abs_diff, 0.0);
  ctx.finalize();
  report_ok(r);
}

TEST(DistChild, GradSync) {
  if (!child_active("grad_sync")) GTEST_SKIP() << kChildSkip;
  DistContext ctx = init_distributed(child_config(), detect_launch_env(), torch::kCPU);
  ASSERT_EQ(ctx.world_size(), 2);
  const int r = ctx.rank();
  const int world = 2, micro = 2, per_micro = 3, steps = 3;

  GradSyncOptions tiny;  // several buckets for these few parameters
  tiny.first_bucket_bytes = 64;
  tiny.bucket_bytes = 512;
  for (const auto& options : {GradSyncOptions{}, tiny}) {
    SCOPED_TRACE("first bucket " + std::to_string(options.first_bucket_bytes) + " bytes");
    torch::manual_seed(1000 + r);  // each rank initialises differently
    auto net = make_net();
    auto params = net->parameters();
    EXPECT_FALSE(ctx.compare_with_root(params).identical());
    ctx.broadcast_(params);
    ASSERT_TRUE(ctx.compare_with_root(params).identical());

    // Reference: the same model in one process over every rank's micro-batches.
    auto ref = make_net();
    auto ref_params = ref->parameters();
    {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < params.size(); ++i) ref_params[i].copy_(params[i]);
    }
    GradSync sync(params, ctx, options);
    if (options.first_bucket_bytes == tiny.first_bucket_bytes) {
      EXPECT_GT(sync.bucket_count(), 2);
    } else {
      EXPECT_EQ(sync.bucket_count(), 1);
    }

    for (int step = 0; step < steps; ++step) {
      SCOPED_TRACE("step " + std::to_string(step));
      torch::manual_seed(50 + step);  // the whole step's data, the same on every rank
      const auto xs = torch::randn({world, micro, per_micro, 6});
      const auto ys = torch::randn({world, micro, per_micro, 3});
      for (auto& p : params) p.mutable_grad().reset();
      for (auto& p : ref_params) p.mutable_grad().reset();

      for (int m = 0; m < micro; ++m) {
        sync.prepare_for_backward(/*sync=*/m == micro - 1);
        const auto loss = torch::mse_loss(net->forward(xs[r][m]), ys[r][m]) / micro;
        loss.backward();
        if (m < micro - 1) {
          // Accumulating: nothing was exchanged, each rank holds its own gradients.
          EXPECT_FALSE(ctx.compare_with_root(grads_of(params)).identical());
        }
      }
      for (int rr = 0; rr < world; ++rr) {
        for (int m = 0; m < micro; ++m) {
          const auto loss = torch::mse_loss(ref->forward(xs[rr][m]), ys[rr][m]) / (micro * world);
          loss.backward();
        }
      }
      for (size_t i = 0; i < params.size(); ++i) {
        test::expect_close("rank " + std::to_string(r) + ", first bucket " +
                               std::to_string(options.first_bucket_bytes) + " B, step " +
                               std::to_string(step) + ", grad " + std::to_string(i),
                           params[i].grad(), ref_params[i].grad(), kGradTolerance);
      }
      EXPECT_TRUE(ctx.compare_with_root(grads_of(params)).identical());

      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < params.size(); ++i) {
        params[i].sub_(0.1 * params[i].grad());
        ref_params[i].sub_(0.1 * ref_params[i].grad());
      }
    }
    const auto final_check = ctx.compare_with_root(params);
    EXPECT_TRUE(final_check.identical()) << final_check.mismatched << " elements differ";
  }
  ctx.finalize();
  report_ok(r);
}

TEST(DistChild, PeerExit) {
  if (!child_active("peer_exit")) GTEST_SKIP() << kChildSkip;
  DistContext ctx = init_distributed(child_config(), detect_launch_env(), torch::kCPU);
  ASSERT_EQ(ctx.world_size(), 2);
  ctx.barrier();
  if (ctx.rank() == 1) std::_Exit(3);  // as a crash would: no teardown
  const auto start = std::chrono::steady_clock::now();
  const auto e = test::error_of([&] {
    for (int i = 0; i < 100; ++i) ctx.barrier();
  });
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("    rank 0 after %.1f s: %.300s\n", seconds, e.c_str());
  EXPECT_NE(e.find("barrier over gloo failed on rank 0 of 2"), std::string::npos) << e;
  EXPECT_LT(seconds, kChildDistTimeoutS / 2.0);
  report_ok(0);
}

}  // namespace
}  // namespace aim::train
