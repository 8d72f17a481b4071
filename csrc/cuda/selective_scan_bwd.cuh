// Selective scan backward: recompute, never store (batch, dim, L, N).
//
// With g_t = dL/dh_t, the adjoint runs backwards in time: g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1},
// starting from dlast_state. Per 256-step tile and state n the kScanLanes lanes of a row (half a
// warp: each lane owns kScanItems = 16 steps, so the lane scans have 4 levels for 16 steps)
// recompute h (forward lane scan, from the state entering the tile) and g (backward lane scan,
// from the adjoint entering at the tile's end), keeping h_{t-1} of their steps in registers, and
// accumulate every gradient. Both rows of a warp always run the same instructions (a row past the
// block's channels recomputes the block's first row and writes nothing), as the shuffles need.
//
// The backward chunk is one tile. With several tiles, either (few rows, long L) a summary pass
// computes each tile's local end state and local adjoint, a sequential combine turns them into
// entry values (the forward chunks' machinery) and the main pass runs all tiles in parallel; or
// (p.row_walk: the rows alone fill the GPU) each block first sweeps its rows' states forward
// through the tiles (h entering each tile into chunk_h), then runs the main pass over its tiles
// last to first, handing the adjoint at each tile's start to the tile before through chunk_q.
//
// Determinism: gradients of weights shared across rows (A, D, delta_bias, constant B/C) are
// written as per-(batch, tile) partials; grouped dB/dC are summed over a block's channels in
// shared memory in a fixed order and written per block; ordered reductions finish them. No atomics.
#pragma once

#include "reduce.cuh"
#include "scan_common.cuh"

namespace vimd {
namespace cuda {
namespace {

// Per-row loads shared by the summary and main passes.
template <typename T>
struct RowInputs {
  float u[kScanItems], delta[kScanItems], dy[kScanItems];
  float dt_sum;  // sum of the lane's steps' delta (after bias and softplus)

  // zgrad (optional): dout * silu'(z), so that dz = zgrad * y once y is known; stored item-major
  // (step lane * kScanItems + i at i * kScanLanes + lane) in the row's shared-memory slots, so it
  // holds no registers through the state loop.
  template <typename IO>
  __device__ __forceinline__ void load(const ScanParams& p, const IO& io, int b, long long row, int d,
                                       float* zgrad) {
    const int L = p.seqlen;
    // Every tensor's global loads first, so their latencies overlap.
    const T* zrow = p.z ? static_cast<const T*>(p.z) + (b * p.z_batch_stride + static_cast<long long>(d) * L)
                        : nullptr;
    ItemWords<T> wu, wd, wy, wz;
    const bool al_u = io.fetch(static_cast<const T*>(p.u) + row * L, wu);
    const bool al_d = io.fetch(static_cast<const T*>(p.delta) + row * L, wd);
    const bool al_y = io.fetch(static_cast<const T*>(p.dout) + row * L, wy);
    bool al_z = false;
    if (zrow) al_z = io.fetch(zrow, wz);
    io.put(al_u, wu, u);
    io.put(al_d, wd, delta);
    prepare_delta(delta, io.t(), io.t_end, p.delta_bias ? p.delta_bias[d] : 0.f, p.delta_softplus);
    dt_sum = 0.f;
#pragma unroll
    for (int i = 0; i < kScanItems; ++i) dt_sum += delta[i];
    io.put(al_y, wy, dy);
    if (p.z) {
      float zv[kScanItems];
      io.put(al_z, wz, zv);
#pragma unroll
      for (int i = 0; i < kScanItems; ++i) {
        const float s = sigmoidf(zv[i]);
        if (zgrad) zgrad[i * kScanLanes + io.lane] = dy[i] * s * (1.f + zv[i] * (1.f - s));
        dy[i] *= zv[i] * s;
      }
    } else if (zgrad) {
#pragma unroll
      for (int i = 0; i < kScanItems; ++i) zgrad[i * kScanLanes + io.lane] = 0.f;
    }
  }
};

// Phase 1 (several tiles only): tile-local end state (from h = 0), tile-local adjoint leaving
// the tile's start (from g = 0 at its end), and sum of delta, per (batch, channel, tile, state).
template <typename T, bool kReverse, bool kBCGrouped>
__device__ __forceinline__ void scan_bwd_summary_block(const ScanParams& p, int c) {
  const RowLane rl;
  const int lane = rl.lane;
  const int d_first = blockIdx.x * kScanRows;
  const bool active = d_first + rl.slot < p.dim;  // an idle row recomputes row d_first, writes nothing
  const int d = active ? d_first + rl.slot : d_first;
  const int b = blockIdx.y;
  const int N = p.dstate;
  const long long row = row_index(p, b, d);
  float(&stage_smem)[kScanRows][kPadTile] = shared_buffer<ScanStageSmem>().row;
  const TileIO<kReverse> io{stage_smem[rl.slot], c * kScanTile, min(p.seqlen, (c + 1) * kScanTile), p.seqlen,
                            lane, rl.mask};
  RowInputs<T> in;
  in.load(p, io, b, row, d, nullptr);
#pragma unroll
  for (int i = 0; i < kScanItems; ++i) in.u[i] *= in.delta[i];  // delta u, shared by the states
  BCView Bv = b_view<kBCGrouped>(p, b, d), Cv = c_view<kBCGrouped>(p, b, d);
  // each state's B and C are loaded during the state before (in flight over its scans)
  float b_next[kScanItems], c_next[kScanItems];
  Bv.next(io, b_next);
  Cv.next(io, c_next);
  for (int n = 0; n < N; ++n) {
    const float a2 = p.A[d * N + n] * kLog2e;
    float bv[kScanItems], cv[kScanItems], dA[kScanItems];
#pragma unroll
    for (int i = 0; i < kScanItems; ++i) bv[i] = b_next[i], cv[i] = c_next[i];
    if (n + 1 < N) {
      Bv.next(io, b_next);
      Cv.next(io, c_next);
    }
    float ha = decay_exp2(in.dt_sum * a2), hb = 0.f;
#pragma unroll
    for (int i = 0; i < kScanItems; ++i) {
      dA[i] = decay_exp2(in.delta[i] * a2);
      hb = fmaf(dA[i], hb, in.u[i] * bv[i]);
    }
    float qa = ha, qb = 0.f;
#pragma unroll
    for (int i = kScanItems - 1; i >= 0; --i) qb = dA[i] * fmaf(cv[i], in.dy[i], qb);
    warp_scan_affine_up_down<kScanLanes>(ha, hb, qa, qb, lane);
    const long long idx = (row * p.n_chunks + c) * N + n;
    if (active && lane == kScanLanes - 1) p.chunk_h[idx] = hb;
    if (active && lane == 0) p.chunk_q[idx] = qb;
  }
  const float s = warp_sum<kScanLanes>(in.dt_sum);
  if (active && lane == 0) p.chunk_sum_delta[row * p.n_chunks + c] = s;
}

struct ScanBwdSmem {
  float zgrad[kScanRows][kScanTile];  // each row's dout * silu'(z), item-major
};

// Grouped B/C in the main pass: every row of a block reads the same (batch, group) rows, so each
// state's tile of B and C is staged in shared memory once per block, fetched one state ahead:
// thread k loads one float4's worth of the next state's B or C (4 registers) while the current
// state is computed and stores it before the state's barrier. A row's lanes then read their steps
// as shared-memory float4s instead of each row and lane issuing global loads whose latency every
// state paid in full. Lane l's float4 k (steps l * kScanItems + 4k ...) sits at slot
// l * kChunks + (k ^ swizzle(l)), so the 8 lanes of a 128-bit access phase hit distinct banks (the
// two rows of a warp read the same slots: broadcasts). The tiles live in the rows' staging buffer
// (TileIO), which is idle between a row group's input loads and its output stores.
struct BCStageSmem {
  float4 v[2][2][kScanTile / 4];  // [buffer][B, C][slot]
};
static_assert(sizeof(BCStageSmem) <= sizeof(ScanStageSmem), "the B/C tiles fit the rows' staging buffer");

template <bool kReverse>
struct BCTileStage {
  static constexpr int kChunks = kScanItems / 4;  // float4s per lane
  static_assert(kScanWarps * 32 * 4 == 2 * kScanTile, "one float4 of the B/C tile per thread");
  const float* row;  // state 0's row of this thread's operand (B for the first half of the block)
  long long step;    // to the next state's row
  bool staged;       // the operand is grouped (a constant one is read from registers, not staged)
  int which, k4;     // the operand and the float4 (logical steps 4 k4 ..) this thread moves

  __device__ __forceinline__ static int slot(int lane, int k) {
    return lane * kChunks + (k ^ ((lane / (8 / kChunks)) % kChunks));
  }

  // The thread's four steps of state n (zero past t_end: padding may hold anything).
  __device__ __forceinline__ float4 fetch(int n, int tile, int t_end, int L) const {
    float v[4] = {0.f, 0.f, 0.f, 0.f};
    if (staged) {
      const float* r = row + n * step;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int ti = tile + 4 * k4 + j;
        if (ti < t_end) v[j] = r[kReverse ? L - 1 - ti : ti];
      }
    }
    return make_float4(v[0], v[1], v[2], v[3]);
  }

  __device__ __forceinline__ void put(BCStageSmem& s, int buf, float4 v) const {
    if (staged) s.v[buf][which][slot(k4 / kChunks, k4 % kChunks)] = v;
  }

  // A lane's kScanItems steps of operand w (0: B, 1: C) of the state in buffer buf.
  __device__ __forceinline__ static void read(const BCStageSmem& s, int buf, int w, int lane,
                                              float (&v)[kScanItems]) {
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const float4 q = s.v[buf][w][slot(lane, k)];
      v[4 * k] = q.x, v[4 * k + 1] = q.y, v[4 * k + 2] = q.z, v[4 * k + 3] = q.w;
    }
  }
};

// The per-state dB/dC of every row, summed over the rows after each state, are double-buffered
// over the states (one barrier per state) when the dynamic shared memory leaves room for it on
// every target (sm_80 takes 163 KB per block): N <= 32.
__host__ __device__ inline int bwd_red_buffers(int N) { return N <= 32 ? 2 : 1; }

// Phase 3: all gradients. Block = (channel slab inside one B/C group segment, batch, tile).
template <typename T, bool kReverse, bool kBCGrouped>
__device__ __forceinline__ void scan_bwd_block(const ScanParams& p, int c) {
  const int L = p.seqlen, N = p.dstate;
  // Dynamic shared memory when B or C is grouped: acc (2, N, kScanTile), the tile's per-step
  // dB/dC sums over the block's rows; then red (buffers, kScanRows, 2, kScanTile), one state's
  // per-row values. Both item-major (step lane * kScanItems + i at i * kScanLanes + lane), so a
  // row storing its item i is conflict-free and the cross-row sums read whole float4s.
  VIMD_DYNAMIC_SMEM(float, acc);
  float* red = acc + 2 * N * kScanTile;
  const int red_buffers = bwd_red_buffers(N);
  auto red_slot = [&](int buf, int r, int which) { return red + ((buf * kScanRows + r) * 2 + which) * kScanTile; };
  float(&zgrad_smem)[kScanRows][kScanTile] = shared_buffer<ScanBwdSmem>().zgrad;
  float(&stage_smem)[kScanRows][kPadTile] = shared_buffer<ScanStageSmem>().row;
  const RowLane rl;
  const int lane = rl.lane;
  const int b = blockIdx.y;
  const bool b_grouped = kBCGrouped || p.b_groups > 0, c_grouped = kBCGrouped || p.c_groups > 0;
  const bool grouped = b_grouped || c_grouped;
  const int seg = blockIdx.x / p.slabs_per_seg, slab = blockIdx.x % p.slabs_per_seg;
  const int d_begin = seg * p.seg_channels + slab * p.slab_channels;
  const int d_end = min((seg + 1) * p.seg_channels, d_begin + p.slab_channels);
  const int tile = c * kScanTile;
  const int t_end = min(L, tile + kScanTile);
  const TileIO<kReverse> io{stage_smem[rl.slot], tile, t_end, L, lane, rl.mask};
  const int J = p.batch * p.n_chunks;
  const long long j = static_cast<long long>(b) * p.n_chunks + c;

  // grouped B/C: the block's rows share them (one group segment, one batch element): staged
  BCStageSmem& bc_smem = *reinterpret_cast<BCStageSmem*>(&shared_buffer<ScanStageSmem>());
  BCTileStage<kReverse> bc_stage;
  {
    bc_stage.which = threadIdx.x / (kScanTile / 4);
    bc_stage.k4 = threadIdx.x % (kScanTile / 4);
    const BCView v = bc_stage.which == 0 ? b_view<kBCGrouped>(p, b, d_begin) : c_view<kBCGrouped>(p, b, d_begin);
    bc_stage.row = v.row;
    bc_stage.step = v.step;
    bc_stage.staged = bc_stage.which == 0 ? b_grouped : c_grouped;
  }

  int buf = 0;  // red buffer of the current state
  if (p.row_walk) __syncthreads();  // the previous tile's acc reads and chunk_q writes are done
  if (grouped) {
    for (int i = threadIdx.x; i < 2 * N * kScanTile; i += blockDim.x) acc[i] = 0.f;
    __syncthreads();
  }

  for (int d0 = d_begin; d0 < d_end; d0 += kScanRows) {
    // Both rows of a warp run every instruction below (the lane scans shuffle across the whole
    // warp); a row past d_end recomputes row d_begin and its writes are skipped or zeroed.
    const bool active = d0 + rl.slot < d_end;
    const int d = active ? d0 + rl.slot : d_begin;
    const long long row = row_index(p, b, d);
    RowInputs<T> in;
    // Over the states: y; gb = sum_n g B (du = delta gb, and the B part of ddelta is u gb);
    // dda = sum_n A g exp(delta A) h_{t-1} (the A part of ddelta).
    float y[kScanItems], gb[kScanItems], dda[kScanItems];
    float* zgrad = zgrad_smem[rl.slot];
    in.load(p, io, b, row, d, zgrad);
#pragma unroll
    for (int i = 0; i < kScanItems; ++i) {
      y[i] = gb[i] = dda[i] = 0.f;
      // an idle row's dout is zero (and so is its adjoint, q_in below): its dB/dC come out zero
      // with no selects in the state loop
      if (!active) in.dy[i] = 0.f;
    }
    float dA_prev = 0.f;  // the previous state's dA partial of this lane
    BCView Bv = b_view<kBCGrouped>(p, b, d), Cv = c_view<kBCGrouped>(p, b, d);  // constant ones
    if (grouped) {  // state 0's B/C tile, once every row is done with its staging buffer
      const float4 first = bc_stage.fetch(0, tile, t_end, L);
      __syncthreads();
      bc_stage.put(bc_smem, 0, first);
      __syncthreads();
    }

    for (int n = 0; n < N; ++n) {
      const int bc_buf = n & 1;
      float4 bc_next = make_float4(0.f, 0.f, 0.f, 0.f);
      if (grouped && n + 1 < N) bc_next = bc_stage.fetch(n + 1, tile, t_end, L);  // in flight over the state
      // This state's per-step dB / dC: grouped ones go straight to the row's slots of red (no
      // registers held for them), constant ones are summed over the steps.
      float* red_b = red_slot(buf, rl.slot, 0);
      float* red_c = red_slot(buf, rl.slot, 1);
      const float a = p.A[d * N + n], a2 = a * kLog2e;
      const long long sidx = (row * p.n_chunks + c) * N + n;
      float h_in = 0.f, q_in = 0.f;
      if (p.n_chunks > 1) {
        h_in = p.chunk_h[sidx];
        q_in = p.chunk_q[sidx];
      } else {
        if (p.initial_state) h_in = p.initial_state[row * N + n];
        if (p.dlast_state) q_in = p.dlast_state[row * N + n];
      }
      if (!active) q_in = 0.f;
      float bv[kScanItems], cv[kScanItems], dA[kScanItems], dBu[kScanItems], hp[kScanItems];
      if (b_grouped) {
        BCTileStage<kReverse>::read(bc_smem, bc_buf, 0, lane, bv);
      } else {
        Bv.next(io, bv);
      }
      if (c_grouped) {
        BCTileStage<kReverse>::read(bc_smem, bc_buf, 1, lane, cv);
      } else {
        Cv.next(io, cv);
      }
      // The lane's maps over its steps, forward for h and backward for the adjoint g, then both
      // lane scans at once (independent shuffle chains, so their latencies overlap). The lane's
      // decay over its steps is one exp2 of their summed delta (for both).
      const float lane_a = decay_exp2(in.dt_sum * a2);
      float la = lane_a, lb = 0.f, qa = lane_a, qb = 0.f;
#pragma unroll
      for (int i = 0; i < kScanItems; ++i) {
        dA[i] = decay_exp2(in.delta[i] * a2);
        dBu[i] = in.delta[i] * in.u[i] * bv[i];
        lb = fmaf(dA[i], lb, dBu[i]);
      }
#pragma unroll
      for (int i = kScanItems - 1; i >= 0; --i) qb = dA[i] * fmaf(cv[i], in.dy[i], qb);
      // ... and (kBCGrouped) the previous state's dA partial summed over the row's lanes in the
      // same rounds: its own round of shuffles at the end of that state would stall it. (The
      // constant-B/C kernels keep that round.)
      warp_scan_affine_up_down<kScanLanes, kBCGrouped>(la, lb, qa, qb, lane, &dA_prev);
      if (kBCGrouped && active && lane == 0 && n > 0) {
        p.part_A[(static_cast<long long>(d) * N + n - 1) * J + j] = dA_prev;
      }
      float ea = __shfl_up_sync(kFullMask, la, 1, kScanLanes), eb = __shfl_up_sync(kFullMask, lb, 1, kScanLanes);
      float fa = __shfl_down_sync(kFullMask, qa, 1, kScanLanes), fb = __shfl_down_sync(kFullMask, qb, 1, kScanLanes);
      if (lane == 0) ea = 1.f, eb = 0.f;
      if (lane == kScanLanes - 1) fa = 1.f, fb = 0.f;
      // Forward: h over the tile; hp[i] = h before step i.
      // (with kBCGrouped the constant-B/C branches below fold away)
      float h = fmaf(ea, h_in, eb);
      float dc_sum = 0.f;
#pragma unroll
      for (int i = 0; i < kScanItems; ++i) {
        hp[i] = h;
        h = fmaf(dA[i], h, dBu[i]);
        y[i] = fmaf(h, cv[i], y[i]);
        const float dc = in.dy[i] * h;
        if (c_grouped) {
          red_c[i * kScanLanes + lane] = dc;
        } else {
          dc_sum += dc;
        }
      }
      // Backward: the adjoint g over the tile, from the lane's incoming q.
      float q = fmaf(fa, q_in, fb);
      float dA_sum = 0.f, db_sum = 0.f;
#pragma unroll
      for (int i = kScanItems - 1; i >= 0; --i) {
        const float g = fmaf(cv[i], in.dy[i], q);
        gb[i] = fmaf(g, bv[i], gb[i]);
        const float gh = g * (dA[i] * hp[i]);
        dda[i] = fmaf(a, gh, dda[i]);
        dA_sum = fmaf(in.delta[i], gh, dA_sum);
        const float db = g * in.delta[i] * in.u[i];
        if (b_grouped) {
          red_b[i * kScanLanes + lane] = db;
        } else {
          db_sum += db;
        }
        q = dA[i] * g;
      }
      const bool writer = active && lane == 0;
      if (writer && c == 0 && p.dinitial_state) p.dinitial_state[row * N + n] = q;
      if (writer && p.row_walk && c > 0) p.chunk_q[(row * p.n_chunks + c - 1) * N + n] = q;
      if (kBCGrouped) {
        dA_prev = dA_sum;  // summed over the lanes during the next state's scans
      } else {
        dA_sum = warp_sum<kScanLanes>(dA_sum);
        if (writer) p.part_A[(static_cast<long long>(d) * N + n) * J + j] = dA_sum;
      }
      if (!b_grouped) {
        const float s = warp_sum<kScanLanes>(db_sum);
        if (writer) p.part_B[(static_cast<long long>(d) * N + n) * J + j] = s;
      }
      if (!c_grouped) {
        const float s = warp_sum<kScanLanes>(dc_sum);
        if (writer) p.part_C[(static_cast<long long>(d) * N + n) * J + j] = s;
      }
      if (grouped) {  // sum the rows' contributions to this state, in row order
        // the next state's B/C tile: its buffer was last read in state n - 1, before that barrier
        if (n + 1 < N) bc_stage.put(bc_smem, bc_buf ^ 1, bc_next);
        __syncthreads();
        // One float4 of the 2 x kScanTile sums per thread (blockDim = 2 * kScanTile / 4), each
        // owned by that thread across the states, so with two buffers no barrier is needed after
        // this (red[buf] is written again two states later, after the next state's barrier).
        static_assert(kScanWarps * 32 * 4 == 2 * kScanTile, "one float4 of sums per thread");
        {
          const int which = threadIdx.x / (kScanTile / 4), q4 = threadIdx.x % (kScanTile / 4);
          float4 sum = vec_at<const float4>(red_slot(buf, 0, which))[q4];
#pragma unroll
          for (int r = 1; r < kScanRows; ++r) {
            const float4 v = vec_at<const float4>(red_slot(buf, r, which))[q4];
            sum.x += v.x, sum.y += v.y, sum.z += v.z, sum.w += v.w;
          }
          float4* dst = vec_at<float4>(acc + (which * N + n) * kScanTile) + q4;
          float4 cur = *dst;
          cur.x += sum.x, cur.y += sum.y, cur.z += sum.z, cur.w += sum.w;
          *dst = cur;
        }
        if (red_buffers == 1) {
          __syncthreads();  // one buffer: every thread has read it before the next state's writes
        } else {
          buf ^= 1;
        }
      }
    }

    if (kBCGrouped) {  // the last state's
      dA_prev = warp_sum<kScanLanes>(dA_prev);
      if (active && lane == 0) p.part_A[(static_cast<long long>(d) * N + N - 1) * J + j] = dA_prev;
    }
    float dD = 0.f, ddb = 0.f, zg[kScanItems];
    const float Dd = p.D ? p.D[d] : 0.f;
    float du[kScanItems], ddelta[kScanItems];
#pragma unroll
    for (int i = 0; i < kScanItems; ++i) {
      dD = fmaf(in.dy[i], in.u[i], dD);
      du[i] = fmaf(Dd, in.dy[i], in.delta[i] * gb[i]);
      ddelta[i] = fmaf(in.u[i], gb[i], dda[i]);
      y[i] = fmaf(Dd, in.u[i], y[i]);
      zg[i] = zgrad[i * kScanLanes + lane] * y[i];
      // softplus'(x) = sigmoid(x) = 1 - exp(-softplus(x)); expm1f keeps it accurate when
      // softplus(x) is tiny (very negative x), where 1 - exp(.) would cancel.
      if (p.delta_softplus) ddelta[i] *= -expm1f(-in.delta[i]);
      if (io.t() + i >= t_end) ddelta[i] = 0.f;  // padded steps: keep them out of ddelta_bias
      ddb += ddelta[i];
    }
    dD = warp_sum<kScanLanes>(dD);
    ddb = warp_sum<kScanLanes>(ddb);
    if (!active) continue;
    if (lane == 0) {
      if (p.part_D) p.part_D[static_cast<long long>(d) * J + j] = dD;
      if (p.part_delta_bias) p.part_delta_bias[static_cast<long long>(d) * J + j] = ddb;
    }
    io.store(static_cast<T*>(p.du) + row * L, du);
    io.store(static_cast<T*>(p.ddelta) + row * L, ddelta);
    if (p.z) io.store(static_cast<T*>(p.dz) + row * L, zg);
  }

  if (grouped) {  // the block's partial dB/dC for its tile, in physical time order
    __syncthreads();  // acc slots were summed by other threads
    const long long n_parts = gridDim.x;
    for (int k = threadIdx.x; k < 2 * N * kScanTile; k += blockDim.x) {
      const int which = k / (N * kScanTile), n = (k / kScanTile) % N, pos = k % kScanTile;
      const int ti = tile + pos;
      float* part = which == 0 ? (b_grouped ? p.part_B : nullptr) : (c_grouped ? p.part_C : nullptr);
      if (part == nullptr || ti >= L) continue;
      const long long idx = ((b * n_parts + blockIdx.x) * N + n) * static_cast<long long>(L);
      const int q = (pos % kScanItems) * kScanLanes + pos / kScanItems;  // item-major slot of step pos
      part[idx + (kReverse ? L - 1 - ti : ti)] = acc[(which * N + n) * kScanTile + q];
    }
  }
}

// Row walk, first phase: for every channel of the block's slab, the state entering each tile
// (chunk_h, from initial_state) by a forward sweep of the tiles, and the adjoint entering the last
// tile (chunk_q, from dlast_state). A channel is handled by the same row slot as in the main pass.
template <typename T, bool kReverse, bool kBCGrouped>
__device__ __forceinline__ void scan_bwd_row_sweep(const ScanParams& p) {
  // the main pass's staging buffer: a row's last use of it here ends with a __syncwarp
  float(&sweep_stage)[kScanRows][kPadTile] = shared_buffer<ScanStageSmem>().row;
  const RowLane rl;
  const int lane = rl.lane;
  const int b = blockIdx.y;
  const int L = p.seqlen, N = p.dstate, tiles = p.n_chunks;
  const int seg = blockIdx.x / p.slabs_per_seg, slab = blockIdx.x % p.slabs_per_seg;
  const int d_begin = seg * p.seg_channels + slab * p.slab_channels;
  const int d_end = min((seg + 1) * p.seg_channels, d_begin + p.slab_channels);
  for (int d0 = d_begin; d0 < d_end; d0 += kScanRows) {
    const bool active = d0 + rl.slot < d_end;  // as in the main pass: idle rows write nothing
    const int d = active ? d0 + rl.slot : d_begin;
    const long long row = row_index(p, b, d);
    const BCView Bv = b_view<kBCGrouped>(p, b, d);
    const float bias = p.delta_bias ? p.delta_bias[d] : 0.f;
    for (int n = lane; active && n < N; n += kScanLanes) {
      p.chunk_h[row * tiles * N + n] = p.initial_state ? p.initial_state[row * N + n] : 0.f;
      p.chunk_q[(row * tiles + tiles - 1) * N + n] = p.dlast_state ? p.dlast_state[row * N + n] : 0.f;
    }
    __syncwarp();
    for (int c = 0; c + 1 < tiles; ++c) {
      const TileIO<kReverse> io{sweep_stage[rl.slot], c * kScanTile, min(L, (c + 1) * kScanTile), L, lane,
                                rl.mask};
      float uv[kScanItems], dv[kScanItems];
      io.load(static_cast<const T*>(p.u) + row * L, uv);
      io.load(static_cast<const T*>(p.delta) + row * L, dv);
      prepare_delta(dv, io.t(), io.t_end, bias, p.delta_softplus);
      float lane_dt = 0.f;
#pragma unroll
      for (int i = 0; i < kScanItems; ++i) {
        lane_dt += dv[i];
        uv[i] *= dv[i];  // delta u, shared by the states
      }
      // Walk the states from n = 0, each state's B and entry state loaded during the state before
      // (the sweep does little per state: unhidden, their latency would be most of it).
      BCView Bn = Bv;
      float b_next[kScanItems];
      Bn.next(io, b_next);
      float h_next = p.chunk_h[(row * tiles + c) * N];
      for (int n = 0; n < N; ++n) {
        const float a2 = p.A[d * N + n] * kLog2e;
        float bv[kScanItems];
#pragma unroll
        for (int i = 0; i < kScanItems; ++i) bv[i] = b_next[i];
        const float h_in = h_next;
        if (n + 1 < N) {
          Bn.next(io, b_next);
          h_next = p.chunk_h[(row * tiles + c) * N + n + 1];
        }
        float la = decay_exp2(lane_dt * a2), lb = 0.f;
#pragma unroll
        for (int i = 0; i < kScanItems; ++i) lb = fmaf(decay_exp2(dv[i] * a2), lb, uv[i] * bv[i]);
        warp_scan_affine_up<kScanLanes>(la, lb, lane);
        const float h_out = fmaf(la, h_in, lb);
        if (active && lane == kScanLanes - 1) p.chunk_h[(row * tiles + c + 1) * N + n] = h_out;
        __syncwarp();
      }
    }
  }
}

// A block's tiles: tile c, or (row walk) after the forward sweep all of them, last first. One
// call site of the main body per direction.
template <typename T, bool kReverse, bool kBCGrouped>
__device__ __forceinline__ void scan_bwd_tiles(const ScanParams& p, int c) {
  int c_end = c;
  if (p.row_walk) {
    scan_bwd_row_sweep<T, kReverse, kBCGrouped>(p);
    c = p.n_chunks - 1;
    c_end = 0;
  }
  for (; c >= c_end; --c) scan_bwd_block<T, kReverse, kBCGrouped>(p, c);
}

template <typename T, bool kBCGrouped>
__global__ __launch_bounds__(kScanWarps * 32, kScanSummaryBlocks) void scan_bwd_summary_kernel(ScanParams p) {
  if (p.reverse) {
    scan_bwd_summary_block<T, true, kBCGrouped>(p, blockIdx.z);
  } else {
    scan_bwd_summary_block<T, false, kBCGrouped>(p, blockIdx.z);
  }
}

// The main pass's tile (grid z) of a block: last first, as the forward's main pass (the tiles
// the summary pass read last are the likeliest still in L2).
__device__ __forceinline__ int bwd_tile_z() { return gridDim.z - 1 - blockIdx.z; }

template <typename T, bool kBCGrouped>
__global__ __launch_bounds__(kScanWarps * 32, kScanMainBlocks) void scan_bwd_kernel(ScanParams p) {
  if (p.reverse) {
    scan_bwd_tiles<T, true, kBCGrouped>(p, bwd_tile_z());
  } else {
    scan_bwd_tiles<T, false, kBCGrouped>(p, bwd_tile_z());
  }
}

// Both directions: grid.z = 2 * n_chunks, direction-major; direction 1 is the reversed one.
template <typename T, bool kBCGrouped>
__global__ __launch_bounds__(kScanWarps * 32, kScanSummaryBlocks) void scan_bwd_summary_bi_kernel(BiScanParams bp) {
  const int n_chunks = bp.dir[0].n_chunks;
  if (blockIdx.z < n_chunks) {
    scan_bwd_summary_block<T, false, kBCGrouped>(bp.dir[0], blockIdx.z);
  } else {
    scan_bwd_summary_block<T, true, kBCGrouped>(bp.dir[1], blockIdx.z - n_chunks);
  }
}

// Row walk: grid.z = 2, one per direction.
template <typename T, bool kBCGrouped>
__global__ __launch_bounds__(kScanWarps * 32, kScanMainBlocks) void scan_bwd_bi_kernel(BiScanParams bp) {
  const int n_chunks = bp.dir[0].row_walk ? 1 : bp.dir[0].n_chunks;  // row walk: grid.z = 2
  const int z = bwd_tile_z();
  if (z < n_chunks) {
    scan_bwd_tiles<T, false, kBCGrouped>(bp.dir[0], z);
  } else {
    scan_bwd_tiles<T, true, kBCGrouped>(bp.dir[1], z - n_chunks);
  }
}

// The ordered reductions of one direction's partials (after the main pass).
inline cudaError_t scan_bwd_reduce(const ScanParams& p, unsigned n_parts, cudaStream_t stream) {
  cudaError_t err;
  const int J = p.batch * p.n_chunks;
  const long long DN = static_cast<long long>(p.dim) * p.dstate;
  if ((err = reduce_inner(p.part_A, p.dA, DN, J, stream)) != cudaSuccess) return err;
  if (p.part_D && (err = reduce_inner(p.part_D, p.dD, p.dim, J, stream)) != cudaSuccess) return err;
  if (p.part_delta_bias &&
      (err = reduce_inner(p.part_delta_bias, p.ddelta_bias, p.dim, J, stream)) != cudaSuccess) {
    return err;
  }
  const long long NL = static_cast<long long>(p.dstate) * p.seqlen;
  const float* parts[2] = {p.part_B, p.part_C};
  float* outs[2] = {p.dB, p.dC};
  const int groups[2] = {p.b_groups, p.c_groups};
  for (int k = 0; k < 2; ++k) {
    if (groups[k] == 0) {
      err = reduce_inner(parts[k], outs[k], DN, J, stream);
    } else {  // parts are ordered segment-major, so each group's parts are contiguous
      err = reduce_middle(parts[k], outs[k], static_cast<long long>(p.batch) * groups[k],
                          static_cast<int>(n_parts / groups[k]), NL, stream);
    }
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

inline size_t scan_bwd_smem(const ScanParams& p) {  // acc and red (scan_bwd_block)
  const bool grouped = p.b_groups > 0 || p.c_groups > 0;
  const size_t acc = 2 * sizeof(float) * p.dstate * kScanTile;
  const size_t red = sizeof(float) * bwd_red_buffers(p.dstate) * kScanRows * 2 * kScanTile;
  return grouped ? acc + red : 0;
}

inline unsigned scan_bwd_parts(const ScanParams& p) {
  return static_cast<unsigned>((p.dim / p.seg_channels) * p.slabs_per_seg);
}

}  // namespace

template <typename T>
cudaError_t selective_scan_bwd_launch(const ScanParams& p, cudaStream_t stream) {
  const dim3 block(kScanWarps * 32);
  return with_bc_layout(p, [&](auto grouped) {
    constexpr bool kG = decltype(grouped)::value;
    cudaError_t err;
    if (p.n_chunks > 1 && !p.row_walk) {
      err = launch_kernel(scan_bwd_summary_kernel<T, kG>, dim3(ceil_div(p.dim, kScanRows), p.batch, p.n_chunks),
                          block, 0, stream, p);
      if (err != cudaSuccess) return err;
      if ((err = scan_combine(p, false, stream)) != cudaSuccess) return err;
      if ((err = scan_combine(p, true, stream)) != cudaSuccess) return err;
    }
    const size_t smem = scan_bwd_smem(p);
    if ((err = allow_dynamic_smem(scan_bwd_kernel<T, kG>, smem)) != cudaSuccess) return err;
    const unsigned n_parts = scan_bwd_parts(p);
    err = launch_kernel(scan_bwd_kernel<T, kG>, dim3(n_parts, p.batch, p.row_walk ? 1 : p.n_chunks), block,
                        smem, stream, p);
    if (err != cudaSuccess) return err;
    return scan_bwd_reduce(p, n_parts, stream);
  });
}

template <typename T>
cudaError_t selective_scan_bi_bwd_launch(const BiScanParams& bp, cudaStream_t stream) {
  const ScanParams& p = bp.dir[0];  // sizes, B/C layout and the channel planning are the same in both
  const dim3 block(kScanWarps * 32);
  return with_bc_layout(p, [&](auto grouped) {
    constexpr bool kG = decltype(grouped)::value;
    cudaError_t err;
    if (p.n_chunks > 1 && !p.row_walk) {
      err = launch_kernel(scan_bwd_summary_bi_kernel<T, kG>,
                          dim3(ceil_div(p.dim, kScanRows), p.batch, 2 * p.n_chunks), block, 0, stream, bp);
      if (err != cudaSuccess) return err;
      for (const ScanParams& q : bp.dir) {
        if ((err = scan_combine(q, false, stream)) != cudaSuccess) return err;
        if ((err = scan_combine(q, true, stream)) != cudaSuccess) return err;
      }
    }
    const size_t smem = scan_bwd_smem(p);
    if ((err = allow_dynamic_smem(scan_bwd_bi_kernel<T, kG>, smem)) != cudaSuccess) return err;
    const unsigned n_parts = scan_bwd_parts(p);
    err = launch_kernel(scan_bwd_bi_kernel<T, kG>, dim3(n_parts, p.batch, p.row_walk ? 2 : 2 * p.n_chunks),
                        block, smem, stream, bp);
    if (err != cudaSuccess) return err;
    for (const ScanParams& q : bp.dir) {
      if ((err = scan_bwd_reduce(q, n_parts, stream)) != cudaSuccess) return err;
    }
    return cudaSuccess;
  });
}

}  // namespace cuda
}  // namespace vimd
