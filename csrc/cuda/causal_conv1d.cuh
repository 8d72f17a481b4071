// Depthwise causal conv1d, forward and backward; widths 2..kConvMaxWidth at run time.
//
// One thread computes kConvItems consecutive outputs of one (batch, channel) row; thread ids
// are flattened over (row, segment) so short rows (L = 197) waste no lanes. Time is walked in
// logical order, physical index L-1-t when reverse (anti-causal), with no flip copies:
//   out[t] = act(bias + sum_k w[k] x[t - (W-1) + k])   (logical t).
// Backward: dpre = dout * act'(pre) recomputed on a halo, dx[t] = sum_k w[k] dpre[t + W-1-k].
// There a warp covers 32 segments (256 steps) of one row, so dweight/dbias partials are summed
// over the warp (fixed shuffle tree) and written once per (row, warp); an ordered reduction
// finishes them (deterministic, no atomics).
#pragma once

#include "common.cuh"
#include "params.h"
#include "reduce.cuh"

namespace vimd {
namespace cuda {
namespace {

constexpr int kConvHalo = kConvMaxWidth - 1;

template <typename T>
__device__ __forceinline__ float load_logical(const T* row, int s, int L, bool reverse) {
  return (s >= 0 && s < L) ? to_float(row[reverse ? L - 1 - s : s]) : 0.f;
}

// Channel d's taps, zero past the width; reversed (w[m] = tap W-1-m) for the backward's dx.
__device__ __forceinline__ void load_taps(const ConvParams& p, int d, bool reversed,
                                          float (&w)[kConvMaxWidth]) {
  const int W = p.width;
#pragma unroll
  for (int k = 0; k < kConvMaxWidth; ++k) w[k] = k < W ? p.weight[d * W + (reversed ? W - 1 - k : k)] : 0.f;
}

// x may be a channel slice of a bigger tensor: batch elements x_batch_stride apart.
__device__ __forceinline__ long long x_row_offset(const ConvParams& p, long long row, int d) {
  return (row - d) / p.dim * p.x_batch_stride + static_cast<long long>(d) * p.seqlen;
}

// The forward flattens threads over (row, segment): short rows waste no lanes.
struct ConvThread {
  long long row;
  int d, t0;
  bool valid;
  __device__ __forceinline__ explicit ConvThread(const ConvParams& p) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    const long long rows = static_cast<long long>(p.batch) * p.dim;
    row = i / p.segs;
    valid = row < rows;
    d = valid ? static_cast<int>(row % p.dim) : 0;
    t0 = static_cast<int>(i % p.segs) * kConvItems;
  }
};

// The backward gives each warp 32 segments of one row (lanes past the row's end compute zeros),
// so the warp can sum its weight-gradient partials. `valid` is warp-uniform.
struct ConvWarpThread {
  long long row;
  int d, t0, group;
  bool valid;
  __device__ __forceinline__ explicit ConvWarpThread(const ConvParams& p) {
    const long long w = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const long long rows = static_cast<long long>(p.batch) * p.dim;
    row = w / p.seg_groups;
    group = static_cast<int>(w % p.seg_groups);
    valid = row < rows;
    d = valid ? static_cast<int>(row % p.dim) : 0;
    t0 = (group * 32 + static_cast<int>(threadIdx.x % 32)) * kConvItems;
  }
};

template <typename T>
__device__ __forceinline__ void conv_fwd_thread(const ConvParams& p) {
  const ConvThread th(p);
  if (!th.valid) return;
  const int L = p.seqlen, W = p.width;
  const T* x = static_cast<const T*>(p.x) + x_row_offset(p, th.row, th.d);
  float w[kConvMaxWidth];
  load_taps(p, th.d, false, w);
  // xw[m] = x at logical t0 - (W-1) + m
  float xw[kConvItems + kConvHalo];
#pragma unroll
  for (int m = 0; m < kConvItems + kConvHalo; ++m) xw[m] = load_logical(x, th.t0 - (W - 1) + m, L, p.reverse);
  const float bias = p.bias ? p.bias[th.d] : 0.f;
  T* out = static_cast<T*>(p.out) + th.row * L;
#pragma unroll
  for (int i = 0; i < kConvItems; ++i) {
    float s = bias;
#pragma unroll
    for (int k = 0; k < kConvMaxWidth; ++k) s = fmaf(w[k], xw[i + k], s);
    if (p.silu) s *= sigmoidf(s);
    const int t = th.t0 + i;
    if (t < L) out[p.reverse ? L - 1 - t : t] = from_float<T>(s);
  }
}

template <typename T>
__device__ __forceinline__ void conv_bwd_thread(const ConvParams& p) {
  const ConvWarpThread th(p);
  if (!th.valid) return;
  const int L = p.seqlen, W = p.width;
  const T* x = static_cast<const T*>(p.x) + x_row_offset(p, th.row, th.d);
  const T* dout = static_cast<const T*>(p.dout) + th.row * L;
  float w[kConvMaxWidth], wr[kConvMaxWidth];  // wr[m] = w[W-1-m]
  load_taps(p, th.d, false, w);
  load_taps(p, th.d, true, wr);
  const float bias = p.bias ? p.bias[th.d] : 0.f;
  // xw[m] = x at logical t0 - (W-1) + m, covering the pre-activations of steps t0 .. t0+7+W-1.
  constexpr int kSpan = kConvItems + kConvHalo;  // steps whose dpre we need
  float xw[kSpan + kConvHalo];
#pragma unroll
  for (int m = 0; m < kSpan + kConvHalo; ++m) xw[m] = load_logical(x, th.t0 - (W - 1) + m, L, p.reverse);
  float dp[kSpan];  // dpre at logical t0 + j (zero past L)
#pragma unroll
  for (int j = 0; j < kSpan; ++j) {
    const int t = th.t0 + j;
    float g = load_logical(dout, t, L, p.reverse);
    if (p.silu) {
      float pre = bias;
#pragma unroll
      for (int k = 0; k < kConvMaxWidth; ++k) pre = fmaf(w[k], xw[j + k], pre);
      const float s = sigmoidf(pre);
      g *= s * (1.f + pre * (1.f - s));
    }
    dp[j] = t < L ? g : 0.f;
  }
  T* dx = static_cast<T*>(p.dx) + th.row * L;
#pragma unroll
  for (int i = 0; i < kConvItems; ++i) {
    float s = 0.f;
#pragma unroll
    for (int m = 0; m < kConvMaxWidth; ++m) s = fmaf(wr[m], dp[i + m], s);
    const int t = th.t0 + i;
    if (t < L) dx[p.reverse ? L - 1 - t : t] = from_float<T>(s);
  }
  // The warp's partials: dweight[k] = sum over its steps of dp[i] x[t0 + i - (W-1) + k].
  const long long J = static_cast<long long>(p.batch) * p.seg_groups;
  const long long jj = (th.row / p.dim) * p.seg_groups + th.group;
  float* part = p.part_w + static_cast<long long>(th.d) * (W + 1) * J + jj;
  const bool writer = threadIdx.x % 32 == 0;
#pragma unroll
  for (int k = 0; k < kConvMaxWidth; ++k) {
    if (k >= W) break;  // W is uniform: the whole warp leaves together
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < kConvItems; ++i) s = fmaf(dp[i], xw[i + k], s);
    s = warp_sum(s);
    if (writer) part[k * J] = s;
  }
  float sb = 0.f;
#pragma unroll
  for (int i = 0; i < kConvItems; ++i) sb += dp[i];
  sb = warp_sum(sb);
  if (writer) part[W * J] = sb;
}

template <typename T>
__global__ __launch_bounds__(kConvThreads) void conv_fwd_kernel(ConvParams p) { conv_fwd_thread<T>(p); }

template <typename T>
__global__ __launch_bounds__(kConvThreads) void conv_bwd_kernel(ConvParams p) { conv_bwd_thread<T>(p); }

// Both directions: blockIdx.y is the direction.
template <typename T>
__global__ __launch_bounds__(kConvThreads) void conv_fwd_bi_kernel(BiConvParams bp) {
  conv_fwd_thread<T>(bp.dir[blockIdx.y]);
}

template <typename T>
__global__ __launch_bounds__(kConvThreads) void conv_bwd_bi_kernel(BiConvParams bp) {
  conv_bwd_thread<T>(bp.dir[blockIdx.y]);
}

// part_w is (dim, W + 1, J): per channel W rows of dweight partials, then one of dbias.
inline cudaError_t conv_bwd_reduce(const ConvParams& p, cudaStream_t stream) {
  const int J = p.batch * p.seg_groups;
  const int W = p.width;
  cudaError_t err = reduce_inner(p.part_w, p.dweight, p.dim, W, W + 1, J, stream);
  if (err != cudaSuccess) return err;
  if (p.dbias) {
    err = reduce_inner(p.part_w + static_cast<long long>(W) * J, p.dbias, p.dim, 1, W + 1, J, stream);
  }
  return err;
}

inline unsigned conv_blocks(const ConvParams& p) {
  return ceil_div(static_cast<long long>(p.batch) * p.dim * p.segs, kConvThreads);
}

inline unsigned conv_bwd_blocks(const ConvParams& p) {
  return ceil_div(static_cast<long long>(p.batch) * p.dim * p.seg_groups * 32, kConvThreads);
}

}  // namespace

template <typename T>
cudaError_t causal_conv1d_fwd_launch(const ConvParams& p, cudaStream_t stream) {
  return launch_kernel(conv_fwd_kernel<T>, conv_blocks(p), kConvThreads, 0, stream, p);
}

template <typename T>
cudaError_t causal_conv1d_bwd_launch(const ConvParams& p, cudaStream_t stream) {
  cudaError_t err = launch_kernel(conv_bwd_kernel<T>, conv_bwd_blocks(p), kConvThreads, 0, stream, p);
  if (err != cudaSuccess) return err;
  return conv_bwd_reduce(p, stream);
}

template <typename T>
cudaError_t causal_conv1d_bi_fwd_launch(const BiConvParams& bp, cudaStream_t stream) {
  return launch_kernel(conv_fwd_bi_kernel<T>, dim3(conv_blocks(bp.dir[0]), 2), kConvThreads, 0, stream, bp);
}

template <typename T>
cudaError_t causal_conv1d_bi_bwd_launch(const BiConvParams& bp, cudaStream_t stream) {
  cudaError_t err = launch_kernel(conv_bwd_bi_kernel<T>, dim3(conv_bwd_blocks(bp.dir[0]), 2), kConvThreads,
                                  0, stream, bp);
  if (err != cudaSuccess) return err;
  for (const ConvParams& q : bp.dir) {
    if ((err = conv_bwd_reduce(q, stream)) != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace vimd
