// Host entries of the SSD scan kernels: the tiling, and the instantiation for the element type.
#include "ssd_scan_bwd_kernel.cuh"
#include "ssd_scan_fwd_kernel.cuh"

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

namespace aim::kernels {

extern template cudaError_t ssd_fwd_launch<float, true, false>(const SsdScanParams&, cudaStream_t);
extern template cudaError_t ssd_fwd_launch<__nv_bfloat16, true, false>(const SsdScanParams&,
                                                                       cudaStream_t);
extern template cudaError_t ssd_bwd_launch<float>(const SsdScanParams&, cudaStream_t);
extern template cudaError_t ssd_bwd_launch<__nv_bfloat16>(const SsdScanParams&, cudaStream_t);
extern template int ssd_bwd_active_clusters<float>(int, int, int);
extern template int ssd_bwd_active_clusters<__nv_bfloat16>(int, int, int);

namespace {

// Whether the device can run a cluster of `heads` second-pass blocks, asked once per device and
// shape (the tiling is computed for every call of the op). The key holds the device's SM count
// and shared memory limit too (the emulator's tests change them).
bool cluster_fits(int device, int sms, int smem_limit, ElemType dtype, int heads, int p_tile,
                  int dstate_pad) {
  static std::mutex mutex;
  static std::map<std::tuple<int, int, int, int, int, int, int>, bool> known;
  const auto key = std::make_tuple(device, sms, smem_limit, static_cast<int>(dtype), heads, p_tile,
                                   dstate_pad);
  std::lock_guard<std::mutex> lock(mutex);
  auto it = known.find(key);
  if (it != known.end()) return it->second;
  const int active = dtype == ElemType::kBFloat16
                         ? ssd_bwd_active_clusters<__nv_bfloat16>(heads, p_tile, dstate_pad)
                         : ssd_bwd_active_clusters<float>(heads, p_tile, dstate_pad);
  return known[key] = active > 0;
}

}  // namespace

SsdScanTiling ssd_scan_tiling(int len, int headdim, int dstate, int heads_per_group, ElemType dtype,
                              int max_cluster_heads) {
  SsdScanTiling t;
  if (len <= 0 || headdim <= 0 || dstate <= 0 || dstate > kSsdMaxDstate || heads_per_group <= 0) {
    return t;
  }
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
    const ssd::BwdSmem bwd(pt, t.dstate_pad, tin, false);
    if (fwd.bytes > static_cast<size_t>(limit) || bwd.bytes > static_cast<size_t>(limit)) continue;
    t.p_tile = pt;
    t.p_tiles = (headdim + pt - 1) / pt;
    t.fwd_smem = fwd.bytes;
    t.bwd_smem = bwd.bytes;
    t.ok = true;
    break;
  }
  if (!t.ok) return t;
  // The backward's cluster over heads: the largest power of two allowed that divides the heads
  // of a group, when its two extra tiles fit beside the tiling's shared memory.
  const ssd::BwdSmem clustered(t.p_tile, t.dstate_pad, tin, true);
  int sms = 0;
  if (clustered.bytes > static_cast<size_t>(limit) ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return t;
  }
  int kc = 1;
  while (kc * 2 <= std::min(max_cluster_heads, kSsdMaxClusterHeads)) kc *= 2;
  for (; kc >= 2; kc /= 2) {
    if (heads_per_group % kc != 0 || !cluster_fits(device, sms, limit, dtype, kc, t.p_tile, t.dstate_pad)) continue;
    t.cluster_heads = kc;
    t.bwd_smem = clustered.bytes;
    break;
  }
  return t;
}

cudaError_t ssd_scan_fwd_cuda(const SsdScanParams& params, ElemType dtype, cudaStream_t stream) {
  return dtype == ElemType::kBFloat16 ? ssd_fwd_launch<__nv_bfloat16, true, false>(params, stream)
                                      : ssd_fwd_launch<float, true, false>(params, stream);
}

int ssd_scan_bwd_slice_pairs(const SsdScanParams& params, ElemType dtype) {
  if (dtype != ElemType::kBFloat16 || !ssd::regs_bwd_ok(params)) return 1;
  int device = 0, limit = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return 1;
  }
  return ssd::regs_bwd_pairs_fit(params, limit) ? 2 : 1;
}

cudaError_t ssd_scan_bwd_cuda(const SsdScanParams& params, ElemType dtype, cudaStream_t stream) {
  return dtype == ElemType::kBFloat16 ? ssd_bwd_launch<__nv_bfloat16>(params, stream)
                                      : ssd_bwd_launch<float>(params, stream);
}

}  // namespace aim::kernels
