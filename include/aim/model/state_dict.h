#pragma once
// Copying named tensors into a module with every mismatch collected, so a wrong checkpoint is
// reported once with all its problems by name.
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

namespace aim {

/// Copies `incoming` (keys relative to `module`) into its parameters and buffers, converting
/// dtypes. Returns one line per problem: `missing: <prefix><key> [shape]`,
/// `unexpected: ...`, `shape mismatch: <key>: checkpoint [...], model [...]`, `wrong dtype: ...`.
/// `display_prefix` is prepended to keys in the messages (e.g. "mamba.").
std::vector<std::string> copy_state_dict(torch::nn::Module& module,
                                         const std::map<std::string, torch::Tensor>& incoming,
                                         const std::string& display_prefix);

/// Throws aim::Error "<what>: <summary>:\n  <problem>..." (the first 30, then how many more)
/// with a hint, when `problems` is not empty.
void throw_if_problems(const std::vector<std::string>& problems, const std::string& what,
                       const std::string& summary);

/// "[a, b, c]".
std::string shape_str(torch::IntArrayRef sizes);

}  // namespace aim
