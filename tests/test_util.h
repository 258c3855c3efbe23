#pragma once
// Shared test helpers: tolerances per dtype, tensor comparison reports, fixture discovery.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <ATen/record_function.h>

#include <cstdlib>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <sys/wait.h>
#include <unistd.h>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "aim/core/config.h"
#include "aim/core/env.h"
#include "aim/core/error.h"
#include "aim/ops/dispatch.h"
#include <string>
#include <vector>

namespace aim::test {

/// Tolerances per dtype, starting from mamba's tests (atol, rtol).
struct Tolerance {
  double atol;
  double rtol;
};
inline Tolerance tolerance_for(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat64: return {1e-10, 1e-9};
    case torch::kFloat: return {6e-4, 2e-3};
    case torch::kBFloat16: return {3e-2, 5e-2};
    case torch::kHalf: return {3e-3, 5e-3};
    default: return {0.0, 0.0};
  }
}

/// Device/dtype pairs every op test runs on: CPU always, CUDA when compiled in and present.
struct DeviceDtype {
  torch::Device device;
  torch::ScalarType dtype;
};
inline std::string param_name(const DeviceDtype& p) {
  return std::string(p.device.is_cuda() ? "cuda" : "cpu") + "_" +
         (p.dtype == torch::kFloat ? "fp32" : p.dtype == torch::kBFloat16 ? "bf16" : "other");
}
inline std::vector<DeviceDtype> device_dtypes() {
  std::vector<DeviceDtype> out{{torch::kCPU, torch::kFloat}, {torch::kCPU, torch::kBFloat16}};
#ifdef AIM_WITH_CUDA
  out.push_back({torch::kCUDA, torch::kFloat});
  out.push_back({torch::kCUDA, torch::kBFloat16});
#endif
  return out;
}
#define AIM_SKIP_WITHOUT_DEVICE(device)                                          \
  do {                                                                           \
    if ((device).is_cuda() && !torch::cuda::is_available())                      \
      GTEST_SKIP() << "CUDA build, but no GPU is visible: GPU case skipped";     \
  } while (0)

/// The device of the tests that run the CUDA kernels through dispatch: a GPU, or the CPU in
/// aim_emu_tests, which installs the kernels run by its emulator for CPU tensors
/// (AIM_OPS_EMULATED; tests/emu).
inline torch::Device kernel_device() {
#ifdef AIM_OPS_EMULATED
  return torch::kCPU;
#else
  return torch::kCUDA;
#endif
}
inline bool kernel_device_available() {
#ifdef AIM_OPS_EMULATED
  return true;
#else
  return torch::cuda::is_available();
#endif
}

/// Base of the CUDA kernel tests (`Base`: ::testing::Test or TestWithParam<T>): skips, saying
/// why, in a build without CUDA or without a visible GPU; otherwise turns the kernels on and
/// poisons op outputs for the test's duration, so elements a kernel leaves unwritten show up.
template <typename Base = ::testing::Test>
class CudaKernelTest : public Base {
 protected:
  void SetUp() override {
#ifndef AIM_WITH_CUDA
    GTEST_SKIP() << "built without CUDA";
#endif
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU visible: CUDA kernel test skipped";
    ops::set_poison_outputs(true);
    ops::set_cuda_kernels(true);
  }
  void TearDown() override { ops::set_poison_outputs(false); }
};

/// Report of one comparison: max |a - b|, where, and how much of the allowed error it used.
struct CloseReport {
  double max_abs = 0, scale = 0, rel = 0, used = 0;
  int64_t index = -1;
  bool finite = true;
};

/// `actual` vs `expected` (both moved to fp64 CPU). With `relative_to_max`, the error is
/// max|a - b| / max|b| against `tol`; otherwise elementwise |a - b| <= atol + rtol |b|.
inline CloseReport compare(const torch::Tensor& actual, const torch::Tensor& expected, double tol,
                           bool relative_to_max, double rtol = 0) {
  CloseReport r;
  auto a = actual.detach().to(torch::kCPU, torch::kFloat64).reshape({-1});
  auto b = expected.detach().to(torch::kCPU, torch::kFloat64).reshape({-1});
  r.finite = torch::isfinite(a).all().item<bool>();
  auto diff = (a - b).abs();
  if (diff.numel() == 0) return r;
  r.index = diff.argmax().item<int64_t>();
  r.max_abs = diff.max().item<double>();
  r.scale = b.abs().max().item<double>();
  if (relative_to_max) {
    r.rel = r.max_abs / std::max(r.scale, 1e-30);
    r.used = r.rel / tol;
  } else {
    r.used = (diff / (tol + rtol * b.abs())).max().item<double>();
    r.rel = r.max_abs / std::max(r.scale, 1e-30);
  }
  return r;
}

/// Asserts closeness and prints one line: name, max diff, index, relative error, share used.
inline void expect_close(const std::string& name, const torch::Tensor& actual,
                         const torch::Tensor& expected, double tol, bool relative_to_max = true,
                         double rtol = 0) {
  ASSERT_EQ(actual.sizes(), expected.sizes()) << name;
  auto r = compare(actual, expected, tol, relative_to_max, rtol);
  std::printf("    %-58s max|diff| %.3e at %lld  rel %.3e  (%.1f%% of tolerance)\n", name.c_str(),
              r.max_abs, static_cast<long long>(r.index), r.rel, 100.0 * r.used);
  EXPECT_TRUE(r.finite) << name << ": non-finite values";
  EXPECT_LE(r.used, 1.0) << name << ": max|diff| " << r.max_abs << " at flat index " << r.index
                         << ", max|expected| " << r.scale;
}

/// A path fixed at build time unless the environment variable `env` names another: the test
/// programs also run relocated (scripts/gpu_check.sh runs a prebuilt aim_tests from another
/// checkout, with another Python).
inline std::string path_setting(const char* env, const char* built) {
  const char* value = std::getenv(env);
  return value && *value ? value : built;
}
/// The source tree ($AIM_SOURCE_DIR), the `aim` program ($AIM_BINARY) and the Python that holds
/// torch, numpy and safetensors ($AIM_PYTHON).
inline std::string source_dir() { return path_setting("AIM_SOURCE_DIR", AIM_SOURCE_DIR); }
#ifdef AIM_BINARY_PATH  // defined for aim_tests, which runs the programs
inline std::string aim_binary() { return path_setting("AIM_BINARY", AIM_BINARY_PATH); }
inline std::string python() { return path_setting("AIM_PYTHON", AIM_PYTHON_PATH); }
#endif

/// `s` as one shell word (single quotes, embedded ones escaped).
inline std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

/// A file's bytes ("" when unreadable).
inline std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// A shell command's exit code and its stdout + stderr.
struct RunResult {
  int code = -1;
  std::string output;
};

#ifdef AIM_BINARY_PATH
/// Test inputs a generator script writes, made once and shared by every test process (a test can
/// run alone under --gtest_filter): <build>/tests/test_inputs/<prefix><hash of key>, where `key`
/// holds whatever the inputs depend on (the scripts' text, fixture sizes); older generations of
/// `prefix` are removed. `generate` writes into the folder it is given and returns its result;
/// on failure the folder is removed and `error` says why (named after `what`).
inline std::filesystem::path generated_once(const std::string& prefix, const std::string& key, const std::string& what,
                                            const std::function<RunResult(const std::filesystem::path&)>& generate,
                                            std::string& error);
#endif
inline RunResult run_shell(const std::string& command) {
  RunResult r;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buf{};
  while (fgets(buf.data(), buf.size(), pipe)) r.output += buf.data();
  const int status = pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

#ifdef AIM_BINARY_PATH
inline std::filesystem::path generated_once(const std::string& prefix, const std::string& key, const std::string& what,
                                            const std::function<RunResult(const std::filesystem::path&)>& generate,
                                            std::string& error) {
  namespace fs = std::filesystem;
  std::ostringstream name;
  name << prefix << std::hex << std::hash<std::string>{}(key);
  const fs::path root = fs::path(aim_binary()).parent_path() / "test_inputs";
  const fs::path dir = root / name.str();
  if (fs::exists(dir / "DONE")) return dir;
  std::error_code ec;
  fs::create_directories(root, ec);
  for (const auto& entry : fs::directory_iterator(root, ec))
    if (entry.path().filename().string().rfind(prefix, 0) == 0 && fs::exists(entry.path() / "DONE"))
      fs::remove_all(entry.path(), ec);
  const fs::path tmp = dir.string() + ".tmp" + std::to_string(::getpid());
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  const auto r = generate(tmp);
  if (r.code != 0) {
    error = what + " failed (exit " + std::to_string(r.code) + "):\n" + r.output;
    fs::remove_all(tmp, ec);
    return dir;
  }
  std::ofstream(tmp / "DONE") << "ok\n";
  fs::rename(tmp, dir, ec);  // another process may have won the race: use its copy
  if (ec) fs::remove_all(tmp, ec);
  return dir;
}
#endif

#ifdef AIM_BINARY_PATH
/// What TensorBoard's own event reader finds in `folder` (tests/tools/read_tensorboard.py: the
/// JSON of its last output line); null, with a test failure, when the reader fails.
inline nlohmann::json read_tensorboard(const std::string& folder) {
  const auto r = run_shell(python() + " " + source_dir() + "/tests/tools/read_tensorboard.py " + shell_quote(folder));
  const auto end = r.output.find_last_not_of('\n');
  const auto start = end == std::string::npos ? std::string::npos : r.output.rfind('\n', end);
  const std::string last = end == std::string::npos ? "" : r.output.substr(start == std::string::npos ? 0 : start + 1);
  const auto j = nlohmann::json::parse(last, nullptr, false);
  if (r.code != 0 || j.is_discarded()) {
    ADD_FAILURE() << "read_tensorboard.py " << folder << " (exit " << r.code << "):\n" << r.output;
    return nullptr;
  }
  return j;
}
#endif

/// The message of the aim::Error that `f` throws, or "" when it throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const aim::Error& e) {
    return e.what();
  }
  return "";
}

/// The CPU flags the kernel reports (the first processor's "flags" line of /proc/cpuinfo), empty
/// where unreadable.
inline std::set<std::string> proc_cpuinfo_flags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    std::set<std::string> flags;
    for (std::string w; words >> w;) flags.insert(w);
    return flags;
  }
  return {};
}

/// Device the model-level tests run on: $AIM_TEST_DEVICE ("cpu" default, "cuda" on a GPU
/// machine; scripts/gpu_check.sh sets it).
inline torch::Device model_device() {
  const char* env = std::getenv("AIM_TEST_DEVICE");
  return torch::Device(env && *env ? env : "cpu");
}

/// configs/tiny.yaml's model (Mamba2, 4 layers of width 64), with adaLN-group (2 groups) or
/// per-layer adaLN, or with Mamba1 mixers (d_state 8, dt_rank auto).
inline ModelConfig tiny_model_config(bool group, const std::string& layer) {
  ModelConfig c = load_config(source_dir() + "/configs/tiny.yaml").model;
  c.adaln_group = group;
  c.num_groups = group ? 2 : 1;
  if (layer == "Mamba1") {
    c.ssm.layer = layer;
    c.ssm.d_state = 8;
    c.ssm.dt_rank = 0;  // auto: ceil(d_model / 16)
  }
  c.resolve();
  c.validate();
  return c;
}

/// $AIM_FIXTURES_DIR or tests/fixtures of the source tree.
inline std::filesystem::path fixtures_dir() {
  const char* env = std::getenv("AIM_FIXTURES_DIR");
  return env && *env ? std::filesystem::path(env)
                     : std::filesystem::path(source_dir()) / "tests" / "fixtures";
}

/// Names of the case folders under fixtures_dir()/group that hold every file in `required`.
inline std::vector<std::string> fixture_cases(const std::string& group,
                                              const std::vector<std::string>& required) {
  std::vector<std::string> out;
  auto root = fixtures_dir() / group;
  std::error_code ec;
  if (!std::filesystem::is_directory(root, ec)) return out;
  for (const auto& entry : std::filesystem::directory_iterator(root, ec)) {
    if (!entry.is_directory()) continue;
    bool ok = true;
    for (const auto& f : required) ok = ok && std::filesystem::exists(entry.path() / f);
    if (ok) out.push_back(entry.path().filename().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

/// Random tensor in a realistic range, never all zeros.
inline torch::Tensor randn(torch::IntArrayRef shape, torch::ScalarType dtype = torch::kFloat,
                           torch::Device device = torch::kCPU, double scale = 1.0) {
  return (torch::randn(shape, torch::kFloat) * scale).to(device, dtype);
}

/// An fp64 CPU copy of `t` for the references: a leaf that requires grad, or a plain value.
inline torch::Tensor f64_leaf(const torch::Tensor& t) {
  return t.detach().to(torch::kCPU, torch::kFloat64).contiguous().requires_grad_(true);
}
inline torch::Tensor to_cpu64(const torch::Tensor& t) {
  return t.detach().to(torch::kCPU, torch::kFloat64);
}

/// Calls of the ATen op `name` (e.g. "aten::cat") on this thread while alive; one at a time.
class OpCounter {
 public:
  explicit OpCounter(std::string name) {
    op() = std::move(name);
    calls() = 0;
    handle_ = at::addThreadLocalCallback(at::RecordFunctionCallback(
        [](const at::RecordFunction& fn) -> std::unique_ptr<at::ObserverContext> {
          if (op() == fn.name()) ++calls();
          return nullptr;
        }));
  }
  ~OpCounter() { at::removeCallback(handle_); }
  OpCounter(const OpCounter&) = delete;
  OpCounter& operator=(const OpCounter&) = delete;
  int count() const { return calls(); }

 private:
  static std::string& op() {
    static thread_local std::string name;
    return name;
  }
  static int& calls() {
    static thread_local int n = 0;
    return n;
  }
  at::CallbackHandle handle_;
};

/// The library's scoped environment variables (aim/core/env.h).
using ScopedEnv = aim::ScopedEnv;

/// With `var`=`value` in the environment `run` must fail with an error that names the variable
/// and the value found.
inline void expect_env_value_refused(const char* var, const std::string& value, const std::function<void()>& run) {
  const ScopedEnv bad(var, value);
  try {
    run();
    ADD_FAILURE() << var << "=" << value << " was accepted";
  } catch (const std::exception& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(var), std::string::npos) << what;
    EXPECT_NE(what.find("found '" + value + "'"), std::string::npos) << what;
  }
}

}  // namespace aim::test

namespace aim::test {
inline void PrintTo(const DeviceDtype& p, std::ostream* os) { *os << param_name(p); }
}  // namespace aim::test
