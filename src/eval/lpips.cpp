// LPIPS v0.1 with VGG16 and its strict weight loader (see include/aim/eval/lpips.h).
#include "aim/eval/lpips.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "aim/core/error.h"
#include "aim/core/fileio.h"
#include "aim/core/safetensors.h"
#include "aim/model/state_dict.h"

namespace aim::eval {

namespace F = torch::nn::functional;

namespace {

/// VGG16's `features`: index of each 3x3 conv, its output width, and the slice (1..5) it belongs
/// to. Indices 1, 3, ... are ReLUs, 4, 9, 16, 23 the max pools that open slices 2..5.
struct VggConv {
  int index;
  int64_t out;
  int slice;
};
constexpr std::array<VggConv, 13> kVgg = {{{0, 64, 1},
                                           {2, 64, 1},
                                           {5, 128, 2},
                                           {7, 128, 2},
                                           {10, 256, 3},
                                           {12, 256, 3},
                                           {14, 256, 3},
                                           {17, 512, 4},
                                           {19, 512, 4},
                                           {21, 512, 4},
                                           {24, 512, 5},
                                           {26, 512, 5},
                                           {28, 512, 5}}};

constexpr std::array<double, 3> kShift = {-0.030, -0.088, -0.188};
constexpr std::array<double, 3> kScale = {0.458, 0.448, 0.450};
constexpr double kNormEps = 1e-10;

/// f / (||f||_c + eps), as the reference: pow, sum over channels, sqrt, divide.
torch::Tensor normalize_channels(const torch::Tensor& f) {
  const auto norm = torch::sqrt(torch::sum(f.pow(2), /*dim=*/{1}, /*keepdim=*/true));
  return f / (norm + kNormEps);
}

}  // namespace

LpipsImpl::LpipsImpl() {
  auto net = register_module("net", std::make_shared<torch::nn::Module>("VGG16"));
  std::array<std::shared_ptr<torch::nn::Module>, 5> slices;
  for (int s = 0; s < 5; ++s)
    slices[static_cast<size_t>(s)] =
        net->register_module("slice" + std::to_string(s + 1), std::make_shared<torch::nn::Module>("Slice"));
  int64_t in = 3;
  for (const auto& c : kVgg) {
    auto conv = torch::nn::Conv2d(torch::nn::Conv2dOptions(in, c.out, 3).padding(1));
    slices[static_cast<size_t>(c.slice - 1)]->register_module(std::to_string(c.index), conv);
    convs.push_back(conv);
    in = c.out;
  }
  for (size_t k = 0; k < kChannels.size(); ++k) {
    auto lin = register_module("lin" + std::to_string(k), std::make_shared<torch::nn::Module>("NetLinLayer"));
    auto model = lin->register_module("model", std::make_shared<torch::nn::Module>("Sequential"));
    // Index 0 of the reference's Sequential is the (parameter-free) dropout.
    auto conv = torch::nn::Conv2d(torch::nn::Conv2dOptions(kChannels[k], 1, 1).bias(false));
    model->register_module("1", conv);
    lins.push_back(conv);
  }
  for (auto& p : parameters()) p.set_requires_grad(false);
}

torch::Tensor LpipsImpl::scale_input(const torch::Tensor& x) {
  // float32 constants, as the reference's buffers: a bf16 image is scaled in float32.
  auto& [shift, scale] = constants_[x.device().str()];
  if (!shift.defined()) {
    const auto opts = torch::TensorOptions().dtype(torch::kFloat);
    shift = torch::tensor({kShift[0], kShift[1], kShift[2]}, opts).view({1, 3, 1, 1}).to(x.device());
    scale = torch::tensor({kScale[0], kScale[1], kScale[2]}, opts).view({1, 3, 1, 1}).to(x.device());
  }
  return (x - shift) / scale;
}

std::vector<torch::Tensor> LpipsImpl::features(const torch::Tensor& scaled) {
  std::vector<torch::Tensor> taps;
  auto h = scaled;
  int slice = 1;
  for (size_t i = 0; i < kVgg.size(); ++i) {
    if (kVgg[i].slice != slice) {
      taps.push_back(h);
      h = F::max_pool2d(h, F::MaxPool2dFuncOptions(2).stride(2));
      slice = kVgg[i].slice;
    }
    h = torch::relu(convs[i]->forward(h));
  }
  taps.push_back(h);
  return taps;
}

torch::Tensor LpipsImpl::forward(const torch::Tensor& x, const torch::Tensor& y, bool dropout) {
  AIM_CHECK(x.dim() == 4 && x.size(1) == 3 && x.sizes() == y.sizes(),
            "LPIPS: expected two image batches [N, 3, H, W] of one shape, got ", x.sizes(), " and ", y.sizes());
  AIM_CHECK(x.size(2) >= kMinSize && x.size(3) >= kMinSize, "LPIPS: images of ", x.size(2), "x", x.size(3),
            " are too small for VGG16's five stages (at least ", kMinSize, "x", kMinSize, ")");
  const int64_t n = x.size(0);
  // Two passes, as the reference: batched, the image's half would join the reconstruction's
  // backward (a fourth VGG16 pass) and keep its activations.
  const auto taps_x = features(scale_input(x)), taps_y = features(scale_input(y));
  torch::Tensor total;
  for (size_t k = 0; k < taps_x.size(); ++k) {
    auto diff = (normalize_channels(taps_x[k]) - normalize_channels(taps_y[k])).pow(2);
    if (dropout) diff = torch::dropout(diff, kDropout, /*train=*/true);
    auto r = lins[k]->forward(diff).mean({2, 3}).reshape({n});
    if (r.scalar_type() != torch::kDouble) r = r.to(torch::kFloat);  // sums in float32 at least
    total = total.defined() ? total + r : r;
  }
  return total;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> lpips_keys() {
  static const auto keys = [] {
    std::vector<std::pair<std::string, std::vector<int64_t>>> out;
    Lpips model;
    for (const auto& p : model->named_parameters()) out.emplace_back(p.key(), p.value().sizes().vec());
    return out;
  }();
  return keys;
}

void load_lpips_state_dict(Lpips& model, const std::map<std::string, torch::Tensor>& sd, const std::string& what) {
  const auto problems = copy_state_dict(*model, sd, "");
  if (problems.empty()) return;
  std::ostringstream os;
  os << what << ": not LPIPS v0.1 VGG16 weights (" << lpips_keys().size() << " tensors: net.slice1.0.weight .. "
     << "lin4.model.1.weight): " << problems.size() << " problem" << (problems.size() == 1 ? "" : "s") << ":";
  constexpr size_t kShown = 24;
  for (size_t i = 0; i < problems.size() && i < kShown; ++i) os << "\n" << problems[i];
  if (problems.size() > kShown) os << "\n  ... and " << problems.size() - kShown << " more";
  os << "\n---> HINT: convert torchvision's vgg16-397923af.pth and LPIPS's vgg.pth with "
        "tools/convert_checkpoint.py --kind lpips (README, \"Training a tokenizer\")";
  throw Error(os.str());
}

void load_lpips(Lpips& model, const std::string& path) {
  AIM_CHECK(std::filesystem::exists(path), "no such file: ", path,
            "\n---> HINT: convert torchvision's vgg16-397923af.pth and LPIPS's vgg.pth with "
            "tools/convert_checkpoint.py --kind lpips (README, \"Training a tokenizer\")");
  // What LlamaGen and the lpips package load directly: PyTorch pickles, not weights aim reads.
  if (is_torch_pickle(path))
    throw Error(str_cat(path, ": a PyTorch pickle (torch.save), not safetensors: aim reads LPIPS weights converted "
                              "once\n---> HINT: tools/convert_checkpoint.py vgg16-397923af.pth --lpips-lin vgg.pth "
                              "--out lpips_vgg.safetensors (README, \"Training a tokenizer\")"));
  SafetensorsFile file(path);
  std::map<std::string, torch::Tensor> sd;
  for (const auto& entry : file.entries()) sd[entry.name] = file.get(entry.name);
  load_lpips_state_dict(model, sd, path);
}

double lpips_vgg_flops(int64_t height, int64_t width) {
  double flops = 0.0;
  int64_t in = 3, h = height, w = width;
  int slice = 1;
  for (const auto& c : kVgg) {
    if (c.slice != slice) {
      h /= 2;
      w /= 2;
      slice = c.slice;
    }
    flops += 2.0 * static_cast<double>(in * c.out * 9) * static_cast<double>(h * w);
    in = c.out;
  }
  for (size_t k = 0; k < LpipsImpl::kChannels.size(); ++k) {
    const int64_t s = static_cast<int64_t>(1) << k;
    flops += 2.0 * static_cast<double>(LpipsImpl::kChannels[k]) * static_cast<double>((height / s) * (width / s));
  }
  return flops;
}

}  // namespace aim::eval
