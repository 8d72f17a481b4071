// Inference steps: one decoding step of the selective scan and of the depthwise causal conv1d,
// the state updated in place.
//
// State update: a row (batch, channel) is `lanes` lanes of a warp (a power of two, the smallest
// >= N up to 32), each lane walking states lane, lane + lanes, ...: a warp reads 32 consecutive
// state values per instruction. h = exp(dt A) h + dt B x goes back in the state's type S;
// out = (<h, C> + D x) silu(z) (the lanes' partial sums combined by a shuffle tree), written by the
// row's first lane.
// Conv update: one thread per row walks x's seqlen steps with the width - 1 previous inputs in
// registers, then shifts conv_state (or writes x into it as a circular buffer).
#pragma once

#include "common.cuh"
#include "params.h"

namespace vimd {
namespace cuda {
namespace {

constexpr int kUpdateThreads = 128;

template <typename T, typename S>
__global__ void __launch_bounds__(kUpdateThreads)
    selective_state_update_kernel(StateUpdateParams p) {
  const int lanes = p.lanes, N = p.dstate;
  const long long row = static_cast<long long>(blockIdx.x) * (kUpdateThreads / lanes) + threadIdx.x / lanes;
  const int lane = static_cast<int>(threadIdx.x) % lanes;
  const bool live = row < static_cast<long long>(p.batch) * p.dim;
  float acc = 0.f, x = 0.f;
  if (live) {
    const int b = static_cast<int>(row / p.dim), d = static_cast<int>(row % p.dim);
    x = to_float(static_cast<const T*>(p.x)[row]);
    float dt = to_float(static_cast<const T*>(p.dt)[row]);
    if (p.dt_bias != nullptr) dt += p.dt_bias[d];
    if (p.dt_softplus) dt = softplusf(dt);
    const float dtx = dt * x;
    const float* A = p.A + static_cast<long long>(d) * N;
    const float* B = p.B + (static_cast<long long>(b) * p.b_groups + d / (p.dim / p.b_groups)) * N;
    const float* C = p.C + (static_cast<long long>(b) * p.c_groups + d / (p.dim / p.c_groups)) * N;
    S* state = static_cast<S*>(p.state) + row * N;
    for (int n = lane; n < N; n += lanes) {
      const float h = to_float(state[n]) * __expf(dt * A[n]) + dtx * B[n];
      state[n] = from_float<S>(h);
      acc = fmaf(h, C[n], acc);
    }
  }
  for (int off = lanes / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(kFullMask, acc, off, lanes);
  if (live && lane == 0) {
    const int d = static_cast<int>(row % p.dim);
    if (p.D != nullptr) acc = fmaf(p.D[d], x, acc);
    if (p.z != nullptr) {
      const float z = to_float(static_cast<const T*>(p.z)[row]);
      acc *= z * sigmoidf(z);
    }
    static_cast<T*>(p.out)[row] = from_float<T>(acc);
  }
}

__device__ __forceinline__ int floor_mod(long long v, int m) {
  const long long r = v % m;
  return static_cast<int>(r < 0 ? r + m : r);
}

template <typename T>
__global__ void __launch_bounds__(kUpdateThreads) causal_conv1d_update_kernel(ConvUpdateParams p) {
  const long long row = static_cast<long long>(blockIdx.x) * kUpdateThreads + threadIdx.x;
  if (row >= static_cast<long long>(p.batch) * p.dim) return;
  const int d = static_cast<int>(row % p.dim), W = p.width, L = p.seqlen, Sl = p.state_len;
  const bool circular = p.cache_seqlens != nullptr;
  const long long pos = circular ? p.cache_seqlens[row / p.dim] : Sl;
  T* state = static_cast<T*>(p.conv_state) + row * Sl;
  const T* x = static_cast<const T*>(p.x) + row * L;
  T* out = static_cast<T*>(p.out) + row * L;
  // win[k]: the input k steps before step t (win[0] = x[t]); wr[k]: its tap, weight[W - 1 - k].
  float wr[kConvMaxWidth], win[kConvMaxWidth];
#pragma unroll
  for (int k = 0; k < kConvMaxWidth; ++k) {
    wr[k] = k < W ? p.weight[static_cast<long long>(d) * W + W - 1 - k] : 0.f;
    win[k] = 0 < k && k < W ? to_float(state[floor_mod(pos - k, Sl)]) : 0.f;
  }
  const float bias = p.bias != nullptr ? p.bias[d] : 0.f;
  for (int t = 0; t < L; ++t) {
    win[0] = to_float(x[t]);
    float s = bias;
#pragma unroll
    for (int k = 0; k < kConvMaxWidth; ++k) s = k < W ? fmaf(wr[k], win[k], s) : s;
#pragma unroll
    for (int k = kConvMaxWidth - 1; k > 0; --k) win[k] = win[k - 1];
    out[t] = from_float<T>(p.silu ? s * sigmoidf(s) : s);
  }
  if (circular) {  // the last min(L, state_len) inputs, a later one winning a slot
    for (int t = L - min(L, Sl); t < L; ++t) state[floor_mod(pos + t, Sl)] = x[t];
  } else {  // keep the last state_len entries of (conv_state, x), ascending: reads run ahead of writes
    for (int j = 0; j < Sl; ++j) state[j] = L + j < Sl ? state[L + j] : x[L + j - Sl];
  }
}

}  // namespace

template <typename T, typename S>
cudaError_t selective_state_update_launch(const StateUpdateParams& p, cudaStream_t stream) {
  const long long rows = static_cast<long long>(p.batch) * p.dim;
  const dim3 grid(ceil_div(rows, kUpdateThreads / p.lanes));
  return launch_kernel(selective_state_update_kernel<T, S>, grid, dim3(kUpdateThreads), 0, stream, p);
}

template <typename T>
cudaError_t causal_conv1d_update_launch(const ConvUpdateParams& p, cudaStream_t stream) {
  const long long rows = static_cast<long long>(p.batch) * p.dim;
  return launch_kernel(causal_conv1d_update_kernel<T>, dim3(ceil_div(rows, kUpdateThreads)),
                       dim3(kUpdateThreads), 0, stream, p);
}

}  // namespace cuda
}  // namespace vimd
