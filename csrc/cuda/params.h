// Plain parameter structs and launcher declarations shared by the CUDA kernels (csrc/cuda/*.cuh)
// and the binding layer (csrc/bindings_cuda.cpp). No torch headers here: this compiles with bare
// nvcc and with a host C++ compiler.
#pragma once

#include <cuda_runtime_api.h>

namespace vimd {
namespace cuda {

// Selective scan backward layout: kScanLanes lanes (half a warp) walk one (batch, channel) row;
// each lane owns kScanItems consecutive time steps, so a row covers one tile of kScanTile = 256
// steps per iteration, and a block of kScanWarps warps holds kScanRows rows. Building with
// VIMD_SCAN_LANES=32 gives the earlier layout (a warp per row, 8 steps per lane, fewer registers)
// for timing one against the other (benchmarks/gpu_check.sh stage `layout`).
#ifndef VIMD_SCAN_LANES
#define VIMD_SCAN_LANES 16
#endif
constexpr int kScanWarps = 4;
constexpr int kScanLanes = VIMD_SCAN_LANES;
static_assert(kScanLanes == 16 || kScanLanes == 32, "VIMD_SCAN_LANES must be 16 or 32");
constexpr int kScanItems = 256 / kScanLanes;
constexpr int kScanTile = kScanLanes * kScanItems;
constexpr int kScanRows = kScanWarps * (32 / kScanLanes);
// Backward main kernel: blocks per multiprocessor its registers allow (__launch_bounds__): about
// 247 registers with 16 steps per lane, 160 with 8.
constexpr int kScanMainBlocks = kScanLanes == 16 ? 2 : 3;
constexpr int kScanMaxState = 64;  // the backward keeps (2, N, kScanTile) floats in shared memory

// Ablations of the scan kernels, for placing their time on a GPU without hardware counters: a
// build with VIMD_ABLATE = a mask of the bits below leaves those stages out (its results are
// wrong by design), and its time against the full kernels' is what the stages cost. The rest of
// the work and the occupancy stay as they are (how: scan_common.cuh). Trees for
// gpu_check's `versions` stage: `bash scripts/pack_versions.sh ablate:MASK`. 0 (the default)
// compiles every hook away.
#ifndef VIMD_ABLATE
#define VIMD_ABLATE 0
#endif
constexpr unsigned kAblate = VIMD_ABLATE;
constexpr unsigned kAblateExp = 1;     // the decays' exp2 become one FMA (no SFU work)
constexpr unsigned kAblateLoads = 2;   // row inputs (u, delta, z, dout): every row reads the same 4 rows (cached)
constexpr unsigned kAblateStores = 4;  // row outputs (out, du, ddelta, dz) are not written
constexpr unsigned kAblateBC = 8;      // B and C are made up, not read
constexpr unsigned kAblateScan = 16;   // backward: no lane scans (their shuffle rounds)
constexpr unsigned kAblateSync = 32;   // no block barrier per forward tile / per backward state
constexpr bool ablated(unsigned stage) { return (kAblate & stage) != 0; }

// Selective scan forward layout: one thread walks one (batch, channel) row with its states in
// registers (kFwdStateGroup at a time); a block's kFwdRows rows share B/C, staged kFwdSteps steps
// at a time. Forward chunks are multiples of kFwdSteps.
constexpr int kFwdRows = 128;
constexpr int kFwdSteps = 8;
constexpr int kFwdStateGroup = 16;
// The forward addresses a warp's 32 rows and a block's N <= kScanMaxState B/C rows (padded by
// fewer than 16 steps) with 32-bit offsets from one base.
constexpr int kFwdMaxSeqlen = (1 << 25) - 16;

// Causal conv1d layout: one thread computes kConvItems consecutive outputs of one row.
constexpr int kConvItems = 8;
constexpr int kConvMaxWidth = 8;
constexpr int kConvThreads = 128;

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct ScanParams {
  int batch = 0, dim = 0, seqlen = 0, dstate = 0;
  int b_groups = 0, c_groups = 0;  // 0: constant (dim, N); G >= 1: (batch, G, N, L)
  // Grouped B/C: elements between consecutive (batch, group, state) rows (>= L). The Python side
  // pads rows so that the lanes' 16-byte blocks are aligned in the direction scanned.
  long long b_row_stride = 0, c_row_stride = 0;
  bool delta_softplus = false, reverse = false;
  int chunk_len = kScanTile;       // forward: multiple of kFwdSteps; backward: kScanTile
  // Backward with several tiles: false = the tiles run in parallel (a summary pass and the
  // carries' combine give their entry values); true = each block walks its rows' tiles, last
  // first, after a forward sweep of the states (for when the rows alone fill the GPU).
  bool row_walk = false;
  int n_chunks = 1;                // ceil(seqlen / chunk_len)

  // Inputs: u, delta, z, dout have the element type T; everything else is float32.
  const void* u = nullptr;
  const void* delta = nullptr;
  const void* z = nullptr;             // optional; rows of L, batch elements z_batch_stride apart
  long long z_batch_stride = 0;
  const float* A = nullptr;            // (dim, N)
  const float* B = nullptr;            // (dim, N) or (batch, G, N, L) with rows b/c_row_stride apart
  const float* C = nullptr;
  const float* D = nullptr;            // optional (dim)
  const float* delta_bias = nullptr;   // optional (dim)
  const float* initial_state = nullptr;  // optional (batch, dim, N)

  // Forward outputs.
  void* out = nullptr;                 // (batch, dim, L) T
  float* last_state = nullptr;         // (batch, dim, N)

  // Chunk workspaces (n_chunks > 1 only): chunk-local results, replaced by chunk entry values.
  float* chunk_h = nullptr;            // (batch, dim, n_chunks, N) state entering each chunk
  float* chunk_q = nullptr;            // (batch, dim, n_chunks, N) backward: d h flowing in at chunk end
  float* chunk_sum_delta = nullptr;    // (batch, dim, n_chunks)

  // Backward.
  const void* dout = nullptr;          // (batch, dim, L) T
  const float* dlast_state = nullptr;  // optional (batch, dim, N)
  void* du = nullptr;
  void* ddelta = nullptr;
  void* dz = nullptr;                  // when z is given
  float* dinitial_state = nullptr;     // when initial_state is given
  // Per-block partial sums, reduced in a fixed order afterwards (deterministic, no atomics).
  // J = batch * n_chunks partials per value, stored innermost.
  float* part_A = nullptr;             // (dim, N, J)
  float* part_D = nullptr;             // (dim, J)          when D is given
  float* part_delta_bias = nullptr;    // (dim, J)          when delta_bias is given
  float* part_B = nullptr;             // constant: (dim, N, J); grouped: (batch, n_parts, N, L)
  float* part_C = nullptr;
  // Reduced float32 gradients (the binding casts them to the inputs' dtypes).
  float* dA = nullptr;                 // (dim, N)
  float* dB = nullptr;                 // like B
  float* dC = nullptr;                 // like C
  float* dD = nullptr;                 // when D is given
  float* ddelta_bias = nullptr;        // when delta_bias is given
  // Grouped B/C: channels are cut into segments that lie inside one B group and one C group
  // (seg_channels = gcd of the group sizes of the grouped operands). Backward: each block reduces
  // the dB/dC contributions of slab_channels channels of one segment (kScanWarps warps, looping).
  // Forward: the launcher sets it; a block's rows lie in one segment.
  int seg_channels = 0;
  int slab_channels = kScanWarps;
  int slabs_per_seg = 1;
};

struct ConvParams {
  int batch = 0, dim = 0, seqlen = 0, width = 0;
  bool silu = false, reverse = false;
  int segs = 1;                        // ceil(seqlen / kConvItems) thread segments per row
  int seg_groups = 1;                  // backward: ceil(segs / 32) warps per row
  const void* x = nullptr;             // (batch, dim, L) T; batch elements x_batch_stride apart
  long long x_batch_stride = 0;
  const float* weight = nullptr;       // (dim, width)
  const float* bias = nullptr;         // optional (dim)
  void* out = nullptr;                 // forward output (batch, dim, L) T
  const void* dout = nullptr;          // backward
  void* dx = nullptr;
  float* part_w = nullptr;             // (dim, width + 1, batch * seg_groups): dweight, dbias partials
  float* dweight = nullptr;            // (dim, width)
  float* dbias = nullptr;              // (dim) when bias is given
};

// Both ViM directions in one launch: dir[1] runs reversed (mirrored indexing, reverse = true),
// each direction with its own pointers; both have the same sizes and options. The direction is
// a grid dimension (the scan: z, direction-major over the chunks; the conv: y).
struct BiScanParams {
  ScanParams dir[2];
};
struct BiConvParams {
  ConvParams dir[2];
};

// Launchers (defined in the .cuh templates, instantiated in the .cu files). They return the
// launch error, if any, so the binding layer can report it.
template <typename T> cudaError_t selective_scan_fwd_launch(const ScanParams& p, cudaStream_t stream);
template <typename T> cudaError_t selective_scan_bwd_launch(const ScanParams& p, cudaStream_t stream);
template <typename T> cudaError_t causal_conv1d_fwd_launch(const ConvParams& p, cudaStream_t stream);
template <typename T> cudaError_t causal_conv1d_bwd_launch(const ConvParams& p, cudaStream_t stream);
template <typename T> cudaError_t selective_scan_bi_fwd_launch(const BiScanParams& p, cudaStream_t stream);
template <typename T> cudaError_t selective_scan_bi_bwd_launch(const BiScanParams& p, cudaStream_t stream);
template <typename T> cudaError_t causal_conv1d_bi_fwd_launch(const BiConvParams& p, cudaStream_t stream);
template <typename T> cudaError_t causal_conv1d_bi_bwd_launch(const BiConvParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace vimd
