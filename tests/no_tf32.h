// Test helper: fp32 arithmetic on CUDA for the parity tests that compare against fp32 goldens.
#pragma once

#include <ATen/Context.h>

namespace aim::test {

/// TF32 off for cuBLAS and cuDNN while in scope, restored after: fp32 parity on CUDA. PyTorch
/// lets cuDNN's convolutions use TF32 by default, which puts a VQ decoder's fp32 output about
/// 4e-3 (relative) from an fp32 reference, far outside the parity tolerances.
class NoTf32 {
 public:
  NoTf32() : cublas_(at::globalContext().allowTF32CuBLAS()), cudnn_(at::globalContext().allowTF32CuDNN()) {
    at::globalContext().setAllowTF32CuBLAS(false);
    at::globalContext().setAllowTF32CuDNN(false);
  }
  ~NoTf32() {
    at::globalContext().setAllowTF32CuBLAS(cublas_);
    at::globalContext().setAllowTF32CuDNN(cudnn_);
  }
  NoTf32(const NoTf32&) = delete;
  NoTf32& operator=(const NoTf32&) = delete;

 private:
  bool cublas_, cudnn_;
};

}  // namespace aim::test
