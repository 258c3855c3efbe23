#pragma once
#include <string>

namespace aim {

/// One line describing this build: aim version, LibTorch version, CUDA kernels compiled in or
/// not, and the devices visible now.
std::string build_info();

/// True when this binary was built with the CUDA kernels and adapters.
bool built_with_cuda();

}  // namespace aim
