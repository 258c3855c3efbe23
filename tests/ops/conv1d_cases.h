#pragma once
// The causal conv1d test cases shared by the CUDA and CPU kernel tests: the case, its name, and
// the input as the mixers pass it.
#include <torch/torch.h>

#include <string>

#include "test_util.h"

namespace aim::test {

struct ConvCase {
  int64_t batch, channels, len, width;
  bool channel_last, bias, silu;
  torch::ScalarType dtype;
};

inline std::string case_name(const ConvCase& c) {
  return "B" + std::to_string(c.batch) + "_C" + std::to_string(c.channels) + "_L" +
         std::to_string(c.len) + "_W" + std::to_string(c.width) +
         (c.channel_last ? "_clast" : "_contig") + (c.bias ? "" : "_nobias") +
         (c.silu ? "" : "_nosilu") + (c.dtype == torch::kBFloat16 ? "_bf16" : "_fp32");
}

/// x [B, C, L]: channel-last as a slice of a wider [B, L, C + 40] projection, like the Mamba2
/// mixer's, or contiguous (Mamba1's layout).
inline torch::Tensor conv_input(const ConvCase& c, torch::Device device) {
  if (c.channel_last) {
    return randn({c.batch, c.len, c.channels + 40}, c.dtype, device).narrow(2, 20, c.channels).transpose(1, 2);
  }
  return randn({c.batch, c.channels, c.len}, c.dtype, device);
}

}  // namespace aim::test
