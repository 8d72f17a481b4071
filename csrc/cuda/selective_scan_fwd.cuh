// Selective scan forward.
//
// One warp per (batch, channel, chunk): lanes hold kScanItems consecutive steps each, so a warp
// covers a 256-step tile; per state n the tile is scanned with a lane-sequential pass plus a
// warp-shuffle scan of affine maps, continuing from the carry of the previous tile. The states
// are looped (any N), the outputs of the tile stay in registers.
//
// Short L: one chunk per row, a single launch. Long L with few rows (batch 1 super-resolution):
// the host splits L into chunks so the grid fills the GPU and runs three phases: chunk-local end
// states (kSummary), a sequential combine of the carries, then the full pass from each chunk's
// entry state.
#pragma once

#include "scan_common.cuh"

namespace vimd {
namespace cuda {
namespace {

struct ScanCarrySmem {  // each warp's states entering the next tile
  float warp[kScanWarps][kScanMaxState];
};

// One (channel block, batch, chunk c) of one direction's scan; kReverse is p.reverse.
template <typename T, bool kSummary, bool kReverse>
__device__ __forceinline__ void scan_fwd_block(const ScanParams& p, int c) {
  float(&carry_smem)[kScanWarps][kScanMaxState] = shared_buffer<ScanCarrySmem>().warp;
  float(&stage_smem)[kScanWarps][kPadTile] = shared_buffer<ScanStageSmem>().warp;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int d = blockIdx.x * kScanWarps + warp;
  if (d >= p.dim) return;
  const int b = blockIdx.y;
  const int L = p.seqlen, N = p.dstate;
  const long long row = row_index(p, b, d);
  const T* u = static_cast<const T*>(p.u) + row * L;
  const T* delta = static_cast<const T*>(p.delta) + row * L;
  const T* z = p.z ? static_cast<const T*>(p.z) + b * p.z_batch_stride + static_cast<long long>(d) * L
                  : nullptr;
  const BCView Bv(p.B, p.b_groups, p.b_row_stride, p, b, d), Cv(p.C, p.c_groups, p.c_row_stride, p, b, d);
  const float Dd = p.D ? p.D[d] : 0.f;
  const float bias = p.delta_bias ? p.delta_bias[d] : 0.f;
  const int t_begin = c * p.chunk_len;
  const int t_end = min(L, t_begin + p.chunk_len);

  float* carry = carry_smem[warp];
  for (int n = lane; n < N; n += 32) {
    float h0 = 0.f;
    if (!kSummary) {
      if (p.n_chunks > 1) {
        h0 = p.chunk_h[(row * p.n_chunks + c) * N + n];
      } else if (p.initial_state) {
        h0 = p.initial_state[row * N + n];
      }
    }
    carry[n] = h0;
  }
  __syncwarp();

  float sum_delta = 0.f;
  for (int tile = t_begin; tile < t_end; tile += kScanTile) {
    const TileIO<kReverse> io{stage_smem[warp], tile, t_end, L, lane};
    // duv = delta * u (hoisted out of the state loop); y starts from the skip term D * u.
    float duv[kScanItems], dv[kScanItems], y[kScanItems];
    io.load(u, duv);
    io.load(delta, dv);
    prepare_delta(dv, io.t(), t_end, bias, p.delta_softplus);
    float lane_dt = 0.f;  // sum of the lane's steps' delta
#pragma unroll
    for (int i = 0; i < kScanItems; ++i) {
      lane_dt += dv[i];
      y[i] = Dd * duv[i];
      duv[i] *= dv[i];
    }
    sum_delta += lane_dt;
    BCView Bn = Bv, Cn = Cv;  // walk the states from n = 0
    for (int n = 0; n < N; ++n) {
      const float a2 = p.A[d * N + n] * kLog2e;
      float bv[kScanItems], dA[kScanItems], dBu[kScanItems];
      Bn.next(io, bv);
      float la = exp2f(lane_dt * a2), lb = 0.f;  // the lane's map h -> la * h + lb
#pragma unroll
      for (int i = 0; i < kScanItems; ++i) {
        dA[i] = exp2f(dv[i] * a2);
        dBu[i] = duv[i] * bv[i];
        lb = fmaf(dA[i], lb, dBu[i]);
      }
      warp_scan_affine_up(la, lb, lane);
      const float h_in = carry[n];
      if (!kSummary) {
        float cv[kScanItems];
        Cn.next(io, cv);
        float ea = __shfl_up_sync(kFullMask, la, 1), eb = __shfl_up_sync(kFullMask, lb, 1);
        if (lane == 0) ea = 1.f, eb = 0.f;
        float h = fmaf(ea, h_in, eb);
#pragma unroll
        for (int i = 0; i < kScanItems; ++i) {
          h = fmaf(dA[i], h, dBu[i]);
          y[i] = fmaf(h, cv[i], y[i]);
        }
      }
      const float h_out = __shfl_sync(kFullMask, fmaf(la, h_in, lb), 31);
      __syncwarp();
      if (lane == 0) carry[n] = h_out;
      __syncwarp();
    }
    if (!kSummary) {
      float zv[kScanItems];
      if (z) io.load(z, zv);
#pragma unroll
      for (int i = 0; i < kScanItems; ++i) {
        float o = y[i];
        if (z) o *= zv[i] * sigmoidf(zv[i]);
        y[i] = o;
      }
      io.store(static_cast<T*>(p.out) + row * L, y);
    }
  }

  if (kSummary) {
    for (int n = lane; n < N; n += 32) p.chunk_h[(row * p.n_chunks + c) * N + n] = carry[n];
    sum_delta = warp_sum(sum_delta);
    if (lane == 0) p.chunk_sum_delta[row * p.n_chunks + c] = sum_delta;
  } else if (c == p.n_chunks - 1) {
    for (int n = lane; n < N; n += 32) p.last_state[row * N + n] = carry[n];
  }
}

template <typename T, bool kSummary>
__global__ __launch_bounds__(kScanWarps * 32, 4) void scan_fwd_kernel(ScanParams p) {
  if (p.reverse) {
    scan_fwd_block<T, kSummary, true>(p, blockIdx.z);
  } else {
    scan_fwd_block<T, kSummary, false>(p, blockIdx.z);
  }
}

// Both directions: grid.z = 2 * n_chunks, direction-major; direction 1 is the reversed one.
template <typename T, bool kSummary>
__global__ __launch_bounds__(kScanWarps * 32, 4) void scan_fwd_bi_kernel(BiScanParams bp) {
  const int n_chunks = bp.dir[0].n_chunks;
  const int dir = blockIdx.z >= n_chunks;
  // Two call sites with constant indices: the body reads its parameters at fixed offsets
  // (a runtime index into the parameter struct costs registers).
  if (dir == 0) {
    scan_fwd_block<T, kSummary, false>(bp.dir[0], blockIdx.z);
  } else {
    scan_fwd_block<T, kSummary, true>(bp.dir[1], blockIdx.z - n_chunks);
  }
}

}  // namespace

template <typename T>
cudaError_t selective_scan_bi_fwd_launch(const BiScanParams& bp, cudaStream_t stream) {
  const ScanParams& p = bp.dir[0];
  const dim3 grid(ceil_div(p.dim, kScanWarps), p.batch, 2 * p.n_chunks);
  const dim3 block(kScanWarps * 32);
  if (p.n_chunks > 1) {
    cudaError_t err = launch_kernel(scan_fwd_bi_kernel<T, true>, grid, block, 0, stream, bp);
    if (err != cudaSuccess) return err;
    for (const ScanParams& q : bp.dir) {
      if ((err = scan_combine(q, /*adjoint=*/false, stream)) != cudaSuccess) return err;
    }
  }
  return launch_kernel(scan_fwd_bi_kernel<T, false>, grid, block, 0, stream, bp);
}

template <typename T>
cudaError_t selective_scan_fwd_launch(const ScanParams& p, cudaStream_t stream) {
  const dim3 grid(ceil_div(p.dim, kScanWarps), p.batch, p.n_chunks);
  const dim3 block(kScanWarps * 32);
  if (p.n_chunks > 1) {
    cudaError_t err = launch_kernel(scan_fwd_kernel<T, true>, grid, block, 0, stream, p);
    if (err != cudaSuccess) return err;
    err = scan_combine(p, /*adjoint=*/false, stream);
    if (err != cudaSuccess) return err;
  }
  return launch_kernel(scan_fwd_kernel<T, false>, grid, block, 0, stream, p);
}

}  // namespace cuda
}  // namespace vimd
