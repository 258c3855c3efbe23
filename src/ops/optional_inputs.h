#pragma once
// Optional tensor inputs of the ops' autograd functions (D, dt_bias, initial state, ...) and
// their fp32 copies.
#include <torch/types.h>

#include <optional>

namespace aim::ops {

/// torch::autograd::Function::apply takes an undefined tensor for an input it must track (and
/// fails on it); an empty optional is an input that is not one. Edges, and so
/// ctx->needs_input_grad(i), count only the inputs given.
inline std::optional<torch::Tensor> optional_input(const torch::Tensor& t) {
  return t.defined() ? std::optional<torch::Tensor>(t) : std::nullopt;
}
inline torch::Tensor value_or_undefined(const std::optional<torch::Tensor>& t) {
  return t.has_value() ? *t : torch::Tensor();
}

/// A contiguous fp32 copy (or `t` itself when it already is one); undefined stays undefined.
inline torch::Tensor as_float(const torch::Tensor& t) {
  return t.defined() ? t.to(torch::kFloat).contiguous() : t;
}

/// The fp32 data of `t`, or null when `t` is undefined (the CPU kernels' optional pointers).
inline float* float_ptr(const torch::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

}  // namespace aim::ops
