// Pieces shared by the selective-scan forward and backward: per-lane loads along a (possibly
// reversed) row, the per-row channel context, and the sequential combine of chunk carries.
//
// Time is walked in "logical" order t = 0..L-1; the physical index is t, or L-1-t when reverse,
// so reverse=True costs nothing but an index change (no flip copies).
#pragma once

#include <cstdint>

#include "common.cuh"
#include "params.h"

namespace vimd {
namespace cuda {
namespace {

// A lane's kScanItems elements as whole 16-byte words (32 bytes of float, 16 of half/bfloat16).
template <typename T>
union ItemWords {
  static constexpr int kWords = sizeof(T) * kScanItems / 16;
  uint4 words[kWords];
  T items[kScanItems];
};

// True when the lane's steps [t, t + kScanItems) are all inside the row and their physical block
// (ascending, or descending when reverse) starts on a 16-byte boundary.
template <typename T>
__device__ __forceinline__ bool whole_words(const T* row, int t, int t_end, int L, bool reverse) {
  const int start = reverse ? L - t - kScanItems : t;
  return t + kScanItems <= t_end && (reinterpret_cast<uintptr_t>(row + start) & 15) == 0;
}

// Loads the lane's kScanItems logical steps [t, t + kScanItems) of a row; zero past t_end.
template <typename T>
__device__ __forceinline__ void load_items(const T* __restrict__ row, int t, int t_end, int L,
                                           bool reverse, float (&v)[kScanItems]) {
  if (whole_words(row, t, t_end, L, reverse)) {
    ItemWords<T> w;
    const uint4* src = reinterpret_cast<const uint4*>(row + (reverse ? L - t - kScanItems : t));
#pragma unroll
    for (int k = 0; k < ItemWords<T>::kWords; ++k) w.words[k] = src[k];
#pragma unroll
    for (int i = 0; i < kScanItems; ++i) {  // both indices compile-time: w stays in registers
      v[i] = reverse ? to_float(w.items[kScanItems - 1 - i]) : to_float(w.items[i]);
    }
    return;
  }
#pragma unroll
  for (int i = 0; i < kScanItems; ++i) {
    const int ti = t + i;
    v[i] = ti < t_end ? to_float(row[reverse ? L - 1 - ti : ti]) : 0.f;
  }
}

template <typename T>
__device__ __forceinline__ void store_items(T* __restrict__ row, int t, int t_end, int L, bool reverse,
                                            const float (&v)[kScanItems]) {
  if (whole_words(row, t, t_end, L, reverse)) {
    ItemWords<T> w;
#pragma unroll
    for (int i = 0; i < kScanItems; ++i) {
      w.items[i] = from_float<T>(reverse ? v[kScanItems - 1 - i] : v[i]);
    }
    uint4* dst = reinterpret_cast<uint4*>(row + (reverse ? L - t - kScanItems : t));
#pragma unroll
    for (int k = 0; k < ItemWords<T>::kWords; ++k) dst[k] = w.words[k];
    return;
  }
#pragma unroll
  for (int i = 0; i < kScanItems; ++i) {
    const int ti = t + i;
    if (ti < t_end) row[reverse ? L - 1 - ti : ti] = from_float<T>(v[i]);
  }
}

// One row's view of B or C: constant (dim, N) or grouped (batch, G, N, L).
struct BCView {
  const float* base;  // grouped: row for state 0 of this (batch, group); constant: &X[d * N]
  bool grouped;
  int L;

  __device__ __forceinline__ BCView(const float* X, int groups, const ScanParams& p, int b, int d)
      : grouped(groups > 0), L(p.seqlen) {
    if (grouped) {
      const int g = d / (p.dim / groups);
      base = X + (static_cast<long long>(b) * groups + g) * p.dstate * static_cast<long long>(L);
    } else {
      base = X + static_cast<long long>(d) * p.dstate;
    }
  }

  __device__ __forceinline__ void load(int n, int t, int t_end, bool reverse,
                                       float (&v)[kScanItems]) const {
    if (grouped) {
      load_items<float>(base + static_cast<long long>(n) * L, t, t_end, L, reverse, v);
    } else {
      const float s = base[n];
#pragma unroll
      for (int i = 0; i < kScanItems; ++i) v[i] = s;
    }
  }
};

// delta after delta_bias and softplus; exactly zero past t_end so padded steps are identities.
__device__ __forceinline__ void prepare_delta(float (&dv)[kScanItems], int t, int t_end, float bias,
                                              bool softplus) {
#pragma unroll
  for (int i = 0; i < kScanItems; ++i) {
    const float x = dv[i] + bias;
    dv[i] = t + i < t_end ? (softplus ? softplusf(x) : x) : 0.f;
  }
}

__device__ __forceinline__ long long row_index(const ScanParams& p, int b, int d) {
  return static_cast<long long>(b) * p.dim + d;
}

// Chunk carries, one thread per (batch, channel, state), walking the chunks in order.
// Forward: chunk_h holds chunk-local end states (from h = 0); it is replaced in place by the
// state entering each chunk, starting from initial_state. Backward (kAdjoint) does the same for
// chunk_q (the adjoint entering each chunk from its end), walking from the last chunk, from
// dlast_state. A chunk's decay is prod_t exp(delta_t A) = exp(A * sum_t delta_t).
// The walk is serial in the carry only: the loads of kAhead chunks are issued together, so their
// latency is paid once per kAhead chunks (the SR shape has 256 chunks in the backward).
template <bool kAdjoint>
__global__ void scan_combine_kernel(ScanParams p) {
  constexpr int kAhead = 8;
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int N = p.dstate;
  if (i >= static_cast<long long>(p.batch) * p.dim * N) return;
  const long long row = i / N;  // b * dim + d
  const int n = static_cast<int>(i % N);
  const int d = static_cast<int>(row % p.dim);
  const float a = p.A[d * N + n];
  const float* init = kAdjoint ? p.dlast_state : p.initial_state;
  float* chunk = kAdjoint ? p.chunk_q : p.chunk_h;
  const float* sum_delta = p.chunk_sum_delta + row * p.n_chunks;
  float carry = init ? init[i] : 0.f;
  for (int k0 = 0; k0 < p.n_chunks; k0 += kAhead) {
    float local[kAhead], decay[kAhead];
#pragma unroll
    for (int s = 0; s < kAhead; ++s) {
      const int k = k0 + s;
      const int c = kAdjoint ? p.n_chunks - 1 - k : k;
      local[s] = k < p.n_chunks ? chunk[(row * p.n_chunks + c) * N + n] : 0.f;
      decay[s] = k < p.n_chunks ? __expf(a * sum_delta[c]) : 0.f;
    }
#pragma unroll
    for (int s = 0; s < kAhead; ++s) {
      const int k = k0 + s;
      if (k >= p.n_chunks) break;
      const int c = kAdjoint ? p.n_chunks - 1 - k : k;
      chunk[(row * p.n_chunks + c) * N + n] = carry;
      carry = fmaf(decay[s], carry, local[s]);
    }
  }
}

inline cudaError_t scan_combine(const ScanParams& p, bool adjoint, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const unsigned blocks = ceil_div(static_cast<long long>(p.batch) * p.dim * p.dstate, kThreads);
  return adjoint ? launch_kernel(scan_combine_kernel<true>, blocks, kThreads, 0, stream, p)
                 : launch_kernel(scan_combine_kernel<false>, blocks, kThreads, 0, stream, p);
}

}  // namespace
}  // namespace cuda
}  // namespace vimd
