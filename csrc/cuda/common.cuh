// Device helpers shared by the kernels: element conversions, activation math, warp scans.
#pragma once

#include <cstdint>
#include <cstdlib>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace vimd {
namespace cuda {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// exp(delta * A) is evaluated as exp2(delta * (A log2 e)) with A log2 e hoisted out of the time
// loop: one multiply and one ex2 per step and state (exp2f is ex2.approx under --use_fast_math).
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float sigmoidf(float x) { return 1.f / (1.f + __expf(-x)); }

// softplus as torch computes it (threshold 20: identity above).
__device__ __forceinline__ float softplusf(float x) { return x > 20.f ? x : log1pf(__expf(x)); }

constexpr unsigned kFullMask = 0xffffffffu;

// The address of a vector access (uint4, float4). On the GPU a misaligned one faults; the host
// emulator of the tests (x86 tolerates it) checks the alignment here instead.
template <typename V, typename P>
__device__ __forceinline__ V* vec_at(P* p) {
#ifdef VIMD_CUDA_EMULATION
  if (reinterpret_cast<uintptr_t>(p) % alignof(V) != 0) std::abort();
#endif
  return reinterpret_cast<V*>(p);
}

// A kernel's static shared memory, one struct per kind of buffer: a __shared__ array declared in a
// function template is allocated once per instantiation (e.g. per direction); declared through
// this, each buffer is allocated once per kernel.
template <typename Buffer>
__device__ __forceinline__ Buffer& shared_buffer() {
  __shared__ __align__(16) Buffer buffer;
  return buffer;
}

// Sum over each kWidth-lane segment of the warp (every lane gets its segment's sum).
template <int kWidth = 32>
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = kWidth / 2; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off, kWidth);
  return v;
}

// Inclusive scan of affine maps h -> a * h + b over each kWidth-lane segment of a warp (lane is
// the lane within the segment), lane 0 first (composition: earlier map applied first). Lanes with
// no partner at a level combine with the identity map (1, 0): selects instead of a branch, so each
// level is 2 shuffles, 2 selects and 2 math instructions, with no predicated register copies.
// Every lane of the warp must take part.
template <int kWidth>
__device__ __forceinline__ void warp_scan_affine_up(float& a, float& b, int lane) {
#pragma unroll
  for (int off = 1; off < kWidth; off <<= 1) {
    float pa = __shfl_up_sync(kFullMask, a, off, kWidth);
    float pb = __shfl_up_sync(kFullMask, b, off, kWidth);
    const bool has = lane >= off;
    pa = has ? pa : 1.f;
    pb = has ? pb : 0.f;
    b = fmaf(a, pb, b);
    a *= pa;
  }
}

inline unsigned ceil_div(long long a, long long b) { return static_cast<unsigned>((a + b - 1) / b); }

// Every launch goes through here (csrc/cuda/emu/ replaces it to run the kernels on the CPU).
#ifndef VIMD_CUDA_EMULATION
template <typename... Params, typename... Args>
inline cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                 cudaStream_t stream, Args... args) {
  kernel<<<grid, block, smem, stream>>>(args...);
  return cudaGetLastError();
}
// 16-byte aligned: the kernels read and write their dynamic buffers as float4.
#define VIMD_DYNAMIC_SMEM(type, name) extern __shared__ __align__(16) type name[]
#endif

}  // namespace cuda
}  // namespace vimd
