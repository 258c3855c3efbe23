#include "aim/train/vq_losses.h"

#include <c10/core/impl/LocalDispatchKeySet.h>

#include <cmath>

#include "aim/core/error.h"

namespace aim::train {

namespace F = torch::nn::functional;

QuantizeOutput quantize_for_training(const VectorQuantizerImpl& quantizer, const torch::Tensor& z_in,
                                     double entropy_temperature) {
  AIM_CHECK(z_in.dim() == 4, "quantize_for_training: z must be [B, D, h, w], got ", z_in.sizes());
  const int64_t b = z_in.size(0), d = z_in.size(1), h = z_in.size(2), w = z_in.size(3);
  // Autocast off for the distances and losses (fp32), as for the quantiser at inference.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  auto z = z_in.to(torch::kFloat).permute({0, 2, 3, 1});  // [B, h, w, D]
  if (quantizer.l2_norm) z = F::normalize(z, F::NormalizeFuncOptions().dim(-1));
  const auto flat = z.reshape({-1, d});
  const auto e = quantizer.codebook().to(torch::kFloat);  // [K, D], normalised when l2_norm
  const auto dist = flat.pow(2).sum(1, true) + e.pow(2).sum(1) - 2 * torch::matmul(flat, e.t());
  QuantizeOutput out;
  const auto idx = std::get<1>(dist.detach().min(1));
  out.codes = idx.view({b, h * w});
  const auto z_q = e.index_select(0, idx).view({b, h, w, d});
  out.codebook_loss = (z_q - z.detach()).pow(2).mean();
  out.commit_loss = (z_q.detach() - z).pow(2).mean();
  if (entropy_temperature > 0) {
    const auto logits = -dist / entropy_temperature;
    const auto probs = torch::softmax(logits, -1);
    const auto log_probs = torch::log_softmax(logits, -1);
    const auto sample_entropy = -(probs * log_probs).sum(-1).mean();
    const auto avg = probs.mean(0);
    const auto avg_entropy = -(avg * torch::log(avg + 1e-5)).sum();
    out.entropy_loss = sample_entropy - avg_entropy;
  }
  out.z_flat = flat.detach();
  out.z_q = (z + (z_q - z).detach()).permute({0, 3, 1, 2}).contiguous();
  return out;
}

double record_codebook_usage(VectorQuantizerImpl& quantizer, const torch::Tensor& codes) {
  torch::NoGradGuard no_grad;
  auto& used = quantizer.codebook_used;
  const int64_t cap = used.size(0);
  auto flat = codes.reshape({-1}).to(used.device(), used.scalar_type());
  if (flat.size(0) >= cap) {
    used.copy_(flat.slice(0, flat.size(0) - cap));
  } else {
    const int64_t n = flat.size(0);
    used.slice(0, 0, cap - n).copy_(used.slice(0, n, cap).clone());
    used.slice(0, cap - n, cap).copy_(flat);
  }
  const int64_t k = quantizer.embedding->weight.size(0);
  auto seen = torch::zeros({k}, torch::TensorOptions().dtype(torch::kBool).device(used.device()));
  seen.index_fill_(0, used.to(torch::kLong).clamp(0, k - 1), true);
  return seen.to(torch::kFloat).mean().item<double>();
}

int64_t restart_unused_codes(VectorQuantizerImpl& quantizer, const torch::Tensor& counts,
                             const torch::Tensor& z_flat) {
  torch::NoGradGuard no_grad;
  const auto dead = (counts == 0).nonzero().reshape({-1});
  const int64_t n = dead.size(0);
  if (n == 0 || z_flat.size(0) == 0) return 0;
  auto& w = quantizer.embedding->weight;
  const auto pick = torch::randint(z_flat.size(0), {n}, torch::TensorOptions().dtype(torch::kLong).device(z_flat.device()));
  w.index_copy_(0, dead.to(w.device()), z_flat.index_select(0, pick).to(w.device(), w.scalar_type()));
  return n;
}

PatchDiscriminatorImpl::PatchDiscriminatorImpl(int64_t channels, int64_t layers) {
  AIM_CHECK(channels >= 1 && layers >= 1, "PatchGAN: channels and layers must be >= 1");
  namespace nn = torch::nn;
  auto conv = [](int64_t in, int64_t out, int64_t stride, bool bias) {
    return nn::Conv2d(nn::Conv2dOptions(in, out, 4).stride(stride).padding(1).bias(bias));
  };
  auto lrelu = [] { return nn::LeakyReLU(nn::LeakyReLUOptions().negative_slope(0.2)); };
  nn::Sequential seq;
  seq->push_back(conv(3, channels, 2, true));
  seq->push_back(lrelu());
  int64_t mult = 1;
  for (int64_t n = 1; n < layers; ++n) {
    const int64_t prev = mult;
    mult = std::min<int64_t>(int64_t{1} << n, 8);
    seq->push_back(conv(channels * prev, channels * mult, 2, false));
    seq->push_back(nn::BatchNorm2d(channels * mult));
    seq->push_back(lrelu());
  }
  const int64_t prev = mult;
  mult = std::min<int64_t>(int64_t{1} << layers, 8);
  seq->push_back(conv(channels * prev, channels * mult, 1, false));
  seq->push_back(nn::BatchNorm2d(channels * mult));
  seq->push_back(lrelu());
  seq->push_back(conv(channels * mult, 1, 1, true));
  main = register_module("main", seq);
  // DCGAN initialisation, as taming's weights_init: conv N(0, 0.02), norm scale N(1, 0.02).
  torch::NoGradGuard no_grad;
  for (auto& m : main->modules(/*include_self=*/false)) {
    if (auto* c = m->as<nn::Conv2d>()) {
      c->weight.normal_(0.0, 0.02);
      if (c->bias.defined()) c->bias.zero_();
    } else if (auto* bn = m->as<nn::BatchNorm2d>()) {
      bn->weight.normal_(1.0, 0.02);
      bn->bias.zero_();
    }
  }
}

torch::Tensor PatchDiscriminatorImpl::forward(const torch::Tensor& images) { return main->forward(images); }

torch::Tensor hinge_discriminator_loss(const torch::Tensor& logits_real, const torch::Tensor& logits_fake) {
  return 0.5 * (torch::relu(1.0 - logits_real.to(torch::kFloat)).mean() +
                torch::relu(1.0 + logits_fake.to(torch::kFloat)).mean());
}

torch::Tensor hinge_generator_loss(const torch::Tensor& logits_fake) {
  return -logits_fake.to(torch::kFloat).mean();
}

torch::Tensor ssim(const torch::Tensor& a_in, const torch::Tensor& b_in, int64_t window) {
  AIM_CHECK(a_in.dim() == 4 && a_in.sizes() == b_in.sizes(), "ssim: expected two images [B, C, H, W] of one shape, got ",
            a_in.sizes(), " and ", b_in.sizes());
  AIM_CHECK(window >= 1 && window % 2 == 1 && a_in.size(2) >= window && a_in.size(3) >= window,
            "ssim: window of ", window, " (odd) must fit in the ", a_in.size(2), "x", a_in.size(3), " images");
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto a = a_in.to(torch::kFloat), b = b_in.to(torch::kFloat);
  const int64_t c = a.size(1);
  constexpr double kSigma = 1.5, kC1 = 0.02 * 0.02, kC2 = 0.06 * 0.06;
  auto g = torch::arange(window, a.options()) - static_cast<double>(window / 2);
  g = torch::exp(-g * g / (2 * kSigma * kSigma));
  g = g / g.sum();
  // Separable blur of the five moment maps (x, y, x^2, y^2, xy), one depthwise pass per axis.
  const int64_t maps = 5 * c;
  const auto gx = g.view({1, 1, 1, window}).expand({maps, 1, 1, window});
  const auto gy = g.view({1, 1, window, 1}).expand({maps, 1, window, 1});
  auto m = torch::cat({a, b, a * a, b * b, a * b}, 1);
  const std::vector<int64_t> one = {1, 1}, none = {0, 0};
  m = torch::conv2d(m, gx, torch::Tensor(), one, none, one, maps);
  m = torch::conv2d(m, gy, torch::Tensor(), one, none, one, maps);
  const auto mu = m.split(c, 1);
  const auto mu_a2 = mu[0] * mu[0], mu_b2 = mu[1] * mu[1], mu_ab = mu[0] * mu[1];
  const auto var_a = mu[2] - mu_a2, var_b = mu[3] - mu_b2, cov = mu[4] - mu_ab;
  const auto map = ((2 * mu_ab + kC1) * (2 * cov + kC2)) / ((mu_a2 + mu_b2 + kC1) * (var_a + var_b + kC2));
  return map.mean();
}

double psnr(const torch::Tensor& reference, const torch::Tensor& reconstruction) {
  torch::NoGradGuard no_grad;
  const auto a = reference.detach().to(torch::kFloat).clamp(-1, 1);
  const auto b = reconstruction.detach().to(torch::kFloat).clamp(-1, 1);
  const double mse = (a - b).pow(2).mean().item<double>();
  return mse > 0 ? 10.0 * std::log10(4.0 / mse) : 99.0;
}

}  // namespace aim::train
