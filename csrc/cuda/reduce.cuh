// Deterministic ordered sums of per-block partials (no float atomics anywhere).
#pragma once

#include "common.cuh"

namespace vimd {
namespace cuda {
namespace {

// out[o * R + r] = sum_{j < J} part[(o * S + r) * J + j] (partials innermost, rows of stride S):
// one warp per output, lanes stride over j, then a fixed-order shuffle tree.
__global__ void reduce_inner_kernel(const float* __restrict__ part, float* __restrict__ out,
                                    long long O, int R, int S, int J) {
  const long long i = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (i >= O * R) return;
  const float* src = part + ((i / R) * S + i % R) * J;
  float s = 0.f;
  for (int j = lane; j < J; j += 32) s += src[j];
  s = warp_sum(s);
  if (lane == 0) out[i] = s;
}

// out[o * R + r] = sum_{j < J} part[(o * J + j) * R + r]: one thread per output, j in order.
__global__ void reduce_middle_kernel(const float* __restrict__ part, float* __restrict__ out,
                                     long long O, int J, long long R) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= O * R) return;
  const long long o = i / R, r = i % R;
  const float* src = part + o * J * R + r;
  float s = 0.f;
  for (int j = 0; j < J; ++j) s += src[j * R];
  out[i] = s;
}

inline cudaError_t reduce_inner(const float* part, float* out, long long O, int R, int S, int J,
                                cudaStream_t stream) {
  if (O * R <= 0) return cudaSuccess;
  constexpr int kThreads = 256;
  return launch_kernel(reduce_inner_kernel, ceil_div(O * R * 32, kThreads), kThreads, 0, stream, part, out,
                       O, R, S, J);
}

// out[i] = sum_{j < J} part[i * J + j]
inline cudaError_t reduce_inner(const float* part, float* out, long long outputs, int J,
                                cudaStream_t stream) {
  return reduce_inner(part, out, outputs, 1, 1, J, stream);
}

inline cudaError_t reduce_middle(const float* part, float* out, long long O, int J, long long R,
                                 cudaStream_t stream) {
  if (O * R <= 0) return cudaSuccess;
  constexpr int kThreads = 256;
  return launch_kernel(reduce_middle_kernel, ceil_div(O * R, kThreads), kThreads, 0, stream, part, out, O,
                       J, R);
}

}  // namespace
}  // namespace cuda
}  // namespace vimd
