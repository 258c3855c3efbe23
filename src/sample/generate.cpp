#include "aim/sample/generate.h"

#include "aim/core/error.h"
#include "aim/ops/sampling.h"

namespace aim {

void SamplingOptions::validate() const {
  AIM_CHECK(cfg >= 0 && std::isfinite(cfg), "--cfg: expected a number >= 0, found ", cfg);
  AIM_CHECK(temperature > 0 && std::isfinite(temperature), "--temperature: expected a number > 0, found ", temperature);
  AIM_CHECK(top_k >= 0, "--top-k: expected an integer >= 0 (0: no limit), found ", top_k);
  AIM_CHECK(top_p > 0 && top_p <= 1, "--top-p: expected a number in (0, 1], found ", top_p);
}

double sample_uniform(uint64_t seed, int64_t sample, int64_t step) {
  return ops::keyed_uniform(seed, sample, step);
}

torch::Tensor generate_tokens(AimModel& model, const torch::Tensor& labels,
                              const std::vector<int64_t>& sample_ids, const SamplingOptions& o) {
  o.validate();
  const int64_t batch = labels.size(0), len = model->config.num_tokens;
  AIM_CHECK(static_cast<int64_t>(sample_ids.size()) == batch, "generate: ", sample_ids.size(),
            " sample ids for ", batch, " labels");
  torch::NoGradGuard no_grad;
  const bool guided = o.cfg != 1.0;
  const auto device = model->backbone->norm_f->weight.device();
  auto lab = labels.to(device, torch::kLong);
  auto state = model->start(guided ? torch::cat({lab, torch::full_like(lab, model->null_class())}) : lab);
  auto tokens = torch::empty({batch, len}, torch::dtype(torch::kLong).device(device));
  const auto ids = torch::tensor(sample_ids, torch::kLong).to(device);
  torch::Tensor prev;
  for (int64_t t = 0; t < len; ++t) {
    torch::Tensor in;
    if (t > 0) in = guided ? torch::cat({prev, prev}) : prev;  // both halves get the same token
    // Guidance in fp32, filters and the draw keyed by (seed, sample, t): one kernel on CUDA.
    auto logits = model->step(state, in);
    prev = ops::sample_tokens_keyed(logits.narrow(0, 0, batch),
                                    guided ? logits.narrow(0, batch, batch) : torch::Tensor(),
                                    o.cfg, o.temperature, o.top_k, o.top_p, o.seed, ids, t);
    tokens.select(1, t).copy_(prev);
  }
  return tokens.to(torch::kCPU);
}

torch::Tensor decode_tokens(VqModel& vq, const torch::Tensor& tokens, int64_t batch) {
  AIM_CHECK(tokens.dim() == 2, "decode: tokens must be [N, L], got ", tokens.sizes());
  AIM_CHECK(tokens.numel() == 0 || (tokens.min().item<int64_t>() >= 0 &&
                                    tokens.max().item<int64_t>() < vq->config.codebook_size),
            "decode: tokens outside the codebook [0, ", vq->config.codebook_size, ")");
  const int64_t side = VqModel::Impl::side_of(tokens.size(1));
  const auto device = vq->post_quant_conv->weight.device();
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> out;
  for (int64_t s = 0; s < tokens.size(0); s += batch) {
    const int64_t n = std::min(batch, tokens.size(0) - s);
    out.push_back(vq->decode(tokens.narrow(0, s, n).to(device), side, side).to(torch::kCPU, torch::kFloat));
  }
  return out.empty() ? torch::empty({0, 3, side * vq->config.downsample(), side * vq->config.downsample()})
                     : torch::cat(out);
}

}  // namespace aim
