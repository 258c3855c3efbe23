#pragma once
// Parameters of the softmax cross-entropy kernel of the fused lm_head + loss: for each row of a
// chunk of logits, the loss and, in place of the logits, the gradient of the mean loss.
// Raw pointers, sizes and strides (in elements); no LibTorch types.
#include <cstdint>

#include <cuda_runtime.h>

#include "ssd_state_update.h"  // ElemType

namespace aim::kernels {

struct SoftmaxXentParams {
  int rows = 0, vocab = 0;
  void* logits = nullptr;           ///< [rows, vocab], row stride `row_stride`; overwritten by
                                    ///< d(mean loss)/d(logits) = (softmax - onehot) * inv_count
  int64_t row_stride = 0;
  const int64_t* targets = nullptr; ///< [rows]; `ignore_index` rows get loss 0 and gradient 0
  int64_t ignore_index = -100;
  float* losses = nullptr;          ///< [rows] fp32: logsumexp - logit[target]
  const float* inv_count = nullptr; ///< device scalar: 1 / (number of rows not ignored)
};

/// One block per row. Launches on `stream`; returns the launch status.
cudaError_t softmax_xent_fwd_bwd_cuda(const SoftmaxXentParams& params, ElemType dtype,
                                      cudaStream_t stream);

}  // namespace aim::kernels
