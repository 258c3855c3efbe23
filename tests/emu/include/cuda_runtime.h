#pragma once
// CPU emulation of the CUDA runtime subset kernels/ uses: see emu_runtime.h.
#include "emu_runtime.h"
