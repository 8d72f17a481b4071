// Pieces shared by the selective-scan forward and backward (both one thread per row): a warp's
// row steps through shared memory, a block's B/C steps staged in shared memory, and the
// sequential combine of chunk carries.
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

// exp(delta A) as exp2(delta * A log2 e).
__device__ __forceinline__ float decay_exp2(float x) { return exp2f(x); }

// Raises the kernel's dynamic shared-memory limit to `smem` (the default is 48 KB minus the
// kernel's static shared memory).
template <typename Kernel>
inline cudaError_t allow_dynamic_smem(Kernel kernel, size_t smem) {
  if (smem == 0) return cudaSuccess;
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                              cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
}

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

// The chunk (grid z) of a block. Blocks start in grid order, so the main pass takes the chunks
// last first: the chunks the summary pass read last are the likeliest still in L2.
template <bool kSummary>
__device__ __forceinline__ int scan_chunk_z() {
  return kSummary ? blockIdx.z : gridDim.z - 1 - blockIdx.z;
}

constexpr int kFwdPad = kFwdSteps + 1;  // warp staging row stride: lane-strided reads hit distinct banks
static_assert(32 % kFwdSteps == 0, "a warp transposes whole step blocks of its rows");

// kFwdSteps steps [t0, t0 + kFwdSteps) of a warp's 32 rows, moved between global memory and a
// warp buffer of 32 * kFwdPad floats in which lane (row) r's step i is slot r * kFwdPad + i. Rows
// past `rows` read zeros and write nothing, steps past t_end likewise. Each global access of the
// warp covers whole kFwdSteps-step runs of kRowsPerRound rows (coalesced, any alignment).
template <bool kReverse>
struct RowSteps {
  int t0, t_end, L, lane, rows;
  static constexpr int kRowsPerRound = 32 / kFwdSteps;

  __device__ __forceinline__ int phys(int t) const { return kReverse ? L - 1 - t : t; }
  __device__ __forceinline__ int slot(int i) const { return lane * kFwdPad + i; }

  // The lane's share of the warp's global loads of one tensor (row r starts at base + r *
  // row_stride; 32-bit offsets: kFwdMaxSeqlen bounds them), kept raw until put(): the kernel issues
  // them a tile ahead, so their latency overlaps the tile being computed instead of being paid
  // before it.
  template <typename T>
  __device__ __forceinline__ void fetch(const T* base, int row_stride, T (&v)[kFwdSteps]) const {
    const int i = lane % kFwdSteps, t = t0 + i;
#pragma unroll
    for (int j = 0; j < kFwdSteps; ++j) {
      const int r = j * kRowsPerRound + lane / kFwdSteps;
      v[j] = t < t_end && r < rows ? base[r * row_stride + phys(t)] : from_float<T>(0.f);
    }
  }

  // Fetched values into a warp buffer (lane r's step i at slot(i) of row r); no barriers.
  template <typename T>
  __device__ __forceinline__ void put(const T (&v)[kFwdSteps], float* buf) const {
    const int i = lane % kFwdSteps;
#pragma unroll
    for (int j = 0; j < kFwdSteps; ++j) buf[(j * kRowsPerRound + lane / kFwdSteps) * kFwdPad + i] = to_float(v[j]);
  }

  template <typename T>
  __device__ __forceinline__ void store(T* base, int row_stride, const float (&v)[kFwdSteps],
                                        float* buf) const {
    __syncwarp();
#pragma unroll
    for (int k = 0; k < kFwdSteps; ++k) buf[slot(k)] = v[k];
    __syncwarp();
    const int i = lane % kFwdSteps, t = t0 + i;
#pragma unroll
    for (int j = 0; j < kFwdSteps; ++j) {
      const int r = j * kRowsPerRound + lane / kFwdSteps;
      if (t < t_end && r < rows) base[r * row_stride + phys(t)] = from_float<T>(buf[r * kFwdPad + i]);
    }
  }
};

// The block's B or C rows (grouped: all its channels share them) for staging.
struct BCRows {
  const float* row0;  // state 0's row (grouped); nullptr when constant
  int stride;         // 32-bit offsets within the N rows: kFwdMaxSeqlen bounds them

  __device__ __forceinline__ BCRows(const float* X, bool grouped, int groups, long long row_stride,
                                    const ScanParams& p, int b, int d_first)
      : row0(nullptr), stride(static_cast<int>(row_stride)) {
    if (grouped) {
      const int g = d_first / (p.dim / groups);
      row0 = X + (static_cast<long long>(b) * groups + g) * p.dstate * row_stride;
    }
  }
};

// kFwdSteps steps [tile, tile + kFwdSteps) of a block's B and C rows (all N states; the block's
// rows share them), staged in shared memory by kThreads threads: value k of thread tid is state
// e / kFwdSteps at step tile + e % kFwdSteps, e = tid + k * kThreads (zero past N, past t_end
// and for an operand not staged), at dst[i * pad + n] (one row of `pad` floats per step and
// operand). fetch() issues the global loads into registers and put() stores them, so a caller can
// keep the loads in flight over other work; copy() does both.
template <int kThreads, bool kReverse>
struct BCSteps {
  static constexpr int kPer = kScanMaxState * kFwdSteps / kThreads;  // values per thread and operand
  static_assert(kPer * kThreads == kScanMaxState * kFwdSteps, "whole step blocks per thread");
  BCRows Bg, Cg;
  bool b_on, c_on;  // staged: grouped (and, for C, needed)
  int N, L, t_end;

  __device__ __forceinline__ void fetch(int tid, int tile, float (&vb)[kPer], float (&vc)[kPer]) const {
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int e = tid + k * kThreads, n = e / kFwdSteps, t = tile + e % kFwdSteps;
      const bool ok = n < N && t < t_end;
      const int pt = kReverse ? L - 1 - t : t;
      vb[k] = (b_on && ok) ? Bg.row0[n * Bg.stride + pt] : 0.f;
      vc[k] = (c_on && ok) ? Cg.row0[n * Cg.stride + pt] : 0.f;
    }
  }

  // Loads and stores in one go, without holding the values over other work.
  __device__ __forceinline__ void copy(int tid, int tile, int n_pad, int pad, float* b_dst, float* c_dst) const {
#pragma unroll 4
    for (int k = 0; k < kPer; ++k) {
      const int e = tid + k * kThreads, n = e / kFwdSteps, i = e % kFwdSteps, t = tile + i;
      if (n >= n_pad) break;
      const bool ok = n < N && t < t_end;
      const int pt = kReverse ? L - 1 - t : t;
      b_dst[i * pad + n] = (b_on && ok) ? Bg.row0[n * Bg.stride + pt] : 0.f;
      c_dst[i * pad + n] = (c_on && ok) ? Cg.row0[n * Cg.stride + pt] : 0.f;
    }
  }

  // n_pad: the states staged (a multiple of the readers' float4 groups).
  __device__ __forceinline__ void put(int tid, int n_pad, int pad, float* b_dst, float* c_dst,
                                      const float (&vb)[kPer], const float (&vc)[kPer]) const {
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int e = tid + k * kThreads, n = e / kFwdSteps, i = e % kFwdSteps;
      if (n < n_pad) {
        b_dst[i * pad + n] = vb[k];
        c_dst[i * pad + n] = vc[k];
      }
    }
  }
};

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
