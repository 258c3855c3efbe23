#pragma once
// Parameters of the Mamba2 SSD (chunked selective scan) kernels, forward and backward. Raw
// pointers, sizes and strides (in elements); no LibTorch types. The math, grid and precision are
// in ssd_scan_common.cuh.
#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "ssd_state_update.h"  // ElemType

namespace aim::kernels {

/// Positions per chunk: one warp holds a chunk's cumulative decay (warp scans), and the
/// intra-chunk matrices are 32 x 32.
constexpr int kSsdChunk = 32;
/// Largest d_state the kernels take (shared memory bounds it); larger ones run the reference.
constexpr int kSsdMaxDstate = 256;
/// Largest thread block cluster the backward forms over heads (the portable cluster size).
constexpr int kSsdMaxClusterHeads = 8;
/// The cluster the tiling chooses by default: none (1). A cluster of K heads cuts the dB / dC
/// partial traffic K-fold (AiM-L at micro-batch 64: 0.91 GB less per layer with 4), but on an H200
/// the backward ran slower with clusters (bench_ops, AiM-L micro-batch 64, fwd+bwd: 4.86 ms with
/// none, 5.10 with 2, 5.35 with 4 and with 8; docs/perf.md, 2026-12-04): the blocks of a cluster
/// (one per SM, by their shared memory) must be resident in one GPC together, and the sum over
/// the peers' shared memory waits at every chunk. AIM_SSD_BWD_CLUSTER sets the largest allowed.
constexpr int kSsdDefaultClusterHeads = 1;

/// Blocking of one problem: a block handles `p_tile` rows of a head's state ([p_tile, N]) for
/// one sequence, walking its chunks in order. Filled by ssd_scan_tiling.
struct SsdScanTiling {
  int nchunks = 0;       ///< ceil(L / kSsdChunk)
  int p_tile = 0;        ///< state rows per block: 32 or 64
  int p_tiles = 0;       ///< ceil(P / p_tile); the backward's partial sums have this many slices
  int dstate_pad = 0;    ///< N rounded up to 16 (tensor-core tiles; the padding is zeros)
  /// Consecutive heads of a group whose dB / dC the backward adds in one thread block cluster
  /// before writing the partial slices: 1, 2, 4 or 8.
  int cluster_heads = 1;
  size_t fwd_smem = 0, bwd_smem = 0;  ///< dynamic shared memory bytes
  bool ok = false;       ///< both kernels fit the current device's shared memory
};

/// Tiling for L, P, N, the heads per group and the input type on the current device. The
/// backward's cluster is the largest power of two up to `max_cluster_heads` that divides the
/// heads per group, whose extra shared memory fits, and of which the device can run one.
SsdScanTiling ssd_scan_tiling(int len, int headdim, int dstate, int heads_per_group, ElemType dtype,
                              int max_cluster_heads = kSsdDefaultClusterHeads);

/// x, dt, B, C, y, dy and dx share one element type (fp32 or bf16); every other tensor is fp32.
/// Every tensor's last dimension is contiguous; the other strides are free unless noted.
struct SsdScanParams {
  int batch = 0, len = 0, nheads = 0, headdim = 0, dstate = 0, ngroups = 0;
  int nchunks = 0, p_tile = 0, p_tiles = 0, dstate_pad = 0;  ///< from SsdScanTiling
  int cluster_heads = 1;                                      ///< from SsdScanTiling
  /// Slices (h, P tile) of a group whose dB / dC one backward block adds before writing the
  /// partial slices: 1, or 2 where ssd_scan_bwd_slice_pairs says the register backward can.
  int slice_pairs = 1;
  bool dt_softplus = true;
  bool d_per_channel = false;
  /// Load the tiles element by element even where 16-byte vectors would do (a benchmark's
  /// comparison; the launch otherwise uses vectors whenever the inputs allow them).
  bool element_loads = false;
  /// Run the shared-memory state kernels even where the register-state ones apply (bf16, padded
  /// N <= 128, 16-byte aligned tiles; the backward's without a cluster): a comparison.
  bool tiles_kernels = false;

  const void* x = nullptr;        ///< [B, L, H, P]
  int64_t x_batch_stride = 0, x_len_stride = 0, x_head_stride = 0;
  const void* dt = nullptr;       ///< [B, L, H]; its last stride is dt_head_stride
  int64_t dt_batch_stride = 0, dt_len_stride = 0, dt_head_stride = 0;
  const void* Bm = nullptr;       ///< [B, L, G, N]
  int64_t b_batch_stride = 0, b_len_stride = 0, b_group_stride = 0;
  const void* Cm = nullptr;       ///< [B, L, G, N]
  int64_t c_batch_stride = 0, c_len_stride = 0, c_group_stride = 0;
  const float* A = nullptr;       ///< [H], negative
  const float* D = nullptr;       ///< [H] or [H, P]; may be null
  const float* dt_bias = nullptr; ///< [H]; may be null
  const float* initial_state = nullptr;  ///< [B, H, P, N] contiguous; may be null (zeros)

  // Forward.
  void* y = nullptr;              ///< [B, L, H, P]
  int64_t y_batch_stride = 0, y_len_stride = 0, y_head_stride = 0;
  float* final_state = nullptr;   ///< [B, H, P, N] contiguous; may be null

  /// Written by the backward's first pass, read by its second: the state entering each chunk,
  /// in the input type, [B, H, nchunks, p_tiles * p_tile, dstate_pad] contiguous.
  void* chunk_states = nullptr;

  // Backward.
  const void* dy = nullptr;       ///< [B, L, H, P]
  int64_t dy_batch_stride = 0, dy_len_stride = 0, dy_head_stride = 0;
  const float* dfinal_state = nullptr;  ///< [B, H, P, N] contiguous; may be null (zeros)
  void* dx = nullptr;             ///< [B, L, H, P]
  int64_t dx_batch_stride = 0, dx_len_stride = 0, dx_head_stride = 0;
  /// Partial sums, one slice per P tile (and per cluster of heads for dB/dC), added up by the
  /// caller in a fixed order: every element is written, no atomics.
  float* ddt_partial = nullptr;   ///< [p_tiles, B, L, H]: d loss / d dt (after softplus')
  float* dA_partial = nullptr;    ///< [p_tiles, B, H]
  float* dD_partial = nullptr;    ///< [B, H, p_tiles * p_tile]: sum over positions of x * dy
  /// [B, nchunks * kSsdChunk, H / cluster_heads * p_tiles / slice_pairs, dstate_pad]: slice
  /// (h / cluster_heads) * p_tiles + tile holds the cluster's sum over its heads; with pairs,
  /// slice k holds the sum of slices 2k and 2k + 1, which lie in one group. 16-byte aligned
  /// with pairs.
  float* dB_partial = nullptr;
  float* dC_partial = nullptr;    ///< as dB_partial
};

/// y and, when final_state is set, the final state. One launch.
cudaError_t ssd_scan_fwd_cuda(const SsdScanParams& params, ElemType dtype, cudaStream_t stream);

/// 2 when the backward of `params` (every field set but slice_pairs and the outputs; no cluster)
/// runs on the register kernel in a form that adds pairs of slices (h, P tile) of a group in one
/// block, 1 otherwise: a block of two warp sets (one per slice) that share the group's B and C
/// tiles and add their dB / dC rows in shared memory, which halves the partial slices (AiM-L at
/// micro-batch 64: 302 MB fewer written and read back per layer). bf16 only.
int ssd_scan_bwd_slice_pairs(const SsdScanParams& params, ElemType dtype);

/// chunk_states, then dx and the partial sums. Two launches (the second in clusters of
/// cluster_heads blocks along the heads); deterministic.
cudaError_t ssd_scan_bwd_cuda(const SsdScanParams& params, ElemType dtype, cudaStream_t stream);

}  // namespace aim::kernels
