// The FID Inception-v3 network and its strict weight loader (see include/aim/eval/inception.h).
#include "aim/eval/inception.h"

#include <set>
#include <sstream>

#include "aim/core/error.h"
#include "aim/core/safetensors.h"
#include "aim/model/state_dict.h"

namespace aim::eval {

namespace F = torch::nn::functional;
using torch::nn::Conv2dOptions;

namespace {

constexpr double kBnEps = 0.001;
const char* const kNumBatchesTracked = "num_batches_tracked";

/// The pool branch of FIDInceptionA/C/E_1: 3x3 average, stride 1, the padding not counted.
torch::Tensor avg_pool_3x3_no_pad_count(const torch::Tensor& x) {
  return F::avg_pool2d(x, F::AvgPool2dFuncOptions(3).stride(1).padding(1).count_include_pad(false));
}

/// Stage and reduction pools: 3x3, stride 2, no padding.
torch::Tensor max_pool_3x3_s2(const torch::Tensor& x) {
  return F::max_pool2d(x, F::MaxPool2dFuncOptions(3).stride(2));
}

/// A k_h x k_w conv with its own padding per side (the factorised 1x7 / 7x1 / 1x3 / 3x1 convs).
Conv2dOptions asym(int64_t in, int64_t out, torch::ExpandingArray<2> kernel,
                   torch::ExpandingArray<2> padding) {
  return Conv2dOptions(in, out, kernel).padding(padding);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_num_batches_tracked(const std::string& key) {
  return key == kNumBatchesTracked || ends_with(key, std::string(".") + kNumBatchesTracked);
}

}  // namespace

// ------------------------------------------------------------------------------- blocks

BasicConv2dImpl::BasicConv2dImpl(torch::nn::Conv2dOptions options) {
  const int64_t out_channels = options.out_channels();
  conv = register_module("conv", torch::nn::Conv2d(options.bias(false)));
  bn = register_module("bn", torch::nn::BatchNorm2d(
                                 torch::nn::BatchNorm2dOptions(out_channels).eps(kBnEps)));
}

torch::Tensor BasicConv2dImpl::forward(const torch::Tensor& x) {
  auto y = conv->forward(x);
  // training = false: the running statistics, whatever the module's mode.
  y = torch::batch_norm(y, bn->weight, bn->bias, bn->running_mean, bn->running_var,
                        /*training=*/false, /*momentum=*/0.0, kBnEps, /*cudnn_enabled=*/true);
  return torch::relu_(y);
}

FidInceptionAImpl::FidInceptionAImpl(int64_t in, int64_t pool_features) {
  branch1x1 = register_module("branch1x1", BasicConv2d(Conv2dOptions(in, 64, 1)));
  branch5x5_1 = register_module("branch5x5_1", BasicConv2d(Conv2dOptions(in, 48, 1)));
  branch5x5_2 = register_module("branch5x5_2", BasicConv2d(Conv2dOptions(48, 64, 5).padding(2)));
  branch3x3dbl_1 = register_module("branch3x3dbl_1", BasicConv2d(Conv2dOptions(in, 64, 1)));
  branch3x3dbl_2 =
      register_module("branch3x3dbl_2", BasicConv2d(Conv2dOptions(64, 96, 3).padding(1)));
  branch3x3dbl_3 =
      register_module("branch3x3dbl_3", BasicConv2d(Conv2dOptions(96, 96, 3).padding(1)));
  branch_pool = register_module("branch_pool", BasicConv2d(Conv2dOptions(in, pool_features, 1)));
}

torch::Tensor FidInceptionAImpl::forward(const torch::Tensor& x) {
  auto b1 = branch1x1(x);
  auto b5 = branch5x5_2(branch5x5_1(x));
  auto b3 = branch3x3dbl_3(branch3x3dbl_2(branch3x3dbl_1(x)));
  auto bp = branch_pool(avg_pool_3x3_no_pad_count(x));
  return torch::cat({b1, b5, b3, bp}, 1);
}

InceptionBImpl::InceptionBImpl(int64_t in) {
  branch3x3 = register_module("branch3x3", BasicConv2d(Conv2dOptions(in, 384, 3).stride(2)));
  branch3x3dbl_1 = register_module("branch3x3dbl_1", BasicConv2d(Conv2dOptions(in, 64, 1)));
  branch3x3dbl_2 =
      register_module("branch3x3dbl_2", BasicConv2d(Conv2dOptions(64, 96, 3).padding(1)));
  branch3x3dbl_3 =
      register_module("branch3x3dbl_3", BasicConv2d(Conv2dOptions(96, 96, 3).stride(2)));
}

torch::Tensor InceptionBImpl::forward(const torch::Tensor& x) {
  auto b3 = branch3x3(x);
  auto bd = branch3x3dbl_3(branch3x3dbl_2(branch3x3dbl_1(x)));
  return torch::cat({b3, bd, max_pool_3x3_s2(x)}, 1);
}

FidInceptionCImpl::FidInceptionCImpl(int64_t in, int64_t c7) {
  const auto k1x7 = [](int64_t i, int64_t o) {
    return BasicConv2d(asym(i, o, {1, 7}, {0, 3}));
  };
  const auto k7x1 = [](int64_t i, int64_t o) {
    return BasicConv2d(asym(i, o, {7, 1}, {3, 0}));
  };
  branch1x1 = register_module("branch1x1", BasicConv2d(Conv2dOptions(in, 192, 1)));
  branch7x7_1 = register_module("branch7x7_1", BasicConv2d(Conv2dOptions(in, c7, 1)));
  branch7x7_2 = register_module("branch7x7_2", k1x7(c7, c7));
  branch7x7_3 = register_module("branch7x7_3", k7x1(c7, 192));
  branch7x7dbl_1 = register_module("branch7x7dbl_1", BasicConv2d(Conv2dOptions(in, c7, 1)));
  branch7x7dbl_2 = register_module("branch7x7dbl_2", k7x1(c7, c7));
  branch7x7dbl_3 = register_module("branch7x7dbl_3", k1x7(c7, c7));
  branch7x7dbl_4 = register_module("branch7x7dbl_4", k7x1(c7, c7));
  branch7x7dbl_5 = register_module("branch7x7dbl_5", k1x7(c7, 192));
  branch_pool = register_module("branch_pool", BasicConv2d(Conv2dOptions(in, 192, 1)));
}

torch::Tensor FidInceptionCImpl::forward(const torch::Tensor& x) {
  auto b1 = branch1x1(x);
  auto b7 = branch7x7_3(branch7x7_2(branch7x7_1(x)));
  auto bd = branch7x7dbl_1(x);
  bd = branch7x7dbl_5(branch7x7dbl_4(branch7x7dbl_3(branch7x7dbl_2(bd))));
  auto bp = branch_pool(avg_pool_3x3_no_pad_count(x));
  return torch::cat({b1, b7, bd, bp}, 1);
}

InceptionDImpl::InceptionDImpl(int64_t in) {
  branch3x3_1 = register_module("branch3x3_1", BasicConv2d(Conv2dOptions(in, 192, 1)));
  branch3x3_2 = register_module("branch3x3_2", BasicConv2d(Conv2dOptions(192, 320, 3).stride(2)));
  branch7x7x3_1 = register_module("branch7x7x3_1", BasicConv2d(Conv2dOptions(in, 192, 1)));
  branch7x7x3_2 = register_module(
      "branch7x7x3_2", BasicConv2d(asym(192, 192, {1, 7}, {0, 3})));
  branch7x7x3_3 = register_module(
      "branch7x7x3_3", BasicConv2d(asym(192, 192, {7, 1}, {3, 0})));
  branch7x7x3_4 =
      register_module("branch7x7x3_4", BasicConv2d(Conv2dOptions(192, 192, 3).stride(2)));
}

torch::Tensor InceptionDImpl::forward(const torch::Tensor& x) {
  auto b3 = branch3x3_2(branch3x3_1(x));
  auto b7 = branch7x7x3_4(branch7x7x3_3(branch7x7x3_2(branch7x7x3_1(x))));
  return torch::cat({b3, b7, max_pool_3x3_s2(x)}, 1);
}

FidInceptionEImpl::FidInceptionEImpl(int64_t in, bool max_pool_branch) : max_pool(max_pool_branch) {
  const auto k1x3 = [](int64_t i, int64_t o) {
    return BasicConv2d(asym(i, o, {1, 3}, {0, 1}));
  };
  const auto k3x1 = [](int64_t i, int64_t o) {
    return BasicConv2d(asym(i, o, {3, 1}, {1, 0}));
  };
  branch1x1 = register_module("branch1x1", BasicConv2d(Conv2dOptions(in, 320, 1)));
  branch3x3_1 = register_module("branch3x3_1", BasicConv2d(Conv2dOptions(in, 384, 1)));
  branch3x3_2a = register_module("branch3x3_2a", k1x3(384, 384));
  branch3x3_2b = register_module("branch3x3_2b", k3x1(384, 384));
  branch3x3dbl_1 = register_module("branch3x3dbl_1", BasicConv2d(Conv2dOptions(in, 448, 1)));
  branch3x3dbl_2 =
      register_module("branch3x3dbl_2", BasicConv2d(Conv2dOptions(448, 384, 3).padding(1)));
  branch3x3dbl_3a = register_module("branch3x3dbl_3a", k1x3(384, 384));
  branch3x3dbl_3b = register_module("branch3x3dbl_3b", k3x1(384, 384));
  branch_pool = register_module("branch_pool", BasicConv2d(Conv2dOptions(in, 192, 1)));
}

torch::Tensor FidInceptionEImpl::forward(const torch::Tensor& x) {
  auto b1 = branch1x1(x);
  auto b3 = branch3x3_1(x);
  b3 = torch::cat({branch3x3_2a(b3), branch3x3_2b(b3)}, 1);
  auto bd = branch3x3dbl_2(branch3x3dbl_1(x));
  bd = torch::cat({branch3x3dbl_3a(bd), branch3x3dbl_3b(bd)}, 1);
  auto pooled = max_pool
                    ? F::max_pool2d(x, F::MaxPool2dFuncOptions(3).stride(1).padding(1))
                    : avg_pool_3x3_no_pad_count(x);
  return torch::cat({b1, b3, bd, branch_pool(pooled)}, 1);
}

// ------------------------------------------------------------------------------- network

FidInceptionV3Impl::FidInceptionV3Impl() {
  Conv2d_1a_3x3 = register_module("Conv2d_1a_3x3", BasicConv2d(Conv2dOptions(3, 32, 3).stride(2)));
  Conv2d_2a_3x3 = register_module("Conv2d_2a_3x3", BasicConv2d(Conv2dOptions(32, 32, 3)));
  Conv2d_2b_3x3 = register_module("Conv2d_2b_3x3", BasicConv2d(Conv2dOptions(32, 64, 3).padding(1)));
  Conv2d_3b_1x1 = register_module("Conv2d_3b_1x1", BasicConv2d(Conv2dOptions(64, 80, 1)));
  Conv2d_4a_3x3 = register_module("Conv2d_4a_3x3", BasicConv2d(Conv2dOptions(80, 192, 3)));
  Mixed_5b = register_module("Mixed_5b", FidInceptionA(192, 32));
  Mixed_5c = register_module("Mixed_5c", FidInceptionA(256, 64));
  Mixed_5d = register_module("Mixed_5d", FidInceptionA(288, 64));
  Mixed_6a = register_module("Mixed_6a", InceptionB(288));
  Mixed_6b = register_module("Mixed_6b", FidInceptionC(768, 128));
  Mixed_6c = register_module("Mixed_6c", FidInceptionC(768, 160));
  Mixed_6d = register_module("Mixed_6d", FidInceptionC(768, 160));
  Mixed_6e = register_module("Mixed_6e", FidInceptionC(768, 192));
  Mixed_7a = register_module("Mixed_7a", InceptionD(768));
  Mixed_7b = register_module("Mixed_7b", FidInceptionE(1280, /*max_pool=*/false));
  Mixed_7c = register_module("Mixed_7c", FidInceptionE(2048, /*max_pool=*/true));
  fc = register_module("fc", torch::nn::Linear(2048, kNumClasses));
}

InceptionFeatures FidInceptionV3Impl::forward(const torch::Tensor& input, bool all_pools) {
  TORCH_CHECK(input.dim() == 4 && input.size(1) == 3 && input.size(2) == kInputSize &&
                  input.size(3) == kInputSize,
              "FidInceptionV3: expected input [N, 3, 299, 299], got ", input.sizes());
  const int64_t n = input.size(0);
  InceptionFeatures out;
  auto x = Conv2d_1a_3x3(input);  // [N, 32, 149, 149]
  x = Conv2d_2a_3x3(x);           // [N, 32, 147, 147]
  x = Conv2d_2b_3x3(x);           // [N, 64, 147, 147]
  x = max_pool_3x3_s2(x);         // [N, 64, 73, 73]
  if (all_pools) out.pool_64 = x.mean({2, 3});
  x = Conv2d_3b_1x1(x);    // [N, 80, 73, 73]
  x = Conv2d_4a_3x3(x);    // [N, 192, 71, 71]
  x = max_pool_3x3_s2(x);  // [N, 192, 35, 35]
  if (all_pools) out.pool_192 = x.mean({2, 3});
  x = Mixed_5d(Mixed_5c(Mixed_5b(x)));  // [N, 288, 35, 35]
  x = Mixed_6c(Mixed_6b(Mixed_6a(x)));  // [N, 768, 17, 17]
  x = Mixed_6d(x);
  // Mixed_6d's first 192 channels are its branch1x1 output (TF's mixed_6/conv:0); ADM keeps
  // channels 0..6 and flattens NHWC, i.e. in (h, w, c) order.
  out.spatial = x.slice(1, 0, kSpatialChannels).permute({0, 2, 3, 1}).reshape({n, -1});
  x = Mixed_6e(x);
  if (all_pools) out.pool_768 = x.mean({2, 3});
  x = Mixed_7c(Mixed_7b(Mixed_7a(x)));  // [N, 2048, 8, 8]
  out.pool3 = x.mean({2, 3});
  out.logits = torch::linear(out.pool3, fc->weight, fc->bias);
  out.logits_unbiased = torch::linear(out.pool3, fc->weight);
  return out;
}

// ------------------------------------------------------------------------------- weights

namespace {

/// Parameters and buffers by full name, module by module in registration order, without the
/// BatchNorm counters.
std::vector<std::pair<std::string, torch::Tensor>> weight_tensors(const torch::nn::Module& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& m : model.named_modules()) {
    const std::string prefix = m.key().empty() ? "" : m.key() + ".";
    for (const auto& p : m.value()->named_parameters(/*recurse=*/false))
      out.emplace_back(prefix + p.key(), p.value());
    for (const auto& b : m.value()->named_buffers(/*recurse=*/false))
      if (b.key() != kNumBatchesTracked) out.emplace_back(prefix + b.key(), b.value());
  }
  return out;
}

}  // namespace

std::vector<std::pair<std::string, std::vector<int64_t>>> fid_inception_keys() {
  static const auto keys = [] {
    std::vector<std::pair<std::string, std::vector<int64_t>>> out;
    FidInceptionV3 model;
    for (const auto& [name, t] : weight_tensors(*model)) out.emplace_back(name, t.sizes().vec());
    return out;
  }();
  return keys;
}

void load_fid_inception_state_dict(FidInceptionV3& model,
                                   const std::map<std::string, torch::Tensor>& sd,
                                   const std::string& what) {
  std::map<std::string, torch::Tensor> targets;
  for (const auto& [name, t] : weight_tensors(*model)) targets[name] = t;
  std::vector<std::string> problems;
  std::set<std::string> seen;
  for (const auto& [key, value] : sd) {
    if (is_num_batches_tracked(key)) continue;
    auto it = targets.find(key);
    if (it == targets.end()) {
      problems.push_back(str_cat("unexpected: ", key, " ", shape_str(value.sizes())));
      continue;
    }
    seen.insert(key);
    if (value.sizes() != it->second.sizes()) {
      problems.push_back(str_cat("shape mismatch: ", key, ": expected ",
                                 shape_str(it->second.sizes()), ", found ",
                                 shape_str(value.sizes())));
    } else if (!value.is_floating_point()) {
      problems.push_back(str_cat("wrong dtype: ", key, ": expected a floating-point tensor, found ",
                                 value.scalar_type()));
    }
  }
  for (const auto& [key, t] : targets)
    if (!seen.count(key)) problems.push_back(str_cat("missing: ", key, " ", shape_str(t.sizes())));
  if (!problems.empty()) {
    constexpr size_t kShown = 24;
    std::ostringstream os;
    os << what << ": not the FID Inception-v3 weights (pytorch-fid's fid_inception_v3 layout, "
       << targets.size() << " tensors): " << problems.size() << " problem"
       << (problems.size() == 1 ? "" : "s") << ":";
    for (size_t i = 0; i < problems.size() && i < kShown; ++i) os << "\n  " << problems[i];
    if (problems.size() > kShown) os << "\n  ... and " << problems.size() - kShown << " more";
    os << "\n---> HINT: convert pytorch-fid's pt_inception-2015-12-05-6726825d.pth with "
          "tools/convert_checkpoint.py --kind inception";
    throw Error(os.str());
  }
  torch::NoGradGuard no_grad;
  for (const auto& [key, target] : targets) target.copy_(sd.at(key).to(target.scalar_type()));
}

void load_fid_inception(FidInceptionV3& model, const std::string& path) {
  SafetensorsFile file(path);
  std::map<std::string, torch::Tensor> sd;
  for (const auto& entry : file.entries()) sd[entry.name] = file.get(entry.name);
  load_fid_inception_state_dict(model, sd, path);
}

}  // namespace aim::eval
