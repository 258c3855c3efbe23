#pragma once
// The namespace of the CUDA adapters: aim::ops::cuda, or aim::ops::cuda_emu when the adapters
// are built for the kernel emulator (tests/emu; see ops/cuda_backend.h).
#ifdef AIM_OPS_EMULATED
#define AIM_OPS_CUDA_NS cuda_emu
#else
#define AIM_OPS_CUDA_NS cuda
#endif
