# Copies kernels/ into the emulator's build folder with the two rewrites the host compiler needs
# (see include/emu_runtime.h):
#   k<<<grid, block, smem, stream>>>(args)   ->  k ^ ::emu::Cfg(grid, block, smem, stream)(args)
#   extern __shared__ [__align__(n)] T name[];  ->  T* name = ::emu::dynamic_shared<T>();
#   __shared__ T name[dims];    ->  using emu_shared_t_name = T[dims]; static char emu_shared_tag_name;
#                                   emu_shared_t_name& name = *static_cast<emu_shared_t_name*>(
#                                       ::emu::static_shared(&emu_shared_tag_name, sizeof .., alignof ..));
#                                   (one object per block, poisoned when the first thread reaches it)
#   namespace aim::kernels  ->  namespace aim::kernels_emu   (the CUDA configuration links the
#                                                            real kernels into the same binary)
# .cu files become .cu.cpp. Usage: cmake -DIN=<kernels dir> -DOUT=<folder> -P translate.cmake
file(GLOB _files ${IN}/*.cu ${IN}/*.cuh ${IN}/*.h)
file(MAKE_DIRECTORY ${OUT})
foreach(_f ${_files})
  get_filename_component(_name ${_f} NAME)
  file(READ ${_f} _text)
  string(REPLACE "<<<" " ^ ::emu::Cfg(" _text "${_text}")
  string(REPLACE ">>>" ")" _text "${_text}")
  string(REGEX REPLACE
    "extern __shared__ (__align__\\([0-9]+\\) )?([A-Za-z_][A-Za-z0-9_ ]*[A-Za-z0-9_]) ([A-Za-z_][A-Za-z0-9_]*)\\[\\];"
    "\\2* \\3 = ::emu::dynamic_shared<\\2>();" _text "${_text}")
  string(REGEX REPLACE
    "__shared__ ([A-Za-z_][A-Za-z0-9_:<>]*) ([A-Za-z_][A-Za-z0-9_]*)((\\[[^];]*\\])*);"
    "using emu_shared_t_\\2 = \\1\\3; static char emu_shared_tag_\\2; emu_shared_t_\\2& \\2 = *static_cast<emu_shared_t_\\2*>(::emu::static_shared(&emu_shared_tag_\\2, sizeof(emu_shared_t_\\2), alignof(emu_shared_t_\\2)));"
    _text "${_text}")
  if(_text MATCHES "__shared__")
    message(FATAL_ERROR "translate.cmake: ${_f} declares shared memory in a form the emulator's rewrite does not know (one declarator per __shared__)")
  endif()
  string(REPLACE "aim::kernels" "aim::kernels_emu" _text "${_text}")
  if(_name MATCHES "\\.cu$")
    set(_name "${_name}.cpp")
  endif()
  set(_header "// Generated from kernels/ by tests/emu/translate.cmake for the CPU emulator. Do not edit.\n")
  file(WRITE ${OUT}/${_name} "${_header}${_text}")
endforeach()
