// Host emulation of the CUDA built-ins used by csrc/cuda, so the very same kernel templates run
// on the CPU (tests without a GPU; see tests/kernels/test_cuda.py). Include this BEFORE the kernels.
//
// Every CUDA thread of a block is one std::thread; blocks run one after another (so `__shared__`
// can be a function-local static). Warp shuffles and __syncwarp are barriers over the 32 lanes of
// a warp (__syncwarp over half a warp takes that half's mask), __syncthreads one over the block
// that also checks every live thread waits at the same call site. Slow (thousands of context
// switches): tiny shapes only.
// Not a GPU model: it checks indexing, data flow and arithmetic, not timing. Built with
// -fsanitize=thread (tests/kernels/test_cuda_racecheck.py) it also checks the ordering of shared
// memory: the barriers order memory as on a GPU, the shuffles (which a GPU does not promise) don't.
#pragma once

#define VIMD_CUDA_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <cmath>
#include <memory>
#include <thread>
#include <vector>

namespace vimd_emu {

struct Warp {
  explicit Warp(int lanes) : bar(lanes), half{std::barrier<>(lanes / 2), std::barrier<>(lanes / 2)} {}
  std::barrier<> bar;
  std::barrier<> half[2];  // __syncwarp(0x0000ffff) / __syncwarp(0xffff0000)
  float vals[32] = {};
};

// A block's barrier, and where each thread called it: a GPU requires every thread of the block
// that has not exited to wait at the same __syncthreads, so the emulator checks the call sites
// (two slots, by barrier phase: a thread already at the next barrier writes the other one).
struct Block {
  explicit Block(int n) : bar(n), n(n), sites{std::vector<std::atomic<const char*>>(n),
                                              std::vector<std::atomic<const char*>>(n)}, exited(n) {}
  std::barrier<> bar;
  int n;
  std::vector<std::atomic<const char*>> sites[2];  // "file:line" of the __syncthreads
  std::vector<std::atomic<bool>> exited;
};

struct ThreadCtx {
  uint3 thread{}, block{};
  Warp* warp = nullptr;
  Block* block_state = nullptr;
  unsigned phase = 0;  // block barriers this thread has passed
};

inline thread_local ThreadCtx ctx;
inline dim3 grid_dim, block_dim;
inline std::vector<unsigned char> dynamic_smem;
inline std::atomic<bool> launch_failed{false};
inline char failure[256];

inline void sync_block(const char* site) {
  Block& b = *ctx.block_state;
  const int slot = ctx.phase++ & 1, t = static_cast<int>(ctx.thread.x);
  b.sites[slot][t].store(site);
  b.bar.arrive_and_wait();
  for (int u = 0; u < b.n; ++u) {
    if (b.exited[u].load()) continue;
    const char* other = b.sites[slot][u].load();
    if (std::strcmp(other, site) != 0 && !launch_failed.exchange(true))
      std::snprintf(failure, sizeof failure, "divergent __syncthreads (emulator): in block (%u, %u, %u) thread %d "
                    "waits at %s, thread %d at %s", ctx.block.x, ctx.block.y, ctx.block.z, t, site, u, other);
  }
}

inline int lane() { return static_cast<int>(ctx.thread.x % 32); }

#if defined(__SANITIZE_THREAD__)
// Under ThreadSanitizer a shuffle must not order memory: on a GPU only the barriers do
// (__syncthreads, __syncwarp), so the barriers inside `exchange` and its own value slots are
// hidden from TSan, and code that relied on a shuffle to order shared memory is reported.
extern "C" void AnnotateIgnoreSyncBegin(const char*, int);
extern "C" void AnnotateIgnoreSyncEnd(const char*, int);
extern "C" void AnnotateIgnoreReadsBegin(const char*, int);
extern "C" void AnnotateIgnoreReadsEnd(const char*, int);
extern "C" void AnnotateIgnoreWritesBegin(const char*, int);
extern "C" void AnnotateIgnoreWritesEnd(const char*, int);
struct ShuffleIsNotAFence {
  ShuffleIsNotAFence() {
    AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
  }
  ~ShuffleIsNotAFence() {
    AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
    AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
  }
};
#else
struct ShuffleIsNotAFence {};
#endif

inline float exchange(float v, int src) {
  Warp& w = *ctx.warp;
  [[maybe_unused]] const ShuffleIsNotAFence hidden;
  w.vals[lane()] = v;
  w.bar.arrive_and_wait();
  const float r = w.vals[src];
  w.bar.arrive_and_wait();
  return r;
}

// Runs kernel(args...) over the grid; blocks in order, the threads of a block concurrently.
template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Args... args) {
  if (block.y != 1 || block.z != 1 || block.x % 32 != 0) return cudaErrorInvalidValue;
  grid_dim = grid;
  block_dim = block;
  dynamic_smem.assign(smem + 16, 0);
  launch_failed = false;
  const int nthreads = static_cast<int>(block.x);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Block block_state(nthreads);
        std::vector<std::unique_ptr<Warp>> warps;
        for (int w = 0; w < nthreads / 32; ++w) warps.push_back(std::make_unique<Warp>(32));
        std::vector<std::thread> threads;
        threads.reserve(nthreads);
        for (int t = 0; t < nthreads; ++t) {
          threads.emplace_back([&, t] {
            ctx.thread = uint3{static_cast<unsigned>(t), 0, 0};
            ctx.block = uint3{bx, by, bz};
            ctx.warp = warps[t / 32].get();
            ctx.block_state = &block_state;
            ctx.phase = 0;
            kernel(args...);
            // A finished thread stops counting toward later barriers of its warp and block.
            block_state.exited[t].store(true);
            ctx.warp->bar.arrive_and_drop();
            ctx.warp->half[t % 32 / 16].arrive_and_drop();
            block_state.bar.arrive_and_drop();
          });
        }
        for (auto& th : threads) th.join();
        if (launch_failed) return cudaErrorLaunchFailure;
      }
  return cudaSuccess;
}

}  // namespace vimd_emu

#define threadIdx (vimd_emu::ctx.thread)
#define blockIdx (vimd_emu::ctx.block)
#define blockDim (vimd_emu::block_dim)
#define gridDim (vimd_emu::grid_dim)
#define VIMD_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(vimd_emu::dynamic_smem.data())

inline float __expf(float x) { return std::exp(x); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  vimd_emu::Warp& w = *vimd_emu::ctx.warp;
  if (mask == 0xffffffffu) {
    w.bar.arrive_and_wait();
  } else if (mask == 0x0000ffffu || mask == 0xffff0000u) {
    if ((mask >> (vimd_emu::lane() / 16 * 16) & 1u) == 0) std::abort();  // not this lane's half
    w.half[vimd_emu::lane() / 16].arrive_and_wait();
  } else {
    std::abort();  // the kernels sync whole warps or half warps only
  }
}
#define VIMD_EMU_STR2(x) #x
#define VIMD_EMU_STR(x) VIMD_EMU_STR2(x)
#define __syncthreads() vimd_emu::sync_block(__FILE__ ":" VIMD_EMU_STR(__LINE__))
// Shuffles within segments of `width` lanes, as on the GPU: a source outside the lane's segment
// gives the lane its own value (up/down), indices wrap inside the segment (idx, xor).
inline float __shfl_sync(unsigned, float v, int src, int width = 32) {
  const int l = vimd_emu::lane();
  return vimd_emu::exchange(v, l / width * width + src % width);
}
inline float __shfl_up_sync(unsigned, float v, int off, int width = 32) {
  const int l = vimd_emu::lane();
  return vimd_emu::exchange(v, l % width >= off ? l - off : l);
}
inline float __shfl_down_sync(unsigned, float v, int off, int width = 32) {
  const int l = vimd_emu::lane();
  return vimd_emu::exchange(v, l % width + off < width ? l + off : l);
}
inline float __shfl_xor_sync(unsigned, float v, int mask, int width = 32) {
  const int l = vimd_emu::lane();
  return vimd_emu::exchange(v, l / width * width + ((l % width) ^ mask) % width);
}
using std::min;
using std::max;

namespace vimd {
namespace cuda {
template <typename... Params, typename... Args>
inline cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                 cudaStream_t, Args... args) {
  return vimd_emu::launch(kernel, grid, block, smem, args...);
}
}  // namespace cuda
}  // namespace vimd

// The runtime calls made besides launches: raising the shared-memory limit, error strings.
extern "C" inline cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int) { return cudaSuccess; }
extern "C" inline const char* cudaGetErrorString(cudaError_t err) {
  if (err == cudaSuccess) return "no error";
  return err == cudaErrorLaunchFailure ? vimd_emu::failure : "invalid launch configuration (emulator)";
}
