// Host entries of the SSD scan kernels: the tiling, and the instantiation for the element type.
#include "ssd_scan_bwd_kernel.cuh"
#include "ssd_scan_fwd_kernel.cuh"

namespace aim::kernels {

extern template cudaError_t ssd_fwd_launch<float, true, false>(const SsdScanParams&, cudaStream_t);
extern template cudaError_t ssd_fwd_launch<__nv_bfloat16, true, false>(const SsdScanParams&,
                                                                       cudaStream_t);
extern template cudaError_t ssd_bwd_launch<float>(const SsdScanParams&, cudaStream_t);
extern template cudaError_t ssd_bwd_launch<__nv_bfloat16>(const SsdScanParams&, cudaStream_t);

SsdScanTiling ssd_scan_tiling(int len, int headdim, int dstate, ElemType dtype) {
  SsdScanTiling t;
  if (len <= 0 || headdim <= 0 || dstate <= 0 || dstate > kSsdMaxDstate) return t;
  int device = 0, limit = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return t;
  }
  const int tin = dtype == ElemType::kBFloat16 ? 2 : 4;
  t.nchunks = (len + kSsdChunk - 1) / kSsdChunk;
  t.dstate_pad = (dstate + 15) / 16 * 16;
  // 64 state rows per block where shared memory allows (fewer partial slices), else 32.
  for (const int pt : {64, 32}) {
    if (pt == 64 && headdim <= 32) continue;
    const ssd::FwdSmem fwd(pt, t.dstate_pad, tin);
    const ssd::BwdSmem bwd(pt, t.dstate_pad, tin);
    if (fwd.bytes > static_cast<size_t>(limit) || bwd.bytes > static_cast<size_t>(limit)) continue;
    t.p_tile = pt;
    t.p_tiles = (headdim + pt - 1) / pt;
    t.fwd_smem = fwd.bytes;
    t.bwd_smem = bwd.bytes;
    t.ok = true;
    break;
  }
  return t;
}

cudaError_t ssd_scan_fwd_cuda(const SsdScanParams& params, ElemType dtype, cudaStream_t stream) {
  return dtype == ElemType::kBFloat16 ? ssd_fwd_launch<__nv_bfloat16, true, false>(params, stream)
                                      : ssd_fwd_launch<float, true, false>(params, stream);
}

cudaError_t ssd_scan_bwd_cuda(const SsdScanParams& params, ElemType dtype, cudaStream_t stream) {
  return dtype == ElemType::kBFloat16 ? ssd_bwd_launch<__nv_bfloat16>(params, stream)
                                      : ssd_bwd_launch<float>(params, stream);
}

}  // namespace aim::kernels
