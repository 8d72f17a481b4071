// Plain parameter structs and launcher declarations shared by the CUDA kernels (csrc/cuda/*.cuh)
// and the binding layer (csrc/cuda/ops.cpp). No torch headers here: this compiles with bare nvcc
// and with a host C++ compiler.
#pragma once

#include <cuda_runtime_api.h>

#include "layout.h"

namespace vimd {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct ScanParams {
  int batch = 0, dim = 0, seqlen = 0, dstate = 0;
  int b_groups = 0, c_groups = 0;  // 0: constant (dim, N); G >= 1: (batch, G, N, L)
  // Grouped B/C: elements between consecutive (batch, group, state) rows (>= L). The Python side
  // pads rows so that the lanes' 16-byte blocks are aligned in the direction scanned.
  long long b_row_stride = 0, c_row_stride = 0;
  bool delta_softplus = false, reverse = false;
  int chunk_len = kFwdSteps;       // a multiple of kFwdSteps (= kBwdSegment)
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
  // Backward: each row's states at the start of every kBwdSegment-step segment, rows innermost.
  float* checkpoints = nullptr;        // (batch, ceil(seqlen / kBwdSegment), N, dim)

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
  // (seg_channels = gcd of the group sizes of the grouped operands). Backward: each block sums
  // the dB/dC contributions of slab_channels channels of one segment (kBwdRows rows at a time);
  // n_parts = (dim / seg_channels) * slabs_per_seg blocks per (batch, chunk).
  // Forward: the launcher sets it; a block's rows lie in one segment.
  int seg_channels = 0;
  int slab_channels = kBwdRows;
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

// Inference steps (update.cuh): one decoding step, the state updated in place.
// State update: state (batch, dim, N) of element type S; x, dt, z, out (batch, dim) of element
// type T; A (dim, N), B/C (batch, groups, N), D/dt_bias (dim) float32. Channel d reads group
// d / (dim / groups) of B/C.
struct StateUpdateParams {
  int batch = 0, dim = 0, dstate = 0, b_groups = 1, c_groups = 1;
  int lanes = 32;  // lanes per row (a power of two <= 32): the N states spread over them
  bool dt_softplus = false;
  void* state = nullptr;
  const void* x = nullptr;
  const void* dt = nullptr;
  const void* z = nullptr;            // optional
  const float* A = nullptr;
  const float* B = nullptr;
  const float* C = nullptr;
  const float* D = nullptr;           // optional
  const float* dt_bias = nullptr;     // optional
  void* out = nullptr;
};

// Conv update: x, out (batch, dim, seqlen) and conv_state (batch, dim, state_len) of element type
// T; weight (dim, width), bias (dim) float32; cache_seqlens (batch) int32, optional: conv_state is
// then a circular buffer whose next slot for row b is cache_seqlens[b] mod state_len.
struct ConvUpdateParams {
  int batch = 0, dim = 0, seqlen = 0, width = 0, state_len = 0;
  bool silu = false;
  const void* x = nullptr;
  void* conv_state = nullptr;
  const float* weight = nullptr;
  const float* bias = nullptr;            // optional
  const int* cache_seqlens = nullptr;     // optional
  void* out = nullptr;
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
template <typename T, typename S>
cudaError_t selective_state_update_launch(const StateUpdateParams& p, cudaStream_t stream);
template <typename T> cudaError_t causal_conv1d_update_launch(const ConvUpdateParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace vimd
