// Selective scan forward: one thread per (batch, channel) row.
//
// A thread walks its row's steps in order and holds the row's states in registers (a group of
// kFwdStateGroup; larger N cycles the groups through shared memory). A step then costs, per
// state, one multiply and one exp2 for the decay, a multiply and an FMA for the state and an FMA
// for the output: no cross-lane scans and no per-state reloads, so the kernel is bound by the
// exp2 throughput rather than by instruction issue (the lanes-over-time layout the backward uses
// spends most of its issue slots on the lane scans and per-state loads).
//
// A block's kFwdRows rows lie in one segment of the B/C groups, so they read the same B and C:
// kFwdSteps steps of them are staged in shared memory per iteration, fetched one iteration ahead,
// and read as broadcast float4s. Each warp loads and stores its 32 rows through a small
// shared-memory transpose, so the global accesses are coalesced whatever the rows' alignment.
//
// Long L with few rows (batch-1 super-resolution): the host splits L into chunks so the grid
// fills the GPU and runs three phases: chunk-local end states (kSummary), a sequential combine of
// the carries (scan_combine), then the full pass from each chunk's entry state.
#pragma once

#include <numeric>

#include "scan_common.cuh"

namespace vimd {
namespace cuda {
namespace {

constexpr int kFwdWarps = kFwdRows / 32;
constexpr int kFwdBCPad = kScanMaxState + 4;     // B/C step row stride: the staging writes hit distinct banks
static_assert(kFwdRows % 32 == 0, "whole warps of rows");
static_assert(kScanMaxState % kFwdStateGroup == 0 && kFwdStateGroup % 4 == 0, "state groups of float4s");

struct ScanFwdSmem {
  float bc[2][2][kFwdSteps][kFwdBCPad];     // [buffer][B, C][step][state]: the block's staged B/C
  float rows[kFwdWarps][4][32 * kFwdPad];  // each warp's rows' steps: du, dt, y, z (RowSteps slots)
};

// One (channel block, batch, chunk c) of one direction's scan; kReverse is p.reverse, kBCGrouped
// says B and C are both grouped (see with_bc_layout).
template <typename T, bool kSummary, bool kReverse, bool kBCGrouped>
__device__ __forceinline__ void scan_fwd_rows(const ScanParams& p, int c) {
  ScanFwdSmem& smem = shared_buffer<ScanFwdSmem>();
  VIMD_DYNAMIC_SMEM(float, h_spill);  // (N, kFwdRows) states when N > kFwdStateGroup
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int b = blockIdx.y;
  const int L = p.seqlen, N = p.dstate;
  const int blocks_per_seg = (p.seg_channels + kFwdRows - 1) / kFwdRows;
  const int seg = blockIdx.x / blocks_per_seg;
  const int d_first = seg * p.seg_channels + (blockIdx.x % blocks_per_seg) * kFwdRows;
  const int d_end = min((seg + 1) * p.seg_channels, d_first + kFwdRows);
  const int d0 = d_first + warp * 32;  // the warp's first row
  const int warp_rows = max(0, min(32, d_end - d0));
  const bool active = lane < warp_rows;  // idle threads still stage B/C and meet the barriers
  const int d = active ? d0 + lane : d_first;
  const long long row = row_index(p, b, d);
  const int t_begin = c * p.chunk_len;
  const int t_end = min(L, t_begin + p.chunk_len);

  const bool b_grouped = kBCGrouped || p.b_groups > 0, c_grouped = kBCGrouped || p.c_groups > 0;
  const BCRows Bg(p.B, b_grouped, p.b_groups, p.b_row_stride, p, b, d_first);
  const BCRows Cg(p.C, c_grouped, p.c_groups, p.c_row_stride, p, b, d_first);
  const int n_pad = (N + kFwdStateGroup - 1) / kFwdStateGroup * kFwdStateGroup;

  const BCSteps<kFwdRows, kReverse> bc{Bg, Cg, b_grouped, !kSummary && c_grouped, N, L, t_end};
  constexpr int kStage = BCSteps<kFwdRows, kReverse>::kPer;
  auto fetch = [&](int tile, float (&vb)[kStage], float (&vc)[kStage]) { bc.fetch(tid, tile, vb, vc); };
  auto put = [&](int buf, const float (&vb)[kStage], const float (&vc)[kStage]) {
    bc.put(tid, n_pad, kFwdBCPad, &smem.bc[buf][0][0][0], &smem.bc[buf][1][0][0], vb, vc);
  };

  // The thread's state group g: decays (A log2 e) and, for constant B/C, the values.
  const int n_groups = n_pad / kFwdStateGroup;
  const bool spill = n_groups > 1;
  float h[kFwdStateGroup], a2[kFwdStateGroup], b_const[kFwdStateGroup], c_const[kFwdStateGroup];
  auto load_group = [&](int g) {
#pragma unroll
    for (int k = 0; k < kFwdStateGroup; ++k) {
      const int n = g * kFwdStateGroup + k;
      a2[k] = n < N ? p.A[d * N + n] * kLog2e : 0.f;
      b_const[k] = (!b_grouped && n < N) ? p.B[d * N + n] : 0.f;
      c_const[k] = (!c_grouped && n < N) ? p.C[d * N + n] : 0.f;
    }
  };
  auto entry_state = [&](int n) -> float {
    if (kSummary || n >= N) return 0.f;
    if (p.n_chunks > 1) return p.chunk_h[(row * p.n_chunks + c) * N + n];
    return p.initial_state ? p.initial_state[row * N + n] : 0.f;
  };
  if (spill) {
    for (int n = 0; n < n_pad; ++n) h_spill[n * kFwdRows + tid] = entry_state(n);
  } else {
    load_group(0);
#pragma unroll
    for (int k = 0; k < kFwdStateGroup; ++k) h[k] = entry_state(k);
  }

  const long long src = row_index(p, b, d0);
  const T* u = static_cast<const T*>(p.u) + src * L;
  const T* delta = static_cast<const T*>(p.delta) + src * L;
  const T* z = p.z ? static_cast<const T*>(p.z) + (b * p.z_batch_stride + static_cast<long long>(d0) * L)
                   : nullptr;
  const float Dd = p.D ? p.D[d] : 0.f;
  const float bias = p.delta_bias ? p.delta_bias[d] : 0.f;

  float* s_du = smem.rows[warp][0];  // the warp's rows' steps: delta * u, delta, y
  float* s_dt = smem.rows[warp][1];
  float* s_y = smem.rows[warp][2];
  float* s_z = smem.rows[warp][3];
  const bool gate = !kSummary && z != nullptr;
  // Software pipeline: a tile's B/C and its rows' u, delta (and z) are fetched during the tile
  // before, into registers, and moved to shared memory when their tile starts.
  float vb[kStage], vc[kStage];
  T pu[kFwdSteps], pd[kFwdSteps], pz[kFwdSteps];
  fetch(t_begin, vb, vc);
  {
    const RowSteps<kReverse> first{t_begin, t_end, L, lane, warp_rows};
    first.fetch(u, L, pu);
    first.fetch(delta, L, pd);
    if (gate) first.fetch(z, L, pz);
  }
  float sum_delta = 0.f;
  int buf = 0;
  for (int tile = t_begin; tile < t_end; tile += kFwdSteps, buf ^= 1) {
    put(buf, vb, vc);
    const RowSteps<kReverse> io{tile, t_end, L, lane, warp_rows};
    __syncwarp();  // every lane is done with the warp buffers' previous contents
    io.put(pu, s_du);
    io.put(pd, s_dt);
    if (gate) io.put(pz, s_z);
    __syncwarp();
    if (tile + kFwdSteps < t_end) {  // the next tile's loads, in flight during this one
      fetch(tile + kFwdSteps, vb, vc);
      const RowSteps<kReverse> ahead{tile + kFwdSteps, t_end, L, lane, warp_rows};
      ahead.fetch(u, L, pu);
      ahead.fetch(delta, L, pd);
      if (gate) ahead.fetch(z, L, pz);
    }
    {  // per lane, its own slots: delta after bias/softplus, delta * u, y from the skip term D * u
      float uv[kFwdSteps], dv[kFwdSteps];
#pragma unroll
      for (int i = 0; i < kFwdSteps; ++i) uv[i] = s_du[io.slot(i)], dv[i] = s_dt[io.slot(i)];
      prepare_delta(dv, tile, t_end, bias, p.delta_softplus);  // padded steps: zero, an identity
#pragma unroll
      for (int i = 0; i < kFwdSteps; ++i) {
        sum_delta += dv[i];
        s_y[io.slot(i)] = Dd * uv[i];
        s_du[io.slot(i)] = dv[i] * uv[i];
        s_dt[io.slot(i)] = dv[i];
      }
    }
    __syncthreads();  // this block's B/C are staged (and the buffer staged next was read by all)
    for (int g = 0; g < n_groups; ++g) {
      if (spill) {
        load_group(g);
#pragma unroll
        for (int k = 0; k < kFwdStateGroup; ++k) h[k] = h_spill[(g * kFwdStateGroup + k) * kFwdRows + tid];
      }
      // Steps in order, states unrolled: the kFwdStateGroup state chains are independent. The step
      // loop stays rolled (an unrolled one hoists every step's exp2 and runs out of registers).
#pragma unroll 1
      for (int i = 0; i < kFwdSteps; ++i) {
        const float dt = s_dt[io.slot(i)], du = s_du[io.slot(i)];
        const float* Bs = &smem.bc[buf][0][i][g * kFwdStateGroup];
        const float* Cs = &smem.bc[buf][1][i][g * kFwdStateGroup];
        // four partial sums of the output: a chain of kFwdStateGroup / 4 FMAs each instead of one
        // of kFwdStateGroup, which with few warps per SM would be the step's latency
        float yq[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int q = 0; q < kFwdStateGroup / 4; ++q) {
          const float4 bq = b_grouped ? vec_at<const float4>(Bs)[q]
                                      : make_float4(b_const[4 * q], b_const[4 * q + 1], b_const[4 * q + 2],
                                                    b_const[4 * q + 3]);
          const float bs[4] = {bq.x, bq.y, bq.z, bq.w};
          float cs[4] = {0.f, 0.f, 0.f, 0.f};
          if (!kSummary) {
            const float4 cq = c_grouped ? vec_at<const float4>(Cs)[q]
                                        : make_float4(c_const[4 * q], c_const[4 * q + 1], c_const[4 * q + 2],
                                                      c_const[4 * q + 3]);
            cs[0] = cq.x, cs[1] = cq.y, cs[2] = cq.z, cs[3] = cq.w;
          }
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const int k = 4 * q + j;
            h[k] = fmaf(decay_exp2(dt * a2[k]), h[k], du * bs[j]);
            if (!kSummary) yq[j] = fmaf(h[k], cs[j], yq[j]);
          }
        }
        if (!kSummary) s_y[io.slot(i)] += (yq[0] + yq[1]) + (yq[2] + yq[3]);
      }
      if (spill) {
#pragma unroll
        for (int k = 0; k < kFwdStateGroup; ++k) h_spill[(g * kFwdStateGroup + k) * kFwdRows + tid] = h[k];
      }
    }
    if (!kSummary) {
      float y[kFwdSteps];
#pragma unroll
      for (int i = 0; i < kFwdSteps; ++i) y[i] = s_y[io.slot(i)];
      if (gate) {
#pragma unroll
        for (int i = 0; i < kFwdSteps; ++i) {
          const float zv = s_z[io.slot(i)];
          y[i] *= zv * sigmoidf(zv);
        }
      }
      io.store(static_cast<T*>(p.out) + row_index(p, b, d0) * L, L, y, s_dt);
    }
  }

  if (!active) return;
  float* out_state = nullptr;  // the chunk's local end state, or the row's last state
  if (kSummary) {
    out_state = p.chunk_h + (row * p.n_chunks + c) * N;
    p.chunk_sum_delta[row * p.n_chunks + c] = sum_delta;
  } else if (c == p.n_chunks - 1) {
    out_state = p.last_state + row * N;
  }
  if (out_state == nullptr) return;
  if (spill) {
    for (int n = 0; n < N; ++n) out_state[n] = h_spill[n * kFwdRows + tid];
  } else {
#pragma unroll
    for (int k = 0; k < kFwdStateGroup; ++k) {  // constant indices: h stays in registers
      if (k < N) out_state[k] = h[k];
    }
  }
}

// Blocks per multiprocessor the registers are budgeted for (__launch_bounds__, layout.h).
constexpr int fwd_min_blocks(bool bc_grouped) { return bc_grouped ? kFwdBlocks : kFwdBlocksConstBC; }

template <typename T, bool kSummary, bool kBCGrouped>
__global__ __launch_bounds__(kFwdRows, fwd_min_blocks(kBCGrouped)) void scan_fwd_kernel(ScanParams p) {
  if (p.reverse) {
    scan_fwd_rows<T, kSummary, true, kBCGrouped>(p, scan_chunk_z<kSummary>());
  } else {
    scan_fwd_rows<T, kSummary, false, kBCGrouped>(p, scan_chunk_z<kSummary>());
  }
}

// Both directions: grid.z = 2 * n_chunks, direction-major; direction 1 is the reversed one.
template <typename T, bool kSummary, bool kBCGrouped>
__global__ __launch_bounds__(kFwdRows, fwd_min_blocks(kBCGrouped)) void scan_fwd_bi_kernel(BiScanParams bp) {
  const int n_chunks = bp.dir[0].n_chunks;
  const int z = scan_chunk_z<kSummary>();
  // Two call sites with constant indices: the body reads its parameters at fixed offsets
  // (a runtime index into the parameter struct costs registers).
  if (z < n_chunks) {
    scan_fwd_rows<T, kSummary, false, kBCGrouped>(bp.dir[0], z);
  } else {
    scan_fwd_rows<T, kSummary, true, kBCGrouped>(bp.dir[1], z - n_chunks);
  }
}

// Channels per block segment: a run inside one group of every grouped B/C (the gcd of their
// group sizes), so that a block's rows share B and C.
inline int fwd_seg_channels(const ScanParams& p) {
  int seg = 0;
  for (int G : {p.b_groups, p.c_groups}) {
    if (G > 0) seg = std::gcd(seg, p.dim / G);
  }
  return seg > 0 ? seg : p.dim;
}

inline dim3 fwd_grid(const ScanParams& p, int directions) {
  const int seg = fwd_seg_channels(p);
  return dim3(static_cast<unsigned>((p.dim / seg) * ceil_div(seg, kFwdRows)), p.batch, directions * p.n_chunks);
}

inline size_t fwd_smem(const ScanParams& p) {
  return p.dstate > kFwdStateGroup ? sizeof(float) * kFwdRows * ceil_div(p.dstate, kFwdStateGroup) *
                                         kFwdStateGroup
                                   : 0;
}

// The forward's phases, for one direction (args: ScanParams) or both (BiScanParams): with
// several chunks the summary kernel, each direction's carry combine, then the main kernel.
// kernels(summary, grouped) gives the kernel for those compile-time flags.
template <typename Args, typename Kernels>
inline cudaError_t launch_fwd_phases(const Args& args, const ScanParams* dirs, int n_dirs, Kernels kernels,
                                     cudaStream_t stream) {
  const ScanParams& p = dirs[0];  // every direction has the same sizes and B/C layout
  const dim3 grid = fwd_grid(p, n_dirs), block(kFwdRows);
  const size_t smem = fwd_smem(p);
  return with_bc_layout(p, [&](auto grouped) {
    const auto main = kernels(std::false_type{}, grouped);
    const auto summary = kernels(std::true_type{}, grouped);
    cudaError_t err;
    if ((err = allow_dynamic_smem(main, smem)) != cudaSuccess) return err;
    if (p.n_chunks > 1) {
      if ((err = allow_dynamic_smem(summary, smem)) != cudaSuccess) return err;
      if ((err = launch_kernel(summary, grid, block, smem, stream, args)) != cudaSuccess) return err;
      for (int s = 0; s < n_dirs; ++s) {
        if ((err = scan_combine(dirs[s], /*adjoint=*/false, stream)) != cudaSuccess) return err;
      }
    }
    return launch_kernel(main, grid, block, smem, stream, args);
  });
}

}  // namespace

template <typename T>
cudaError_t selective_scan_bi_fwd_launch(const BiScanParams& bp_in, cudaStream_t stream) {
  BiScanParams bp = bp_in;
  for (ScanParams& q : bp.dir) q.seg_channels = fwd_seg_channels(q);
  return launch_fwd_phases(bp, bp.dir, 2, [](auto summary, auto grouped) {
    return scan_fwd_bi_kernel<T, decltype(summary)::value, decltype(grouped)::value>;
  }, stream);
}

template <typename T>
cudaError_t selective_scan_fwd_launch(const ScanParams& p_in, cudaStream_t stream) {
  ScanParams p = p_in;
  p.seg_channels = fwd_seg_channels(p);
  return launch_fwd_phases(p, &p, 1, [](auto summary, auto grouped) {
    return scan_fwd_kernel<T, decltype(summary)::value, decltype(grouped)::value>;
  }, stream);
}

}  // namespace cuda
}  // namespace vimd
