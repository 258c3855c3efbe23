// Fills kernels/ssd_state_update.h from LibTorch tensors and launches on the current stream.
#include "ops/ssd_scan_cuda.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/torch.h>

#include "ssd_state_update.h"

namespace aim::ops::cuda {

namespace {
bool is_kernel_dtype(const torch::Tensor& t) {
  return t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kBFloat16;
}
bool last_dim_contiguous(const torch::Tensor& t) { return t.stride(-1) == 1; }
torch::Tensor as_float_param(const torch::Tensor& t) {
  return t.defined() ? t.to(torch::kFloat).contiguous() : t;
}
}  // namespace

bool ssd_state_update_supported(const torch::Tensor& state, const torch::Tensor& x,
                                const torch::Tensor& Bm, const torch::Tensor& D) {
  return state.is_cuda() && state.is_contiguous() && is_kernel_dtype(x) &&
         last_dim_contiguous(x) && last_dim_contiguous(Bm) && Bm.scalar_type() == x.scalar_type();
}

torch::Tensor ssd_state_update(torch::Tensor& state, const torch::Tensor& x,
                               const torch::Tensor& dt, const torch::Tensor& A,
                               const torch::Tensor& Bm, const torch::Tensor& Cm,
                               const torch::Tensor& D, const torch::Tensor& dt_bias,
                               bool dt_softplus) {
  c10::cuda::CUDAGuard guard(x.device());
  auto dt_c = dt.to(x.scalar_type()).contiguous();
  auto c_c = Cm.to(x.scalar_type());
  if (!last_dim_contiguous(c_c)) c_c = c_c.contiguous();
  auto a_f = as_float_param(A), d_f = as_float_param(D), bias_f = as_float_param(dt_bias);
  auto y = torch::empty(x.sizes(), x.options());

  kernels::SsdStateUpdateParams p;
  p.batch = static_cast<int>(x.size(0));
  p.nheads = static_cast<int>(x.size(1));
  p.headdim = static_cast<int>(x.size(2));
  p.ngroups = static_cast<int>(Bm.size(1));
  p.dstate = static_cast<int>(Bm.size(2));
  p.state = state.data_ptr<float>();
  p.x = x.data_ptr();
  p.dt = dt_c.data_ptr();
  p.Bm = Bm.data_ptr();
  p.Cm = c_c.data_ptr();
  p.A = a_f.data_ptr<float>();
  p.D = d_f.defined() ? d_f.data_ptr<float>() : nullptr;
  p.dt_bias = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  p.y = y.data_ptr();
  p.x_batch_stride = x.stride(0);
  p.x_head_stride = x.stride(1);
  p.dt_batch_stride = dt_c.stride(0);
  p.b_batch_stride = Bm.stride(0);
  p.b_group_stride = Bm.stride(1);
  p.c_batch_stride = c_c.stride(0);
  p.c_group_stride = c_c.stride(1);
  p.y_batch_stride = y.stride(0);
  p.y_head_stride = y.stride(1);
  p.dt_softplus = dt_softplus;
  p.d_per_channel = d_f.defined() && d_f.dim() == 2;
  // x's row stride must be 1 within a head: checked by ssd_state_update_supported.
  const auto elem = x.scalar_type() == torch::kBFloat16 ? kernels::ElemType::kBFloat16
                                                        : kernels::ElemType::kFloat32;
  const cudaError_t err =
      kernels::ssd_state_update_cuda(p, elem, at::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "ssd_state_update kernel launch failed: ",
              cudaGetErrorString(err));
  return y;
}

}  // namespace aim::ops::cuda
