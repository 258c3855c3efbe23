#include "aim/train/optim.h"

#include <cmath>
#include <set>

#include "aim/core/error.h"

namespace aim::train {

std::vector<NamedParam> unique_parameters(const torch::nn::Module& module) {
  std::vector<NamedParam> out;
  std::set<const void*> seen;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    const auto& t = item.value();
    if (!t.requires_grad()) continue;
    if (!seen.insert(t.unsafeGetTensorImpl()).second) continue;
    out.push_back({item.key(), t});
  }
  return out;
}

AdamW::AdamW(std::vector<NamedParam> params, const OptimConfig& config, bool fused)
    : params_(std::move(params)), config_(config), fused_(fused) {
  AIM_CHECK(config_.betas.size() == 2, "optim.betas: expected [beta1, beta2]");
  for (const auto& p : params_) {
    AIM_CHECK(p.tensor.scalar_type() == torch::kFloat,
              str_cat("AdamW: parameter ", p.name, " must be fp32 (master weights), found ",
                      c10::toString(p.tensor.scalar_type())));
    // Matrices decay (the official get_decay_parameter_names: dim >= 2), except the parameters
    // mamba_ssm marks _no_weight_decay: A_log (2-D [d_inner, d_state] in Mamba1) and D.
    const auto dot = p.name.rfind('.');
    const std::string leaf = dot == std::string::npos ? p.name : p.name.substr(dot + 1);
    decay_.push_back(p.tensor.dim() >= 2 && leaf != "A_log" && leaf != "D");
    exp_avg_.push_back(torch::zeros_like(p.tensor, torch::MemoryFormat::Contiguous));
    exp_avg_sq_.push_back(torch::zeros_like(p.tensor, torch::MemoryFormat::Contiguous));
    const std::string device = p.tensor.device().str();
    if (step_by_device_.count(device) == 0) step_by_device_.emplace(device, torch::zeros({}, p.tensor.options()));
  }
}

void AdamW::start_at(int64_t steps) {
  AIM_CHECK(step_ == 0 && steps >= 0, "AdamW::start_at(", steps, "): only before the first update, found ", step_,
            " done");
  step_ = steps;
}

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  ++step_;
  if (fused_) {
    step_fused(lr);
  } else {
    step_reference(lr);
  }
}

void AdamW::step_reference(double lr) {
  const double b1 = config_.betas[0], b2 = config_.betas[1];
  const double bias1 = 1.0 - std::pow(b1, static_cast<double>(step_));
  const double bias2 = 1.0 - std::pow(b2, static_cast<double>(step_));
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i].tensor;
    const auto& g = p.grad();
    if (!g.defined()) continue;
    if (decay_[i] && config_.weight_decay != 0.0) p.mul_(1.0 - lr * config_.weight_decay);
    exp_avg_[i].lerp_(g, 1.0 - b1);
    exp_avg_sq_[i].mul_(b2).addcmul_(g, g, 1.0 - b2);
    const auto denom = (exp_avg_sq_[i].sqrt() / std::sqrt(bias2)).add_(config_.eps);
    p.addcdiv_(exp_avg_[i], denom, -lr / bias1);
  }
}

void AdamW::step_fused(double lr) {
  // One multi-tensor call per (device, decay) group, as torch.optim.AdamW(fused=True) does.
  // The kernel reads each parameter's step count t and never writes it: every parameter of a
  // device shares one scalar, set once per step (one small launch, not one per parameter).
  for (auto& [device, t] : step_by_device_) t.fill_(static_cast<double>(step_));
  for (int decay = 0; decay < 2; ++decay) {
    std::map<std::string, std::vector<size_t>> by_device;
    for (size_t i = 0; i < params_.size(); ++i) {
      if (static_cast<int>(decay_[i]) != decay || !params_[i].tensor.grad().defined()) continue;
      by_device[params_[i].tensor.device().str()].push_back(i);
    }
    for (const auto& [device, idx] : by_device) {
      std::vector<torch::Tensor> p, g, m, v, s;
      for (size_t i : idx) {
        p.push_back(params_[i].tensor);
        g.push_back(params_[i].tensor.grad());
        m.push_back(exp_avg_[i]);
        v.push_back(exp_avg_sq_[i]);
        s.push_back(step_by_device_.at(device));
      }
      at::_fused_adamw_(p, g, m, v, /*max_exp_avg_sqs=*/{}, s, lr, config_.betas[0],
                        config_.betas[1], decay ? config_.weight_decay : 0.0, config_.eps,
                        /*amsgrad=*/false, /*maximize=*/false);
    }
  }
}

std::vector<std::pair<std::string, torch::Tensor>> AdamW::state_tensors() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.emplace_back("exp_avg/" + params_[i].name, exp_avg_[i]);
    out.emplace_back("exp_avg_sq/" + params_[i].name, exp_avg_sq_[i]);
  }
  return out;
}

std::map<std::string, std::string> AdamW::state_metadata() const {
  return {{"optimizer", "AdamW"},
          {"step", std::to_string(step_)},
          {"beta1", str_cat(config_.betas[0])},
          {"beta2", str_cat(config_.betas[1])},
          {"eps", str_cat(config_.eps)},
          {"weight_decay", str_cat(config_.weight_decay)}};
}

void AdamW::load_state(const std::map<std::string, torch::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata, const std::string& what) {
  auto it = metadata.find("step");
  AIM_CHECK(it != metadata.end(), str_cat(what, ": metadata key 'step' missing (not an aim optimizer state)"));
  int64_t step = 0;
  try {
    step = std::stoll(it->second);
  } catch (const std::exception&) {
    throw Error(str_cat(what, ": metadata 'step' must be an integer, found '", it->second, "'"));
  }
  std::vector<std::string> problems;
  auto fetch = [&](const std::string& key, const torch::Tensor& like) -> torch::Tensor {
    auto f = tensors.find(key);
    if (f == tensors.end()) {
      problems.push_back(str_cat("missing ", key));
      return {};
    }
    if (f->second.sizes() != like.sizes()) {
      problems.push_back(str_cat(key, ": expected shape ", like.sizes(), ", found ", f->second.sizes()));
      return {};
    }
    return f->second;
  };
  std::vector<torch::Tensor> m(params_.size()), v(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    m[i] = fetch("exp_avg/" + params_[i].name, exp_avg_[i]);
    v[i] = fetch("exp_avg_sq/" + params_[i].name, exp_avg_sq_[i]);
  }
  const size_t expected = 2 * params_.size();
  if (tensors.size() != expected)
    problems.push_back(str_cat("expected ", expected, " tensors, found ", tensors.size()));
  if (!problems.empty()) {
    std::string msg = str_cat(what, ": optimizer state does not match the model:");
    for (size_t i = 0; i < problems.size() && i < 20; ++i) msg += "\n  " + problems[i];
    if (problems.size() > 20) msg += str_cat("\n  ... and ", problems.size() - 20, " more");
    throw Error(msg);
  }
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    exp_avg_[i].copy_(m[i]);
    exp_avg_sq_[i].copy_(v[i]);
  }
  step_ = step;
}

double grad_norm(const std::vector<NamedParam>& params) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  for (const auto& p : params) {
    if (p.tensor.grad().defined()) grads.push_back(p.tensor.grad());
  }
  if (grads.empty()) return 0.0;
  // One multi-tensor launch for the per-parameter norms, one reduction, one host sync.
  const auto norms = torch::_foreach_norm(grads, 2);
  return torch::stack(norms).to(torch::kFloat).norm().item<double>();
}

void clip_gradients(const std::vector<NamedParam>& params, double norm, double max_norm) {
  if (max_norm <= 0.0) return;
  const double coef = max_norm / (norm + 1e-6);
  if (coef >= 1.0) return;
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  for (const auto& p : params) {
    if (p.tensor.grad().defined()) grads.push_back(p.tensor.grad());
  }
  torch::_foreach_mul_(grads, coef);
}

int64_t warmup_steps(const ScheduleConfig& schedule, int64_t total_steps) {
  if (schedule.warmup_steps > 0) return schedule.warmup_steps;
  return static_cast<int64_t>(std::ceil(schedule.warmup_ratio * static_cast<double>(total_steps)));
}

double lr_factor(const ScheduleConfig& schedule, int64_t step, int64_t total_steps) {
  const int64_t warm = warmup_steps(schedule, total_steps);
  if (step < warm) return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warm));
  if (schedule.type == "constant") return 1.0;
  const double span = static_cast<double>(std::max<int64_t>(1, total_steps - warm));
  const double progress = std::min(1.0, static_cast<double>(step - warm) / span);
  const double lo = schedule.min_lr_ratio;
  if (schedule.type == "linear")
    return lo + (1.0 - lo) * std::max(0.0, (span - static_cast<double>(step - warm)) / span);
  if (schedule.type == "cosine") return lo + (1.0 - lo) * 0.5 * (1.0 + std::cos(M_PI * progress));
  throw Error(str_cat("schedule.type: expected linear | constant | cosine, found '", schedule.type, "'"));
}

}  // namespace aim::train
