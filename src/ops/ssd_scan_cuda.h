#pragma once
// CUDA adapters of the SSD ops: fill the kernels' params structs from tensors.
#include <torch/types.h>

namespace aim::ops::cuda {

/// Whether the kernel handles these tensors (dtypes, layouts); otherwise the reference runs.
bool ssd_state_update_supported(const torch::Tensor& state, const torch::Tensor& x,
                                const torch::Tensor& Bm, const torch::Tensor& D);

torch::Tensor ssd_state_update(torch::Tensor& state, const torch::Tensor& x,
                               const torch::Tensor& dt, const torch::Tensor& A,
                               const torch::Tensor& Bm, const torch::Tensor& Cm,
                               const torch::Tensor& D, const torch::Tensor& dt_bias,
                               bool dt_softplus);

}  // namespace aim::ops::cuda
