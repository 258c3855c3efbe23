# How external dependencies are found. Nothing is vendored: LibTorch comes from the PyTorch wheel
# in the project venv (scripts/setup.sh), everything else from Debian packages.
find_package(Threads REQUIRED)

# ---- LibTorch: ask the interpreter that has torch where its CMake config lives.
if(NOT DEFINED AIM_TORCH_PREFIX)
  if(NOT EXISTS "${AIM_PYTHON}")
    find_program(AIM_PYTHON_FALLBACK python3 REQUIRED)
    set(AIM_PYTHON "${AIM_PYTHON_FALLBACK}")
  endif()
  execute_process(
    COMMAND "${AIM_PYTHON}" -c "import torch; print(torch.utils.cmake_prefix_path); print(torch.version.cuda or '')"
    OUTPUT_VARIABLE _torch_out RESULT_VARIABLE _torch_rc OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT _torch_rc EQUAL 0)
    message(FATAL_ERROR "aim: '${AIM_PYTHON} -c import torch' failed.\n"
                        "---> HINT: run scripts/setup.sh, or pass -DAIM_PYTHON=<python with torch>")
  endif()
  string(REPLACE "\n" ";" _torch_out "${_torch_out}")
  list(GET _torch_out 0 _prefix)
  list(LENGTH _torch_out _n)
  set(_cuda "")
  if(_n GREATER 1)
    list(GET _torch_out 1 _cuda)
  endif()
  set(AIM_TORCH_PREFIX "${_prefix}" CACHE PATH "CMake prefix of LibTorch")
  set(AIM_TORCH_CUDA_VERSION "${_cuda}" CACHE STRING "CUDA version LibTorch was built for (empty: CPU only)")
endif()
list(APPEND CMAKE_PREFIX_PATH "${AIM_TORCH_PREFIX}")

# ---- CUDA: decide before find_package(Torch), which needs the toolkit for a CUDA LibTorch.
set(AIM_WITH_CUDA OFF)
set(AIM_BUILD_KERNELS OFF)
set(AIM_CUDA_NOTE "")
if(NOT AIM_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # One shared CUDA runtime in the process, the one LibTorch uses (same soname).
    set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
    set(CMAKE_CUDA_ARCHITECTURES OFF)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(AIM_BUILD_KERNELS ON)
    string(REGEX MATCH "^[0-9]+" _nvcc_major "${CMAKE_CUDA_COMPILER_VERSION}")
    string(REGEX MATCH "^[0-9]+" _torch_major "${AIM_TORCH_CUDA_VERSION}")
    if(_torch_major STREQUAL "")
      set(AIM_CUDA_NOTE "(LibTorch is CPU-only: kernels library built alone)")
    elseif(NOT _torch_major STREQUAL _nvcc_major)
      set(AIM_CUDA_NOTE "(LibTorch CUDA ${AIM_TORCH_CUDA_VERSION} and nvcc ${CMAKE_CUDA_COMPILER_VERSION} differ in major version: CPU configuration plus the kernels library alone)")
    else()
      set(AIM_WITH_CUDA ON)
    endif()
  elseif(AIM_CUDA STREQUAL "ON")
    message(FATAL_ERROR "aim: AIM_CUDA=ON but no CUDA compiler was found (looked for nvcc on PATH and /usr/local/cuda/bin/nvcc)")
  endif()
endif()
# Hopper with the arch-specific features, plus PTX that any newer GPU can JIT.
set(AIM_CUDA_GENCODE "SHELL:-gencode arch=compute_90a,code=sm_90a" "SHELL:-gencode arch=compute_90,code=compute_90")

if(NOT AIM_WITH_CUDA)
  # A CUDA LibTorch still links and runs on the CPU; keep its CMake from requiring the toolkit
  # flags that only the CUDA configuration needs.
  set(CAFFE2_USE_CUDNN OFF)
endif()
set(TORCH_CUDA_ARCH_LIST "9.0a")
find_package(Torch REQUIRED)
if(AIM_WITH_CUDA AND NOT TARGET torch_cuda)
  message(FATAL_ERROR "aim: LibTorch reports CUDA ${AIM_TORCH_CUDA_VERSION} but defines no torch_cuda target")
endif()
# LibTorch's CMake adds its flags to CMAKE_CXX_FLAGS; the target carries the ABI definition.

# ---- Debian packages
find_package(yaml-cpp REQUIRED)
find_package(spdlog REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)
find_path(STB_INCLUDE_DIR stb_image.h PATHS /usr/include/stb /usr/include REQUIRED)

# ---- Distributed training (src/train/dist*.cpp). c10d itself is inside LibTorch. MPI (optional)
# only bootstraps the c10d store under mpirun when MASTER_ADDR/MASTER_PORT are not set. Gloo's
# headers (libgloo-dev, optional) declare LibTorch's CPU process group: LibTorch contains Gloo but
# ships none of its headers. Only the headers are used; linking Debian's libgloo as well would
# put a second Gloo into the process.
find_package(MPI COMPONENTS CXX QUIET)
set(AIM_WITH_MPI ${MPI_CXX_FOUND})
find_path(AIM_GLOO_INCLUDE_DIR gloo/rendezvous/store.h
          DOC "Folder holding gloo/ (libgloo-dev), for LibTorch's ProcessGroupGloo.hpp")
if(AIM_GLOO_INCLUDE_DIR)
  set(AIM_WITH_GLOO ON)
else()
  set(AIM_WITH_GLOO OFF)
endif()
# nccl.h for ProcessGroupNCCL.hpp (CUDA configuration): the one of the nvidia-nccl wheel beside
# LibTorch (the library LibTorch loads), else the toolkit's. Without it the build has no NCCL
# backend.
set(AIM_WITH_NCCL OFF)
if(AIM_WITH_CUDA)
  get_filename_component(_site_packages "${AIM_TORCH_PREFIX}/../../.." ABSOLUTE)
  find_path(AIM_NCCL_INCLUDE_DIR nccl.h
            HINTS "${_site_packages}/nvidia/nccl/include" ${CUDAToolkit_INCLUDE_DIRS})
  if(AIM_NCCL_INCLUDE_DIR)
    set(AIM_WITH_NCCL ON)
  else()
    message(WARNING "aim: no nccl.h (looked in ${_site_packages}/nvidia/nccl/include and "
                    "${CUDAToolkit_INCLUDE_DIRS}): multi-GPU training will be unavailable")
  endif()
endif()
