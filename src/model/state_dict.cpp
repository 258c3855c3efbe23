#include "aim/model/state_dict.h"

#include <set>
#include <sstream>

#include "aim/core/error.h"

namespace aim {

std::string shape_str(torch::IntArrayRef sizes) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < sizes.size(); ++i) os << (i ? ", " : "") << sizes[i];
  os << "]";
  return os.str();
}

std::vector<std::string> copy_state_dict(torch::nn::Module& module,
                                         const std::map<std::string, torch::Tensor>& incoming,
                                         const std::string& display_prefix) {
  std::map<std::string, torch::Tensor> targets;
  for (const auto& item : module.named_parameters(true)) targets[item.key()] = item.value();
  for (const auto& item : module.named_buffers(true)) targets[item.key()] = item.value();
  std::vector<std::string> problems;
  std::set<std::string> seen;
  torch::NoGradGuard no_grad;
  for (const auto& [key, value] : incoming) {
    const std::string shown = display_prefix + key;
    auto it = targets.find(key);
    if (it == targets.end()) {
      problems.push_back(str_cat("  unexpected: ", shown, " ", shape_str(value.sizes())));
      continue;
    }
    seen.insert(key);
    auto& target = it->second;
    if (target.sizes() != value.sizes()) {
      problems.push_back(str_cat("  shape mismatch: ", shown, ": checkpoint ",
                                 shape_str(value.sizes()), ", model ", shape_str(target.sizes())));
      continue;
    }
    if (target.is_floating_point() && !value.is_floating_point()) {
      problems.push_back(str_cat("  wrong dtype: ", shown, ": checkpoint ", value.scalar_type(),
                                 ", expected a floating-point tensor"));
      continue;
    }
    target.copy_(value.to(target.scalar_type()));
  }
  for (const auto& [key, target] : targets) {
    if (!seen.count(key)) {
      problems.push_back(str_cat("  missing: ", display_prefix, key, " ", shape_str(target.sizes())));
    }
  }
  return problems;
}

void throw_if_problems(const std::vector<std::string>& problems, const std::string& what,
                       const std::string& summary) {
  if (problems.empty()) return;
  std::ostringstream os;
  os << what << ": " << summary << ":";
  // A wrong architecture mismatches every layer: the first lines say which keys and shapes.
  constexpr size_t kShown = 30;
  for (size_t i = 0; i < problems.size() && i < kShown; ++i) os << "\n" << problems[i];
  if (problems.size() > kShown) os << "\n  ... and " << problems.size() - kShown << " more (" << problems.size() << " in all)";
  os << "\n---> HINT: check that the config belongs to this checkpoint";
  throw Error(os.str());
}

}  // namespace aim
