#pragma once
// CPU kernel of the SSD scan: the recurrence of aim/ops/ssd_scan.h run token by token per
// (sequence, head), with a hand-written backward. On the CPU this does O(L * P * N) work per head
// in L1-resident loops, where the chunked reference builds [T, T] decay matrices, cumsums and
// einsums through autograd; the reference stays the oracle (tests/ops/ssd_scan_test.cpp).
#include <torch/types.h>

#include "aim/ops/ssd_scan.h"

namespace aim::ops::cpu {

/// Whether the kernel handles these tensors: all on the CPU, floating point, x/dt/B/C fp32 or
/// bf16, L >= 1. Otherwise the reference runs.
bool ssd_scan_supported(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                        const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D,
                        const torch::Tensor& dt_bias, const torch::Tensor& initial_state);

/// ops::ssd_scan on the CPU kernel, differentiable in x, dt, A, B, C, D, dt_bias and
/// initial_state. Computes in fp32; y in x's dtype, the final state in fp32.
SsdScanResult ssd_scan(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                       const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D,
                       const torch::Tensor& dt_bias, bool dt_softplus,
                       const torch::Tensor& initial_state, bool return_final_state);

}  // namespace aim::ops::cpu
