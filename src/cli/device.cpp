#include <torch/torch.h>

#include <cerrno>
#include <cstdlib>

#include "aim/cli/commands.h"
#include "aim/core/error.h"

namespace aim::cli {

torch::Device parse_device(const std::string& value, int local_rank) {
  if (value == "cpu") return torch::kCPU;
  if (value == "auto") return torch::cuda::is_available() ? parse_device("cuda", local_rank) : torch::Device(torch::kCPU);
  if (value.rfind("cuda", 0) != 0) {
    throw Error(str_cat("--device: expected auto, cpu, cuda or cuda:<index>, found '", value, "'"));
  }
  if (!torch::cuda::is_available()) {
    throw Error(str_cat("--device ", value, ": no CUDA device is visible\n---> HINT: use --device cpu"));
  }
  const int count = static_cast<int>(torch::cuda::device_count());
  int index = local_rank % count;
  if (value.size() > 4) {
    if (value[4] != ':') throw Error(str_cat("--device: expected cuda:<index>, found '", value, "'"));
    try {
      index = std::stoi(value.substr(5));
    } catch (const std::exception&) {
      throw Error(str_cat("--device: expected cuda:<index>, found '", value, "'"));
    }
    if (index < 0 || index >= count) {
      throw Error(str_cat("--device ", value, ": expected an index in [0, ", count, ")"));
    }
  }
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
}

CLI::Validator seed_validator() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos)
          return "expected an integer >= 0, found '" + s + "'";
        errno = 0;
        (void)std::strtoull(s.c_str(), nullptr, 10);
        if (errno == ERANGE) return "expected an integer below 2^64, found " + s;
        return "";
      },
      "SEED");
}

}  // namespace aim::cli
