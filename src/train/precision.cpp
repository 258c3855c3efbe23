// train.precision: bf16, fp32, or auto (bf16 where the device has fast bf16 arithmetic).
#include "aim/train/precision.h"

#include <ATen/cpu/Utils.h>

#include "aim/core/error.h"

namespace aim::train {

#ifdef AIM_WITH_CUDA
int cuda_compute_major(int index);  // flops_cuda.cpp
#endif

namespace {

bool cpu_capability(const char* key) {
  static const auto caps = at::cpu::get_cpu_capabilities();
  const auto it = caps.find(key);
  return it != caps.end() && it->second.isBool() && it->second.toBool();
}

}  // namespace

bool cpu_has_amx_bf16() { return cpu_capability("amx_bf16"); }
bool cpu_has_avx512_bf16() { return cpu_capability("avx512_bf16"); }

Precision resolve_precision(const std::string& setting, const torch::Device& device) {
  Precision p;
  if (setting == "fp32") {
    p.summary = "fp32";
    return p;
  }
  bool fast = true;
  std::string why = device.str();
  if (device.is_cuda()) {
#ifdef AIM_WITH_CUDA
    const int major = cuda_compute_major(device.has_index() ? device.index() : -1);
    fast = major >= 8;
    why = str_cat("CUDA compute capability ", major, ".x", fast ? "" : ", below 8.0: no bf16 tensor cores");
#endif
  } else if (device.is_cpu()) {
    const bool amx = cpu_has_amx_bf16(), avx512 = cpu_has_avx512_bf16();
    fast = amx;
    why = amx ? "CPU with AMX-BF16" : avx512 ? "CPU with AVX512-BF16 but no AMX" : "CPU without AVX512-BF16 or AMX";
    if (setting == "bf16" && !amx && !avx512)
      p.warning = "train.precision is bf16 on a CPU without AVX512-BF16 or AMX: ATen's bf16 matmuls run in "
                  "software here, tens of times slower than fp32 (docs/perf.md); set train.precision to auto or "
                  "fp32 to train in fp32";
  }
  if (setting == "bf16") {
    p.bf16 = true;
    p.summary = "bf16 autocast, fp32 master weights";
  } else {  // "auto" (the config validator admits nothing else)
    p.bf16 = fast;
    p.summary = str_cat("auto: ", fast ? "bf16 autocast, fp32 master weights" : "fp32", " (", why, ")");
  }
  return p;
}

}  // namespace aim::train
