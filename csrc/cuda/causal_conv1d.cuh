// Depthwise causal conv1d, forward and backward; widths 2..kConvMaxWidth at run time.
//
// One thread computes kConvItems consecutive outputs of one (batch, channel) row; thread ids
// are flattened over (row, segment) so short rows (L = 197) waste no lanes. reverse (the
// anti-causal conv, logical step t at physical index L-1-t) needs no flip copies:
//   out[t] = act(bias + sum_k w[k] x[t - (W-1) + k])   (logical t).
// The forward works in physical steps (segments of 8 physical steps; reversed, the taps are
// mirrored and the halo is on the right), so a warp's lanes cover increasing memory.
// Backward: dpre = dout * act'(pre) recomputed on a halo, dx[t] = sum_k w[k] dpre[t + W-1-k].
// There a warp covers 32 segments (256 steps) of one row, so dweight/dbias partials are summed
// over the warp (fixed shuffle tree) and written once per (row, warp); an ordered reduction
// finishes them (deterministic, no atomics).
//
// Memory access: a warp's lanes read windows 8 steps apart, so direct per-lane reads would touch
// 8 cache lines per instruction. Instead a warp loads the one range of memory its windows cover
// (consecutive rows of a batch element are contiguous) 32 consecutive elements per instruction
// into its shared-memory buffer (WarpStage), the lanes read their windows from there, and the
// outputs go back the same way. A forward warp whose rows straddle a batch boundary of a channel
// slice (x = xz[:, :d]: the rows are not contiguous) reads x directly instead.
#pragma once

#include "common.cuh"
#include "params.h"
#include "reduce.cuh"

namespace vimd {
namespace cuda {
namespace {

constexpr int kConvHalo = kConvMaxWidth - 1;
// A warp's range: at most 256 steps plus two halos (the backward's x); one pad word per 32.
constexpr int kConvStage = 32 * kConvItems + 2 * kConvHalo;
constexpr int kConvStagePad = kConvStage + (kConvStage + 31) / 32;
struct ConvStageSmem {
  float buf[kConvThreads / 32][kConvStagePad];
};

// A warp's shared buffer holding elements [lo, lo + n) of one tensor (offsets from its start).
// Slot k + k / 32: lanes reading 8 steps apart hit distinct banks.
struct WarpStage {
  float* buf;
  long long lo = 0;
  int n = 0;
  __device__ __forceinline__ static int slot(int k) {
#ifdef VIMD_CUDA_EMULATION
    if (k < 0 || k >= kConvStage) std::abort();  // the tests' guard: a read outside the warp's range
#endif
    return k + (k >> 5);
  }
  // Every lane of the warp calls this (it ends with __syncwarp). Each lane issues all its loads
  // before its first shared-memory write: a rolled load-then-store loop keeps one load per warp in
  // flight, and on an H200 that held the kernels to about a third of the copy bandwidth (the first
  // GPU run: 29-36% of copy in the forward).
  // load = fetch (the lane's global loads, raw, into registers) + put (into the buffer); a caller
  // staging two tensors one after the other fetches both first, so their latencies overlap.
  static constexpr int kPerLane = (kConvStage + 31) / 32;
  template <typename T>
  struct Fetched {
    T v[kPerLane];
    long long lo;
    int n;
  };
  template <typename T>
  __device__ __forceinline__ static Fetched<T> fetch(const T* base, long long lo_, int n_, int lane) {
    Fetched<T> f;
    f.lo = lo_, f.n = n_;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int k = lane + 32 * j;
      f.v[j] = k < n_ ? base[lo_ + k] : from_float<T>(0.f);
    }
    return f;
  }
  template <typename T>
  __device__ __forceinline__ void put(const Fetched<T>& f, int lane) {
    lo = f.lo, n = f.n;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int k = lane + 32 * j;
      if (k < n) buf[slot(k)] = to_float(f.v[j]);
    }
    __syncwarp();
  }
  template <typename T>
  __device__ __forceinline__ void load(const T* base, long long lo_, int n_, int lane) {
    put(fetch(base, lo_, n_, lane), lane);
  }
  __device__ __forceinline__ float at(long long off) const { return buf[slot(static_cast<int>(off - lo))]; }
  __device__ __forceinline__ void put(long long off, float v) const { buf[slot(static_cast<int>(off - lo))] = v; }
  // Writes [lo, lo + n) out (after every lane's put and a __syncwarp).
  template <typename T>
  __device__ __forceinline__ void store(T* base, int lane) const {
    for (int k = lane; k < n; k += 32) base[lo + k] = from_float<T>(buf[slot(k)]);
  }
};

// Physical offset range [lo, hi) within one row of logical steps [t_lo, t_hi) (clamped to the row).
__device__ __forceinline__ void row_range(int t_lo, int t_hi, int L, bool reverse, int& lo, int& hi) {
  t_lo = max(t_lo, 0), t_hi = min(t_hi, L);
  lo = reverse ? L - t_hi : t_lo;
  hi = reverse ? L - t_lo : t_hi;
}

// Channel d's taps, zero past the width; reversed (w[m] = tap W-1-m) for the backward's dx.
__device__ __forceinline__ void load_taps(const ConvParams& p, int d, bool reversed,
                                          float (&w)[kConvMaxWidth]) {
  const int W = p.width;
#pragma unroll
  for (int k = 0; k < kConvMaxWidth; ++k) w[k] = k < W ? p.weight[d * W + (reversed ? W - 1 - k : k)] : 0.f;
}

// x may be a channel slice of a bigger tensor: batch elements x_batch_stride apart.
__device__ __forceinline__ long long x_row_offset(const ConvParams& p, long long row) {
  return row / p.dim * p.x_batch_stride + row % p.dim * p.seqlen;
}

// The forward flattens threads over (row, segment of physical steps): short rows waste no lanes.
// A warp's lanes are 32 consecutive (row, segment) pairs, rows r0 .. r1.
struct ConvThread {
  long long row, r0, r1;
  int d, q0, q_first, q_last, lane;
  bool valid, any;  // this lane has a segment; the warp has one
  __device__ __forceinline__ explicit ConvThread(const ConvParams& p) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    const long long total = static_cast<long long>(p.batch) * p.dim * p.segs;
    lane = static_cast<int>(threadIdx.x % 32);
    row = i / p.segs;
    valid = i < total;
    d = valid ? static_cast<int>(row % p.dim) : 0;
    q0 = static_cast<int>(i % p.segs) * kConvItems;
    const long long i0 = i - lane, i1 = min(i0 + 31, total - 1);
    any = i0 < total;
    r0 = i0 / p.segs, r1 = i1 / p.segs;
    q_first = static_cast<int>(i0 % p.segs) * kConvItems;     // first lane's first output
    q_last = static_cast<int>(i1 % p.segs + 1) * kConvItems;  // last lane's end (may pass L)
  }
  // [lo, hi): physical steps [q_first + a, L) of row r0, the rows between, [0, q_last + b) of row
  // r1 (r0 == r1: [q_first + a, q_last + b)), clamped to the rows; offsets from row r0's start.
  __device__ __forceinline__ void warp_range(int a, int b, int L, long long& lo, long long& hi) const {
    lo = max(q_first + a, 0);
    hi = (r1 - r0) * L + min(q_last + b, L);
  }
};

// The backward gives each warp 32 segments of one row (lanes past the row's end compute zeros),
// so the warp can sum its weight-gradient partials. `valid` is warp-uniform.
struct ConvWarpThread {
  long long row;
  int d, t0, group, lane;
  bool valid;
  __device__ __forceinline__ explicit ConvWarpThread(const ConvParams& p) {
    const long long w = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const long long rows = static_cast<long long>(p.batch) * p.dim;
    lane = static_cast<int>(threadIdx.x % 32);
    row = w / p.seg_groups;
    group = static_cast<int>(w % p.seg_groups);
    valid = row < rows;
    d = valid ? static_cast<int>(row % p.dim) : 0;
    t0 = (group * 32 + lane) * kConvItems;
  }
};

template <typename T>
__device__ __forceinline__ void conv_fwd_thread(const ConvParams& p) {
  const ConvThread th(p);
  if (!th.any) return;  // warp-uniform
  const int L = p.seqlen, W = p.width;
  // Physical steps: out[q] = act(bias + sum_m c[m] x[q - h + m]) with c = w, h = W-1 (causal) or
  // c = w mirrored, h = 0 (reverse).
  const int h = p.reverse ? 0 : W - 1;
  const T* x = static_cast<const T*>(p.x);
  WarpStage stage{shared_buffer<ConvStageSmem>().buf[threadIdx.x / 32]};
  // x: the warp's windows [q0 - h, q0 + kConvItems + W-1 - h) of rows r0 .. r1, staged when those
  // rows are contiguous (one batch element, or x not a channel slice).
  const bool staged = th.r0 / p.dim == th.r1 / p.dim || p.x_batch_stride == static_cast<long long>(p.dim) * L;
  if (staged) {
    long long lo, hi;
    th.warp_range(-h, W - 1 - h, L, lo, hi);
    stage.load(x, x_row_offset(p, th.r0) + lo, static_cast<int>(hi - lo), th.lane);
  }
  const long long x_row = x_row_offset(p, th.row);
  float c[kConvMaxWidth];
  load_taps(p, th.d, p.reverse, c);
  // xw[m] = x at physical q0 - h + m; zero past the window (m >= kConvItems + W - 1) and the row
  float xw[kConvItems + kConvHalo];
#pragma unroll
  for (int m = 0; m < kConvItems + kConvHalo; ++m) {
    const int q = th.q0 - h + m;
    xw[m] = (th.valid && m < kConvItems + W - 1 && q >= 0 && q < L)
                ? (staged ? stage.at(x_row + q) : to_float(x[x_row + q])) : 0.f;
  }
  const float bias = p.bias ? p.bias[th.d] : 0.f;
  float y[kConvItems];
#pragma unroll
  for (int i = 0; i < kConvItems; ++i) {
    float s = bias;
#pragma unroll
    for (int m = 0; m < kConvMaxWidth; ++m) s = fmaf(c[m], xw[i + m], s);
    if (p.silu) s *= sigmoidf(s);
    y[i] = s;
  }
  // out (contiguous): the warp's outputs are one range, rows r0 .. r1
  __syncwarp();  // every lane has read x from the buffer
  long long lo, hi;
  th.warp_range(0, 0, L, lo, hi);
  WarpStage out{stage.buf, th.r0 * L + lo, static_cast<int>(hi - lo)};
#pragma unroll
  for (int i = 0; i < kConvItems; ++i) {
    if (th.valid && th.q0 + i < L) out.put(th.row * L + th.q0 + i, y[i]);
  }
  __syncwarp();
  out.store(static_cast<T*>(p.out), th.lane);
}

template <typename T>
__device__ __forceinline__ void conv_bwd_thread(const ConvParams& p) {
  const ConvWarpThread th(p);
  if (!th.valid) return;  // warp-uniform
  const int L = p.seqlen, W = p.width;
  const long long x_row = x_row_offset(p, th.row), row_off = th.row * L;
  WarpStage stage{shared_buffer<ConvStageSmem>().buf[threadIdx.x / 32]};
  float w[kConvMaxWidth], wr[kConvMaxWidth];  // wr[m] = w[W-1-m]
  load_taps(p, th.d, false, w);
  load_taps(p, th.d, true, wr);
  const float bias = p.bias ? p.bias[th.d] : 0.f;
  const int t_warp = th.group * 32 * kConvItems;  // the warp's first step
  // xw[m] = x at logical t0 - (W-1) + m, covering the pre-activations of steps t0 .. t0+7+W-1;
  // zero past that window (m >= kConvItems + 2 (W-1)) and the row.
  constexpr int kSpan = kConvItems + kConvHalo;  // steps whose dpre we may need
  float xw[kSpan + kConvHalo];
  // x's and dout's global loads both issued before either is staged
  int lo, hi;
  row_range(t_warp - (W - 1), t_warp + 32 * kConvItems + W - 1, L, p.reverse, lo, hi);
  const auto fx = WarpStage::fetch(static_cast<const T*>(p.x), x_row + lo, hi - lo, th.lane);
  row_range(t_warp, t_warp + 32 * kConvItems + W - 1, L, p.reverse, lo, hi);
  const auto fd = WarpStage::fetch(static_cast<const T*>(p.dout), row_off + lo, hi - lo, th.lane);
  stage.put(fx, th.lane);
#pragma unroll
  for (int m = 0; m < kSpan + kConvHalo; ++m) {
    const int s = th.t0 - (W - 1) + m;
    xw[m] = (m < kConvItems + 2 * (W - 1) && s >= 0 && s < L) ? stage.at(x_row + (p.reverse ? L - 1 - s : s)) : 0.f;
  }
  __syncwarp();
  stage.put(fd, th.lane);
  float dp[kSpan];  // dpre at logical t0 + j (zero past L and past t0 + 7 + W - 1)
#pragma unroll
  for (int j = 0; j < kSpan; ++j) {
    const int t = th.t0 + j;
    float g = (j < kConvItems + W - 1 && t < L) ? stage.at(row_off + (p.reverse ? L - 1 - t : t)) : 0.f;
    if (p.silu) {
      float pre = bias;
#pragma unroll
      for (int k = 0; k < kConvMaxWidth; ++k) pre = fmaf(w[k], xw[j + k], pre);
      const float s = sigmoidf(pre);
      g *= s * (1.f + pre * (1.f - s));
    }
    dp[j] = g;
  }
  // dx (contiguous): the warp's 256 steps of the row
  __syncwarp();
  row_range(t_warp, t_warp + 32 * kConvItems, L, p.reverse, lo, hi);
  WarpStage dx{stage.buf, row_off + lo, hi - lo};
#pragma unroll
  for (int i = 0; i < kConvItems; ++i) {
    float s = 0.f;
#pragma unroll
    for (int m = 0; m < kConvMaxWidth; ++m) s = fmaf(wr[m], dp[i + m], s);
    const int t = th.t0 + i;
    if (t < L) dx.put(row_off + (p.reverse ? L - 1 - t : t), s);
  }
  __syncwarp();
  dx.store(static_cast<T*>(p.dx), th.lane);
  // The warp's partials: dweight[k] = sum over its steps of dp[i] x[t0 + i - (W-1) + k].
  const long long J = static_cast<long long>(p.batch) * p.seg_groups;
  const long long jj = (th.row / p.dim) * p.seg_groups + th.group;
  float* part = p.part_w + static_cast<long long>(th.d) * (W + 1) * J + jj;
  const bool writer = th.lane == 0;
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
