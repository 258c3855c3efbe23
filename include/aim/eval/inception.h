#pragma once
// The FID Inception-v3 (pytorch-fid's fid_inception_v3(): torchvision's Inception3 with 1008
// classes and the FIDInceptionA/C/E_1/E_2 blocks), its two input pipelines, and a batched
// feature extractor. tests/fixtures/eval/README.md specifies all of it.
//
// Registered module names are the state-dict names of pytorch-fid's
// pt_inception-2015-12-05-6726825d.pth (`Conv2d_1a_3x3.conv.weight`,
// `Mixed_6d.branch1x1.bn.running_var`, `fc.weight`), so weights load with no mapping table;
// tools/convert_checkpoint.py --kind inception turns that .pth into safetensors.
//
// Features (what ADM's TF evaluator reads from its graph):
//   pool3           `pool_3:0`, Mixed_7c averaged over H, W                        [N, 2048]
//   spatial         `mixed_6/conv:0`[..., :7]: Mixed_6d.branch1x1 (post-ReLU), channels 0..6,
//                   flattened in (h, w, c) order, index (h * 17 + w) * 7 + c        [N, 2023]
//   logits          fc(pool3) with its bias                                         [N, 1008]
//   logits_unbiased pool3 @ fc.weight^T, what ADM's Inception Score softmaxes        [N, 1008]
//   pool_64/192/768 pytorch-fid's other `dims` (first and second max pool, Mixed_6e), averaged
//                   over H, W; computed only when asked for.
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace aim::eval {

/// Conv2d (no bias) -> BatchNorm2d (eps 0.001, always its running statistics) -> ReLU, as
/// `conv` and `bn`. The options' `bias` is ignored (always false).
class BasicConv2dImpl : public torch::nn::Module {
 public:
  explicit BasicConv2dImpl(torch::nn::Conv2dOptions options);
  /// [N, C_in, H, W] -> [N, C_out, H', W'].
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
};
TORCH_MODULE(BasicConv2d);

/// Mixed_5b/5c/5d (FIDInceptionA): 1x1, 5x5, double 3x3 and a pool branch whose 3x3 average
/// excludes the padding. [N, C, 35, 35] -> [N, 224 + pool_features, 35, 35].
class FidInceptionAImpl : public torch::nn::Module {
 public:
  FidInceptionAImpl(int64_t in_channels, int64_t pool_features);
  torch::Tensor forward(const torch::Tensor& x);
  BasicConv2d branch1x1{nullptr}, branch5x5_1{nullptr}, branch5x5_2{nullptr},
      branch3x3dbl_1{nullptr}, branch3x3dbl_2{nullptr}, branch3x3dbl_3{nullptr},
      branch_pool{nullptr};
};
TORCH_MODULE(FidInceptionA);

/// Mixed_6a (torchvision InceptionB, unchanged): stride-2 reduction.
/// [N, 288, 35, 35] -> [N, 768, 17, 17].
class InceptionBImpl : public torch::nn::Module {
 public:
  explicit InceptionBImpl(int64_t in_channels);
  torch::Tensor forward(const torch::Tensor& x);
  BasicConv2d branch3x3{nullptr}, branch3x3dbl_1{nullptr}, branch3x3dbl_2{nullptr},
      branch3x3dbl_3{nullptr};
};
TORCH_MODULE(InceptionB);

/// Mixed_6b..6e (FIDInceptionC): factorised 7x7 branches, pool branch as in FidInceptionA.
/// [N, 768, 17, 17] -> [N, 768, 17, 17]; channels 0..191 are branch1x1's output.
class FidInceptionCImpl : public torch::nn::Module {
 public:
  FidInceptionCImpl(int64_t in_channels, int64_t channels_7x7);
  torch::Tensor forward(const torch::Tensor& x);
  BasicConv2d branch1x1{nullptr}, branch7x7_1{nullptr}, branch7x7_2{nullptr},
      branch7x7_3{nullptr}, branch7x7dbl_1{nullptr}, branch7x7dbl_2{nullptr},
      branch7x7dbl_3{nullptr}, branch7x7dbl_4{nullptr}, branch7x7dbl_5{nullptr},
      branch_pool{nullptr};
};
TORCH_MODULE(FidInceptionC);

/// Mixed_7a (torchvision InceptionD, unchanged): stride-2 reduction.
/// [N, 768, 17, 17] -> [N, 1280, 8, 8].
class InceptionDImpl : public torch::nn::Module {
 public:
  explicit InceptionDImpl(int64_t in_channels);
  torch::Tensor forward(const torch::Tensor& x);
  BasicConv2d branch3x3_1{nullptr}, branch3x3_2{nullptr}, branch7x7x3_1{nullptr},
      branch7x7x3_2{nullptr}, branch7x7x3_3{nullptr}, branch7x7x3_4{nullptr};
};
TORCH_MODULE(InceptionD);

/// Mixed_7b (FIDInceptionE_1: 3x3 average pool without padding) and Mixed_7c (FIDInceptionE_2,
/// `max_pool` true: 3x3 max pool). [N, C, 8, 8] -> [N, 2048, 8, 8].
class FidInceptionEImpl : public torch::nn::Module {
 public:
  FidInceptionEImpl(int64_t in_channels, bool max_pool);
  torch::Tensor forward(const torch::Tensor& x);
  BasicConv2d branch1x1{nullptr}, branch3x3_1{nullptr}, branch3x3_2a{nullptr},
      branch3x3_2b{nullptr}, branch3x3dbl_1{nullptr}, branch3x3dbl_2{nullptr},
      branch3x3dbl_3a{nullptr}, branch3x3dbl_3b{nullptr}, branch_pool{nullptr};
  bool max_pool;
};
TORCH_MODULE(FidInceptionE);

/// What the network computes for a batch, in the input's dtype and on its device.
struct InceptionFeatures {
  torch::Tensor pool3;            ///< [N, 2048]
  torch::Tensor spatial;          ///< [N, 2023] (h, w, c) order
  torch::Tensor logits;           ///< [N, 1008] with fc.bias
  torch::Tensor logits_unbiased;  ///< [N, 1008] without fc.bias
  torch::Tensor pool_64;          ///< [N, 64]  only when all_pools
  torch::Tensor pool_192;         ///< [N, 192] only when all_pools
  torch::Tensor pool_768;         ///< [N, 768] only when all_pools
};

/// pytorch-fid's fid_inception_v3(), for inference only: BatchNorm always uses its running
/// statistics, whatever train()/eval() says. Load the weights with load_fid_inception().
class FidInceptionV3Impl : public torch::nn::Module {
 public:
  static constexpr int64_t kNumClasses = 1008;
  static constexpr int64_t kInputSize = 299;
  static constexpr int64_t kSpatialChannels = 7;  ///< ADM keeps mixed_6/conv channels 0..6

  FidInceptionV3Impl();
  /// x [N, 3, 299, 299] (normalised to about [-1, 1]) -> features. `all_pools` adds
  /// pool_64/192/768.
  InceptionFeatures forward(const torch::Tensor& x, bool all_pools = false);

  BasicConv2d Conv2d_1a_3x3{nullptr}, Conv2d_2a_3x3{nullptr}, Conv2d_2b_3x3{nullptr},
      Conv2d_3b_1x1{nullptr}, Conv2d_4a_3x3{nullptr};
  FidInceptionA Mixed_5b{nullptr}, Mixed_5c{nullptr}, Mixed_5d{nullptr};
  InceptionB Mixed_6a{nullptr};
  FidInceptionC Mixed_6b{nullptr}, Mixed_6c{nullptr}, Mixed_6d{nullptr}, Mixed_6e{nullptr};
  InceptionD Mixed_7a{nullptr};
  FidInceptionE Mixed_7b{nullptr}, Mixed_7c{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(FidInceptionV3);

/// Names and shapes of the 472 tensors a weights file holds (every parameter and BatchNorm
/// running statistic; no `num_batches_tracked`), in registration order.
std::vector<std::pair<std::string, std::vector<int64_t>>> fid_inception_keys();

/// Copies `sd` into `model` strictly: every key of fid_inception_keys() present with its shape
/// and a floating dtype (converted to the model's dtype); any other key is an error, except
/// BatchNorm `*.num_batches_tracked`, which is ignored. Throws one aim::Error naming `what`
/// (the file) and, per problem, the key, the expected and the found shape or dtype.
void load_fid_inception_state_dict(FidInceptionV3& model,
                                   const std::map<std::string, torch::Tensor>& sd,
                                   const std::string& what);

/// load_fid_inception_state_dict() from a safetensors file.
void load_fid_inception(FidInceptionV3& model, const std::string& path);

/// The two ways images become network input (README "Preprocessing").
enum class InceptionPreprocess {
  /// ADM's TF graph: float [0, 255], TF1 ResizeBilinear (no half-pixel centres), (x - 128) / 128.
  kAdmTf1,
  /// pytorch-fid: x / 255, bilinear interpolate (half-pixel centres), 2x - 1.
  kPytorchFid,
};

/// "adm_tf1" / "pytorch_fid" (the fixture README's names), and back (throws aim::Error naming
/// the value and the accepted ones).
std::string to_string(InceptionPreprocess mode);
InceptionPreprocess inception_preprocess_from_string(const std::string& name);

/// TF1 ResizeBilinear with align_corners=False, half_pixel_centers=False, in float32: for output
/// index o, s = o * (in / out), lo = floor(s), hi = min(lo + 1, in - 1), f = s - lo; each row
/// pair is interpolated along W first (a + (b - a) * fx), then along H.
/// x [N, C, H, W] float32 -> [N, C, out_h, out_w] float32, on x's device.
torch::Tensor resize_bilinear_tf1(const torch::Tensor& x, int64_t out_h, int64_t out_w);

/// images [N, H, W, 3] uint8 RGB (any H, W; any device) -> network input [N, 3, 299, 299]
/// float32, contiguous NCHW, on the images' device.
torch::Tensor preprocess_for_inception(const torch::Tensor& images_uint8,
                                       InceptionPreprocess mode = InceptionPreprocess::kAdmTf1);

/// Feature extraction for users: weights loaded once, images run in batches. On CUDA the
/// network runs channels-last with TF32 off for matmuls and cuDNN (restored after each call).
class InceptionExtractor {
 public:
  /// Called after each batch with images done and the total.
  using ProgressFn = std::function<void(int64_t done, int64_t total)>;

  /// `dtype`: the compute dtype: float32 (default) or float64 anywhere, bfloat16 on CUDA only.
  /// Throws aim::Error for a bad weights file, batch size or dtype.
  InceptionExtractor(const std::string& weights_path, torch::Device device,
                     int64_t batch_size = 64,
                     InceptionPreprocess mode = InceptionPreprocess::kAdmTf1,
                     torch::ScalarType dtype = torch::kFloat);

  /// images [N, H, W, 3] uint8 RGB (CPU or any device) -> features, float32 on the CPU,
  /// rows in image order. `all_pools` adds pool_64/192/768.
  InceptionFeatures extract(const torch::Tensor& images_uint8, const ProgressFn& progress = {},
                            bool all_pools = false);

  torch::Device device() const { return device_; }
  int64_t batch_size() const { return batch_size_; }
  InceptionPreprocess preprocess() const { return mode_; }
  torch::ScalarType dtype() const { return dtype_; }
  FidInceptionV3& model() { return model_; }

 private:
  FidInceptionV3 model_{nullptr};
  torch::Device device_;
  int64_t batch_size_;
  InceptionPreprocess mode_;
  torch::ScalarType dtype_;
};

}  // namespace aim::eval
