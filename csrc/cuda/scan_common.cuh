// Pieces shared by the selective-scan forward and backward: per-lane loads along a (possibly
// reversed) row, the per-row channel context, and the sequential combine of chunk carries.
//
// Time is walked in "logical" order t = 0..L-1; the physical index is t, or L-1-t when reverse,
// so reverse=True costs nothing but an index change (no flip copies).
#pragma once

#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "params.h"

namespace vimd {
namespace cuda {
namespace {

// A lane's kScanItems elements as whole 16-byte words (64 bytes of float, 32 of half/bfloat16).
template <typename T>
union ItemWords {
  static constexpr int kWords = sizeof(T) * kScanItems / 16;
  uint4 words[kWords];
  T items[kScanItems];
};

// Shared-memory layout of one row's tile of per-step values: step lane * kScanItems + i is stored
// at lane * kPadItems + i. A row storing or loading its item i (fixed i, kScanLanes lanes) then
// hits distinct banks (kPadItems is odd), and so do the two rows of a warp (their buffers are
// kPadTile = 16 banks apart); consecutive steps likewise.
constexpr int kPadItems = kScanItems + 1;

// exp(delta A) as exp2(delta * A log2 e).
__device__ __forceinline__ float decay_exp2(float x) { return exp2f(x); }

constexpr int kPadTile = kScanLanes * kPadItems;
__device__ __forceinline__ int padded(int pos) { return pos + pos / kScanItems; }

// Static shared memory of the scan kernels (through shared_buffer, common.cuh).
struct ScanStageSmem {  // each row's staging (TileIO)
  float row[kScanRows][kPadTile];
};

// The backward's row layout within a block: row slot (0 .. kScanRows - 1), lane within the row,
// and the row's lanes as a warp mask (for __syncwarp over one row).
struct RowLane {
  int slot, lane;
  unsigned mask;
  __device__ __forceinline__ RowLane()
      : slot(threadIdx.x / kScanLanes),
        lane(threadIdx.x % kScanLanes),
        mask(((1u << kScanLanes) - 1u) << (threadIdx.x % 32 / kScanLanes * kScanLanes)) {}
};

// Raises the kernel's dynamic shared-memory limit to `smem` (the default is 48 KB minus the
// kernel's static shared memory).
template <typename Kernel>
inline cudaError_t allow_dynamic_smem(Kernel kernel, size_t smem) {
  if (smem == 0) return cudaSuccess;
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                              cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
}

// Whether a row's lane blocks start on 16-byte boundaries: a block's physical start is t, or
// L - t - kScanItems when reversed, with t a multiple of kScanItems.
template <typename T>
__device__ __forceinline__ bool block_aligned(const T* row, int L, bool reverse) {
  const long long first = reverse ? static_cast<long long>(L) - kScanItems : 0;
  return ((reinterpret_cast<uintptr_t>(row) + first * static_cast<long long>(sizeof(T))) & 15) == 0;
}

// One row's tile of logical steps [tile, tile + kScanTile), clipped to t_end: lane (of the row's
// kScanLanes) owns steps tile + lane * kScanItems + i. The direction is a compile-time parameter,
// so reversed rows cost no per-element selects. Rows are read and written in one of two ways,
// chosen per row (uniform over its lanes; the two rows of a warp may differ):
//  - the physical start of the lanes' blocks is 16-byte aligned (the blocks are 32- or 64-byte
//    multiples apart, so all lanes agree): whole-word vector accesses per lane;
//  - otherwise (e.g. fp32 rows of odd L): coalesced accesses, one step per lane per round,
//    transposed through the row's staging buffer in shared memory (synchronised over the row's
//    half of the warp only).
template <bool kReverse>
struct TileIO {
  static constexpr bool reverse = kReverse;
  float* stage;  // this row's kPadTile floats of shared memory
  int tile, t_end, L, lane;
  unsigned mask;  // the row's lanes in the warp (RowLane::mask)

  __device__ __forceinline__ int t() const { return tile + lane * kScanItems; }
  __device__ __forceinline__ int phys(int ti) const { return reverse ? L - 1 - ti : ti; }
  // whether the lane's block lies wholly below t_end
  __device__ __forceinline__ bool full() const { return t() + kScanItems <= t_end; }

  template <typename T>
  __device__ __forceinline__ bool aligned(const T* row) const { return block_aligned(row, L, reverse); }

  // The lane's whole block of a row whose blocks are aligned (full() and aligned(row) hold).
  template <typename T>
  __device__ __forceinline__ void load_block(const T* __restrict__ row, float (&v)[kScanItems]) const {
    const int t0 = t();
    ItemWords<T> w;
    const uint4* src = vec_at<const uint4>(row + (reverse ? L - t0 - kScanItems : t0));
#pragma unroll
    for (int k = 0; k < ItemWords<T>::kWords; ++k) w.words[k] = src[k];
#pragma unroll
    for (int i = 0; i < kScanItems; ++i) {  // both indices compile-time: w stays in registers
      v[i] = reverse ? to_float(w.items[kScanItems - 1 - i]) : to_float(w.items[i]);
    }
  }

  // The lane's kScanItems logical steps as float; zero past t_end. Split in two so that a caller
  // can issue several rows' global loads (fetch) before the first one's latency is paid (put):
  // fetch keeps the raw elements in w and says which of the two access ways the row takes.
  template <typename T>
  __device__ __forceinline__ bool fetch(const T* __restrict__ row, ItemWords<T>& w) const {
    const int t0 = t();
    const bool al = aligned(row);
    if (al && full()) {
      const uint4* src = vec_at<const uint4>(row + (reverse ? L - t0 - kScanItems : t0));
#pragma unroll
      for (int k = 0; k < ItemWords<T>::kWords; ++k) w.words[k] = src[k];
    } else if (al) {  // the lane's own steps, in the vector way's (physical) order
#pragma unroll
      for (int i = 0; i < kScanItems; ++i) {
        w.items[reverse ? kScanItems - 1 - i : i] = t0 + i < t_end ? row[phys(t0 + i)] : from_float<T>(0.f);
      }
    } else {  // round j: the lane's step is tile + kScanLanes j + lane
      const int rem = t_end - tile;
      const T* src = row + (reverse ? L - 1 - tile - lane : tile + lane);
      const int stride = reverse ? -kScanLanes : kScanLanes;
#pragma unroll
      for (int j = 0; j < kScanItems; ++j) w.items[j] = j * kScanLanes + lane < rem ? src[j * stride] : from_float<T>(0.f);
    }
    return al;
  }

  // The fetched elements as the lane's logical steps (the unaligned way transposes them through
  // the row's staging buffer).
  template <typename T>
  __device__ __forceinline__ void put(bool al, const ItemWords<T>& w, float (&v)[kScanItems]) const {
    if (al) {
#pragma unroll
      for (int i = 0; i < kScanItems; ++i) v[i] = to_float(w.items[reverse ? kScanItems - 1 - i : i]);
      return;
    }
#pragma unroll
    for (int j = 0; j < kScanItems; ++j) stage[padded(j * kScanLanes + lane)] = to_float(w.items[j]);
    __syncwarp(mask);
#pragma unroll
    for (int i = 0; i < kScanItems; ++i) v[i] = stage[lane * kPadItems + i];
    __syncwarp(mask);
  }

  template <typename T>
  __device__ __forceinline__ void load(const T* __restrict__ row, float (&v)[kScanItems]) const {
    ItemWords<T> w;
    put(fetch(row, w), w, v);
  }

  // Writes the lane's steps below t_end.
  template <typename T>
  __device__ __forceinline__ void store(T* __restrict__ row, const float (&v)[kScanItems]) const {
    const int t0 = t();
    if (aligned(row)) {
      if (full()) {
        ItemWords<T> w;
#pragma unroll
        for (int i = 0; i < kScanItems; ++i) {
          w.items[i] = from_float<T>(reverse ? v[kScanItems - 1 - i] : v[i]);
        }
        uint4* dst = vec_at<uint4>(row + (reverse ? L - t0 - kScanItems : t0));
#pragma unroll
        for (int k = 0; k < ItemWords<T>::kWords; ++k) dst[k] = w.words[k];
      } else {
#pragma unroll
        for (int i = 0; i < kScanItems; ++i) {
          if (t0 + i < t_end) row[phys(t0 + i)] = from_float<T>(v[i]);
        }
      }
      return;
    }
#pragma unroll
    for (int i = 0; i < kScanItems; ++i) stage[lane * kPadItems + i] = v[i];
    __syncwarp(mask);
    const int rem = t_end - tile;
    T* dst = row + (reverse ? L - 1 - tile - lane : tile + lane);
    const int stride = reverse ? -kScanLanes : kScanLanes;
#pragma unroll
    for (int j = 0; j < kScanItems; ++j) {
      if (j * kScanLanes + lane < rem) dst[j * stride] = from_float<T>(stage[padded(j * kScanLanes + lane)]);
    }
    __syncwarp(mask);
  }
};

// A cursor over the states of one row's B or C: constant (dim, N) or grouped (batch, G, N, L),
// rows `stride` apart. next() gives state n's values for the lane's steps and moves to state n + 1,
// so the state loops walk a pointer instead of recomputing 64-bit row addresses. B and C are read
// once per state, so the grouped rows' alignment is checked once per row: when every state's row
// has aligned lane blocks (a 16-byte multiple apart, the Python layer pads them so), a full block
// is two (fp32) vector loads with no further checks. Copy the cursor to walk the states again.
struct BCView {
  const float* row;  // the current state's row (grouped) or value (constant: &X[d * N + n])
  long long step;    // to the next state: stride (grouped) or 1
  bool grouped, vec;

  // grouped is groups > 0, passed separately so that a compile-time true folds the constant branch
  __device__ __forceinline__ BCView(const float* X, bool grouped_, int groups, long long row_stride,
                                    const ScanParams& p, int b, int d)
      : grouped(grouped_) {
    if (grouped) {
      const int g = d / (p.dim / groups);
      row = X + (static_cast<long long>(b) * groups + g) * p.dstate * row_stride;
      step = row_stride;
      vec = row_stride % 4 == 0 && block_aligned(row, p.seqlen, p.reverse);
    } else {
      row = X + static_cast<long long>(d) * p.dstate;
      step = 1;
      vec = false;
    }
  }

  template <typename IO>
  __device__ __forceinline__ void next(const IO& io, float (&v)[kScanItems]) {
    if (grouped) {
      if (vec && io.full()) {
        io.load_block(row, v);
      } else {
        io.load(row, v);
      }
    } else {
      const float s = *row;
#pragma unroll
      for (int i = 0; i < kScanItems; ++i) v[i] = s;
    }
    row += step;
  }
};

// The scan kernels are compiled per B/C layout: kBCGrouped when B and C are both grouped (the
// models' case; the per-state code then has no constant-B/C branches), else each one's layout is
// read at run time. Separate kernels rather than a branch inside one: one kernel holding both
// bodies needs more registers than either (the backward spilled). Calls launch(std::true_type)
// or launch(std::false_type).
inline bool bc_grouped(const ScanParams& p) { return p.b_groups > 0 && p.c_groups > 0; }
template <typename Launch>
inline cudaError_t with_bc_layout(const ScanParams& p, Launch&& launch) {
  return bc_grouped(p) ? launch(std::true_type{}) : launch(std::false_type{});
}

// B and C views of row (b, d); kBCGrouped: both are grouped.
template <bool kBCGrouped>
__device__ __forceinline__ BCView b_view(const ScanParams& p, int b, int d) {
  return BCView(p.B, kBCGrouped || p.b_groups > 0, p.b_groups, p.b_row_stride, p, b, d);
}
template <bool kBCGrouped>
__device__ __forceinline__ BCView c_view(const ScanParams& p, int b, int d) {
  return BCView(p.C, kBCGrouped || p.c_groups > 0, p.c_groups, p.c_row_stride, p, b, d);
}

// delta after delta_bias and softplus; exactly zero past t_end so padded steps are identities.
template <int kSteps>
__device__ __forceinline__ void prepare_delta(float (&dv)[kSteps], int t, int t_end, float bias, bool softplus) {
#pragma unroll
  for (int i = 0; i < kSteps; ++i) {
    const float x = dv[i] + bias;
    dv[i] = t + i < t_end ? (softplus ? softplusf(x) : x) : 0.f;
  }
}

__device__ __forceinline__ long long row_index(const ScanParams& p, int b, int d) {
  return static_cast<long long>(b) * p.dim + d;
}

// Chunk carries, one warp per (batch, channel, state). Forward: chunk_h holds chunk-local end
// states (from h = 0); it is replaced in place by the state entering each chunk, starting from
// initial_state. Backward (kAdjoint) does the same for chunk_q (the adjoint entering each chunk
// from its end), walking from the last chunk, from dlast_state. Chunk k maps the carry h to
// decay_k h + local_k, with decay_k = prod_t exp(delta_t A) = exp(A sum_t delta_t); a warp takes
// 32 chunks at a time and composes their maps with a 5-level shuffle scan, so the serial part is
// one scan per 32 chunks instead of one dependent step (and load) per chunk (the DVMSR shape has
// 512 forward chunks and 256 backward tiles).
template <bool kAdjoint>
__global__ void scan_combine_kernel(ScanParams p) {
  const long long w = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const int N = p.dstate;
  if (w >= static_cast<long long>(p.batch) * p.dim * N) return;  // whole warps
  const long long row = w / N;  // b * dim + d
  const int n = static_cast<int>(w % N);
  const int d = static_cast<int>(row % p.dim);
  const float a = p.A[d * N + n];
  const float* init = kAdjoint ? p.dlast_state : p.initial_state;
  float* chunk = kAdjoint ? p.chunk_q : p.chunk_h;
  const float* sum_delta = p.chunk_sum_delta + row * p.n_chunks;
  // Chunk k (walk order) of the lane in group k0: its slot and map. The next group's loads are
  // issued before this group's scan (they read slots this group does not write).
  auto slot_of = [&](int k) { return chunk + (row * p.n_chunks + (kAdjoint ? p.n_chunks - 1 - k : k)) * N + n; };
  auto decay_of = [&](int k) { return __expf(a * sum_delta[kAdjoint ? p.n_chunks - 1 - k : k]); };
  float carry = init ? init[w] : 0.f;  // entering chunk k0
  float next_a = lane < p.n_chunks ? decay_of(lane) : 1.f, next_b = lane < p.n_chunks ? *slot_of(lane) : 0.f;
  for (int k0 = 0; k0 < p.n_chunks; k0 += 32) {
    const int k = k0 + lane;
    const bool ok = k < p.n_chunks;
    float ma = next_a, mb = next_b;
    if (k + 32 < p.n_chunks) next_a = decay_of(k + 32), next_b = *slot_of(k + 32);
    float* slot = slot_of(k);
    warp_scan_affine_up<32>(ma, mb, lane);  // chunks k0..k composed
    float ea = __shfl_up_sync(kFullMask, ma, 1), eb = __shfl_up_sync(kFullMask, mb, 1);
    if (lane == 0) ea = 1.f, eb = 0.f;
    if (ok) *slot = fmaf(ea, carry, eb);  // the carry entering chunk k
    carry = fmaf(__shfl_sync(kFullMask, ma, 31), carry, __shfl_sync(kFullMask, mb, 31));
  }
}

inline cudaError_t scan_combine(const ScanParams& p, bool adjoint, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const unsigned blocks = ceil_div(static_cast<long long>(p.batch) * p.dim * p.dstate * 32, kThreads);
  return adjoint ? launch_kernel(scan_combine_kernel<true>, blocks, kThreads, 0, stream, p)
                 : launch_kernel(scan_combine_kernel<false>, blocks, kThreads, 0, stream, p);
}

}  // namespace
}  // namespace cuda
}  // namespace vimd
