#include "aim/model/vq.h"

#include <cmath>

#include "aim/core/error.h"
#include "aim/model/state_dict.h"

namespace aim {

namespace {

constexpr double kGroupNormEps = 1e-6;
constexpr int64_t kUsageBuffer = 65536;

torch::nn::GroupNorm group_norm(int64_t groups, int64_t channels) {
  return torch::nn::GroupNorm(torch::nn::GroupNormOptions(groups, channels).eps(kGroupNormEps));
}

torch::nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1,
                       int64_t padding = -1) {
  if (padding < 0) padding = kernel / 2;
  return torch::nn::Conv2d(
      torch::nn::Conv2dOptions(in, out, kernel).stride(stride).padding(padding));
}

/// Holds a single `conv`, named as the official Downsample / Upsample modules.
class ResampleImpl : public torch::nn::Module {
 public:
  explicit ResampleImpl(torch::nn::Conv2d c) { conv = register_module("conv", c); }
  torch::nn::Conv2d conv{nullptr};
};

torch::Tensor run_mid(torch::nn::ModuleList& mid, torch::Tensor h) {
  h = mid[0]->as<VqResnetBlock>()->forward(h);
  h = mid[1]->as<VqAttnBlock>()->forward(h);
  return mid[2]->as<VqResnetBlock>()->forward(h);
}

}  // namespace

VqResnetBlockImpl::VqResnetBlockImpl(int64_t in_channels, int64_t out_channels, double dropout_, int64_t groups)
    : dropout(dropout_) {
  norm1 = register_module("norm1", group_norm(groups, in_channels));
  conv1 = register_module("conv1", conv(in_channels, out_channels, 3));
  norm2 = register_module("norm2", group_norm(groups, out_channels));
  conv2 = register_module("conv2", conv(out_channels, out_channels, 3));
  if (in_channels != out_channels) {
    nin_shortcut = register_module("nin_shortcut", conv(in_channels, out_channels, 1));
  }
}

torch::Tensor VqResnetBlockImpl::forward(const torch::Tensor& x) {
  auto h = conv1->forward(torch::silu(norm1->forward(x)));
  h = torch::silu(norm2->forward(h));
  if (dropout > 0) h = torch::dropout(h, dropout, is_training());
  h = conv2->forward(h);
  return (nin_shortcut ? nin_shortcut->forward(x) : x) + h;
}

VqAttnBlockImpl::VqAttnBlockImpl(int64_t channels, int64_t groups) {
  norm = register_module("norm", group_norm(groups, channels));
  q = register_module("q", conv(channels, channels, 1));
  k = register_module("k", conv(channels, channels, 1));
  v = register_module("v", conv(channels, channels, 1));
  proj_out = register_module("proj_out", conv(channels, channels, 1));
}

torch::Tensor VqAttnBlockImpl::forward(const torch::Tensor& x) {
  auto h = norm->forward(x);
  const int64_t b = x.size(0), c = x.size(1), hh = x.size(2), ww = x.size(3);
  auto qs = q->forward(h).reshape({b, c, hh * ww}).transpose(1, 2);   // [B, HW, C]
  auto ks = k->forward(h).reshape({b, c, hh * ww});                   // [B, C, HW]
  auto vs = v->forward(h).reshape({b, c, hh * ww});                   // [B, C, HW]
  auto w = torch::softmax(torch::bmm(qs, ks) * (1.0 / std::sqrt(static_cast<double>(c))), 2);
  auto out = torch::bmm(vs, w.transpose(1, 2)).reshape({b, c, hh, ww});
  return x + proj_out->forward(out);
}

torch::Tensor VqLevelImpl::forward(torch::Tensor h) {
  for (size_t i = 0; i < res->size(); ++i) {
    h = res[i]->as<VqResnetBlock>()->forward(h);
    if (attn->size() > 0) h = attn[i]->as<VqAttnBlock>()->forward(h);
  }
  if (resample_conv) {
    if (down) {
      // Asymmetric zero padding (right and bottom) before the stride-2 3x3 convolution.
      h = resample_conv->forward(torch::constant_pad_nd(h, {0, 1, 0, 1}));
    } else {
      h = resample_conv->forward(torch::upsample_nearest2d(h, {h.size(2) * 2, h.size(3) * 2}));
    }
  }
  return h;
}

VqEncoderImpl::VqEncoderImpl(const VqConfig& c) {
  const int64_t levels = static_cast<int64_t>(c.ch_mult.size());
  conv_in = register_module("conv_in", conv(3, c.ch, 3));
  conv_blocks = register_module("conv_blocks", torch::nn::ModuleList());
  int64_t block_in = c.ch;
  for (int64_t i = 0; i < levels; ++i) {
    auto level = VqLevel();
    level->res = level->register_module("res", torch::nn::ModuleList());
    level->attn = level->register_module("attn", torch::nn::ModuleList());
    const int64_t block_out = c.ch * c.ch_mult[i];
    for (int64_t j = 0; j < c.num_res_blocks; ++j) {
      level->res->push_back(VqResnetBlock(block_in, block_out, c.dropout, c.norm_groups));
      block_in = block_out;
      if (i == levels - 1) level->attn->push_back(VqAttnBlock(block_in, c.norm_groups));
    }
    if (i != levels - 1) {
      level->resample_conv = conv(block_in, block_in, 3, 2, 0);
      level->resample =
          level->register_module("downsample", std::make_shared<ResampleImpl>(level->resample_conv));
      level->down = true;
    }
    conv_blocks->push_back(level);
  }
  mid = register_module("mid", torch::nn::ModuleList());
  mid->push_back(VqResnetBlock(block_in, block_in, c.dropout, c.norm_groups));
  mid->push_back(VqAttnBlock(block_in, c.norm_groups));
  mid->push_back(VqResnetBlock(block_in, block_in, c.dropout, c.norm_groups));
  norm_out = register_module("norm_out", group_norm(c.norm_groups, block_in));
  conv_out = register_module("conv_out", conv(block_in, c.z_channels, 3));
}

torch::Tensor VqEncoderImpl::forward(const torch::Tensor& x) {
  auto h = conv_in->forward(x);
  for (size_t i = 0; i < conv_blocks->size(); ++i) h = conv_blocks[i]->as<VqLevel>()->forward(h);
  h = run_mid(mid, h);
  return conv_out->forward(torch::silu(norm_out->forward(h)));
}

VqDecoderImpl::VqDecoderImpl(const VqConfig& c) {
  const int64_t levels = static_cast<int64_t>(c.ch_mult.size());
  int64_t block_in = c.ch * c.ch_mult[levels - 1];
  conv_in = register_module("conv_in", conv(c.z_channels, block_in, 3));
  mid = register_module("mid", torch::nn::ModuleList());
  mid->push_back(VqResnetBlock(block_in, block_in, c.dropout, c.norm_groups));
  mid->push_back(VqAttnBlock(block_in, c.norm_groups));
  mid->push_back(VqResnetBlock(block_in, block_in, c.dropout, c.norm_groups));
  conv_blocks = register_module("conv_blocks", torch::nn::ModuleList());
  for (int64_t i = levels - 1; i >= 0; --i) {
    auto level = VqLevel();
    level->res = level->register_module("res", torch::nn::ModuleList());
    level->attn = level->register_module("attn", torch::nn::ModuleList());
    const int64_t block_out = c.ch * c.ch_mult[i];
    for (int64_t j = 0; j < c.num_res_blocks + 1; ++j) {
      level->res->push_back(VqResnetBlock(block_in, block_out, c.dropout, c.norm_groups));
      block_in = block_out;
      if (i == levels - 1) level->attn->push_back(VqAttnBlock(block_in, c.norm_groups));
    }
    if (i != 0) {
      level->resample_conv = conv(block_in, block_in, 3);
      level->resample =
          level->register_module("upsample", std::make_shared<ResampleImpl>(level->resample_conv));
      level->down = false;
    }
    conv_blocks->push_back(level);
  }
  norm_out = register_module("norm_out", group_norm(c.norm_groups, block_in));
  conv_out = register_module("conv_out", conv(block_in, 3, 3));
}

torch::Tensor VqDecoderImpl::forward(const torch::Tensor& z) {
  auto h = run_mid(mid, conv_in->forward(z));
  for (size_t i = 0; i < conv_blocks->size(); ++i) h = conv_blocks[i]->as<VqLevel>()->forward(h);
  return conv_out->forward(torch::silu(norm_out->forward(h)));
}

VectorQuantizerImpl::VectorQuantizerImpl(int64_t codebook_size, int64_t embed_dim, bool l2)
    : l2_norm(l2) {
  embedding = register_module("embedding", torch::nn::Embedding(codebook_size, embed_dim));
  {
    torch::NoGradGuard no_grad;
    embedding->weight.uniform_(-1.0 / codebook_size, 1.0 / codebook_size);
    if (l2_norm) {
      embedding->weight.copy_(torch::nn::functional::normalize(
          embedding->weight, torch::nn::functional::NormalizeFuncOptions().dim(-1)));
    }
  }
  codebook_used = register_buffer("codebook_used", torch::zeros({kUsageBuffer}));
}

torch::Tensor VectorQuantizerImpl::codebook() const {
  const auto& w = embedding->weight;
  return l2_norm ? torch::nn::functional::normalize(
                       w, torch::nn::functional::NormalizeFuncOptions().dim(-1))
                 : w;
}

torch::Tensor VectorQuantizerImpl::nearest(const torch::Tensor& z) const {
  const int64_t b = z.size(0), d = z.size(1);
  auto flat = z.permute({0, 2, 3, 1}).reshape({-1, d}).to(torch::kFloat);   // [B h w, D]
  auto e = codebook().to(torch::kFloat);                                     // [K, D]
  if (l2_norm) {
    flat = torch::nn::functional::normalize(flat, torch::nn::functional::NormalizeFuncOptions().dim(-1));
  }
  // ||z||^2 + ||e||^2 - 2 z.e, the same expression as the official quantiser.
  auto dist = flat.pow(2).sum(1, true) + e.pow(2).sum(1) - 2 * torch::matmul(flat, e.t());
  return dist.argmin(1).view({b, -1});
}

torch::Tensor VectorQuantizerImpl::lookup(const torch::Tensor& codes, int64_t h, int64_t w) const {
  const int64_t b = codes.size(0);
  auto e = codebook();
  return e.index_select(0, codes.reshape({-1})).view({b, h, w, e.size(1)}).permute({0, 3, 1, 2}).contiguous();
}

VqModelImpl::VqModelImpl(const VqConfig& config_) : config(config_) {
  config.validate();
  encoder = register_module("encoder", VqEncoder(config));
  decoder = register_module("decoder", VqDecoder(config));
  quantize = register_module(
      "quantize", VectorQuantizer(config.codebook_size, config.codebook_embed_dim, config.codebook_l2_norm));
  quant_conv = register_module("quant_conv", conv(config.z_channels, config.codebook_embed_dim, 1));
  post_quant_conv =
      register_module("post_quant_conv", conv(config.codebook_embed_dim, config.z_channels, 1));
}

torch::Tensor VqModelImpl::encode_latent(const torch::Tensor& images) {
  TORCH_CHECK(images.dim() == 4 && images.size(1) == 3, "VqModel: images must be [B, 3, H, W], got ",
              images.sizes());
  const int64_t f = config.downsample();
  TORCH_CHECK(images.size(2) % f == 0 && images.size(3) % f == 0, "VqModel: image size ",
              images.size(2), "x", images.size(3), " is not a multiple of the downsampling factor ", f);
  return quant_conv->forward(encoder->forward(images));
}

torch::Tensor VqModelImpl::encode(const torch::Tensor& images) {
  return quantize->nearest(encode_latent(images));
}

torch::Tensor VqModelImpl::quantized(const torch::Tensor& codes, int64_t h, int64_t w) {
  TORCH_CHECK(codes.dim() == 2 && codes.size(1) == h * w, "VqModel: codes must be [B, ", h * w,
              "], got ", codes.sizes());
  return quantize->lookup(codes, h, w);
}

torch::Tensor VqModelImpl::decode(const torch::Tensor& codes, int64_t h, int64_t w) {
  return decoder->forward(post_quant_conv->forward(quantized(codes, h, w)));
}

torch::Tensor VqModelImpl::reconstruct(const torch::Tensor& images) {
  const int64_t f = config.downsample();
  return decode(encode(images), images.size(2) / f, images.size(3) / f);
}

int64_t VqModelImpl::side_of(int64_t tokens) {
  const auto side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(tokens))));
  if (side * side != tokens) throw Error(str_cat("VQ: ", tokens, " tokens do not form a square grid"));
  return side;
}

void load_vq_state_dict(VqModel& model, const std::map<std::string, torch::Tensor>& sd,
                        const std::string& what, const std::string& prefix) {
  std::map<std::string, torch::Tensor> incoming;
  for (const auto& [key, value] : sd) {
    if (prefix.empty()) {
      incoming[key] = value;
    } else if (key.rfind(prefix, 0) == 0) {
      incoming[key.substr(prefix.size())] = value;
    }
  }
  throw_if_problems(copy_state_dict(*model, incoming, prefix), what,
                    str_cat("the tokenizer weights do not match the tokenizer configuration (ch ",
                            model->config.ch, ", ", model->config.ch_mult.size(), " levels, z_channels ",
                            model->config.z_channels, ", codebook ", model->config.codebook_size, " x ",
                            model->config.codebook_embed_dim, ")"));
}

std::vector<std::pair<std::string, torch::Tensor>> vq_state_dict(const VqModel& model,
                                                                  const std::string& prefix) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : model->named_parameters(true)) out.emplace_back(prefix + item.key(), item.value().detach());
  for (const auto& item : model->named_buffers(true)) out.emplace_back(prefix + item.key(), item.value().detach());
  return out;
}

void check_tokenizer_image_size(const std::string& flag, int64_t size, const VqConfig& config) {
  const int64_t f = config.downsample();
  AIM_CHECK(size >= f && size <= 4096 && size % f == 0, flag, ": expected a multiple of the tokenizer's ",
            "downsampling factor ", f, " from ", f, " to 4096 px, found ", size);
}

}  // namespace aim
