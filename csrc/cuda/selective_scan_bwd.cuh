// Selective scan backward: one thread per (batch, channel) row, like the forward.
//
// With h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t and y_t = C_t h_t + D u_t, the adjoint
// g_t = dL/dh_t runs backwards in time: g_t = C_t dy_t + q_t with q_t = exp(delta_{t+1} A) g_{t+1}
// (q at the row's end: dlast_state). Per step and state the gradients are dB_t += g_t delta_t u_t,
// dC_t += dy_t h_t, dA += delta_t q_{t-1} h_{t-1} and ddelta_t += A q_{t-1} h_{t-1} + u_t g_t B_t,
// du_t += delta_t g_t B_t, with q_{t-1} = exp(delta_t A) g_t.
//
// A thread holds its row's states, their adjoints q and its dA sums in registers (a group of
// kFwdStateGroup; larger N cycles the groups through shared memory) and walks time in order, the
// states as independent chains: no cross-lane scans. Reverse time needs h_{t-1} at every step, so
// the row's states are checkpointed every kBwdSegment steps: a forward sweep over the chunk writes
// the state entering each segment (`checkpoints`, global memory), then the segments are taken
// last to first; each is walked forward from its checkpoint, keeping the state before each step
// in shared memory, then backward, with one exp2 per step and state in each of the three walks.
// dA, du, ddelta, dz, dD, ddelta_bias (and constant dB/dC) are summed inside the thread.
//
// A block is one warp of kBwdRows rows inside one B/C group segment: grouped B/C are staged in
// shared memory kFwdSteps steps at a time (read as broadcast float4s), and their per-step dB/dC
// are summed over the block's rows through a shared-memory transpose (each row writes its
// 2 x kFwdStateGroup values of a step, each lane then sums one column over the rows in row
// order) and written as one partial per (block, step); a block walks slab_channels channels,
// adding each group of rows to its partials. Ordered reductions finish every partial: no
// atomics, bitwise reproducible.
//
// Long L with few rows: L is cut into chunks that run in parallel: a summary pass walks each chunk
// backwards from zero carries (its local end state, by products of the decays, and its local
// adjoint at the start), the forward's carry combine turns them into entry values, and the main
// pass runs every chunk from them.
#pragma once

#include "reduce.cuh"
#include "scan_common.cuh"

namespace vimd {
namespace cuda {
namespace {

constexpr int kBwdGroup = kFwdStateGroup;
constexpr float kLn2 = 0.6931471805599453f;
// The dB/dC transpose: a row's 2 x kBwdGroup values of a step and a pad word (the rows' stores
// of one value and a lane's column reads both hit distinct banks).
constexpr int kRedPad = 2 * kBwdGroup + 1;
static_assert(kBwdRows == 32, "a backward block is one warp");
// Blocks per multiprocessor the registers are budgeted for (__launch_bounds__): 255 registers a
// thread; shared memory holds a multiprocessor to 7 blocks (sm_90) or 5 (sm_80) at N <= 16.
constexpr int kBwdBlocks = 8;
static_assert(kBwdSegment == kFwdSteps, "a segment is one staging unit");

// Per-row values of the segment's steps, one slot of 32 * kFwdPad floats each (RowSteps layout):
// delta (after bias and softplus), delta * u, dy (after the z gate), u, dout * silu'(z), and the
// sums over the states of g B, A q h and C h.
enum BwdSlot { kSlotDt, kSlotDtu, kSlotDy, kSlotU, kSlotZg, kSlotGb, kSlotDda, kSlotY, kBwdSlots };

struct ScanBwdSmem {
  float rows[kBwdSlots][32 * kFwdPad];
  float red[kBwdRows][kRedPad];
};

// Dynamic shared memory: the states before each step of a segment (kFwdSteps x kBwdGroup / 4
// float4 rows of kBwdRows), the staged B/C steps, and with several state groups each thread's
// carries (4 fields of n_pad states, threads innermost).
__host__ __device__ inline int bwd_n_pad(int N) { return (N + kBwdGroup - 1) / kBwdGroup * kBwdGroup; }
__host__ __device__ inline int bwd_bc_pad(int N) { return bwd_n_pad(N) + 4; }  // the staging writes hit distinct banks
constexpr int kBwdHistFloats = kFwdSteps * kBwdGroup * kBwdRows;
inline size_t scan_bwd_smem(const ScanParams& p) {
  const int n_pad = bwd_n_pad(p.dstate);
  const bool carry = n_pad > kBwdGroup || !bc_grouped(p);
  return sizeof(float) * (kBwdHistFloats + 2 * kFwdSteps * bwd_bc_pad(p.dstate) + (carry ? 4 * n_pad * kBwdRows : 0));
}

// One (channel slab, batch, chunk c) of one direction's backward. kSummary: the chunk's local
// end state, local adjoint at its start and sum of delta (chunk_h, chunk_q, chunk_sum_delta).
template <typename T, bool kSummary, bool kReverse, bool kBCGrouped>
__device__ __forceinline__ void scan_bwd_rows(const ScanParams& p, int c) {
  ScanBwdSmem& smem = shared_buffer<ScanBwdSmem>();
  VIMD_DYNAMIC_SMEM(float, dyn);
  const int L = p.seqlen, N = p.dstate, lane = threadIdx.x, b = blockIdx.y;
  const int n_pad = bwd_n_pad(N), bc_pad = bwd_bc_pad(N);
  const int n_groups = n_pad / kBwdGroup;
  const bool spill = n_groups > 1;
  float4* hist = reinterpret_cast<float4*>(dyn);  // [step][float4 of the group][row]
  float* bc_b = dyn + kBwdHistFloats;             // [step][state]
  float* bc_c = bc_b + kFwdSteps * bc_pad;
  float* carry = bc_c + kFwdSteps * bc_pad;       // [field][state][row]
  auto carry_at = [&](int field, int n) -> float& { return carry[(field * n_pad + n) * kBwdRows + lane]; };

  const int seg = blockIdx.x / p.slabs_per_seg, slab = blockIdx.x % p.slabs_per_seg;
  const int d_begin = seg * p.seg_channels + slab * p.slab_channels;
  const int d_end = min((seg + 1) * p.seg_channels, d_begin + p.slab_channels);
  const int t_begin = c * p.chunk_len, t_end = min(L, t_begin + p.chunk_len);
  const int n_segs = (L + kBwdSegment - 1) / kBwdSegment;
  const int J = p.batch * p.n_chunks;
  const long long j = static_cast<long long>(b) * p.n_chunks + c;
  const long long n_parts = gridDim.x;

  const bool b_grouped = kBCGrouped || p.b_groups > 0, c_grouped = kBCGrouped || p.c_groups > 0;
  const bool bc_sums = b_grouped || c_grouped;  // dB or dC summed over the block's rows
  const bool bc_all_grouped = b_grouped && c_grouped;  // else `carry` holds constant dB/dC sums
  const BCRows Bg(p.B, b_grouped, p.b_groups, p.b_row_stride, p, b, d_begin);
  const BCRows Cg(p.C, c_grouped, p.c_groups, p.c_row_stride, p, b, d_begin);
  const BCSteps<kBwdRows, kReverse> bc_sweep{Bg, Cg, b_grouped, false, N, L, t_end};  // B only
  const BCSteps<kBwdRows, kReverse> bc_all{Bg, Cg, b_grouped, c_grouped, N, L, t_end};

  for (int d0 = d_begin; d0 < d_end; d0 += kBwdRows) {
    const int rows = min(kBwdRows, d_end - d0);
    // Idle threads (past the slab) walk row d0 with zero inputs and zero carries: they meet the
    // barriers, add zeros to the block's sums and write nothing.
    const bool active = lane < rows;
    const int d = active ? d0 + lane : d0;
    const long long row = row_index(p, b, d);
    const bool first_rows = d0 == d_begin;  // the slab's first rows write the block's partials
    const long long src = row_index(p, b, d0) * L;
    const T* u = static_cast<const T*>(p.u) + src;
    const T* delta = static_cast<const T*>(p.delta) + src;
    const T* dout = static_cast<const T*>(p.dout) + src;
    const T* z = p.z ? static_cast<const T*>(p.z) + (b * p.z_batch_stride + static_cast<long long>(d0) * L)
                     : nullptr;
    const float Dd = p.D ? p.D[d] : 0.f;
    const float bias = p.delta_bias ? p.delta_bias[d] : 0.f;
    auto slot = smem.rows;  // slot[kind][RowSteps slot]

    // The segment [t0, t0 + kFwdSteps): B (and C) staged, the rows' steps in their slots.
    auto stage = [&](int t0, bool backward) {
      const RowSteps<kReverse> io{t0, t_end, L, lane, rows};
      T vu[kFwdSteps], vd[kFwdSteps], vo[kFwdSteps], vz[kFwdSteps];
      io.fetch(u, L, vu);
      io.fetch(delta, L, vd);
      if (backward) {
        io.fetch(dout, L, vo);
        if (z) io.fetch(z, L, vz);
      }
      __syncthreads();  // every row is done with the previous segment's B/C and slots
      (backward ? bc_all : bc_sweep).copy(lane, t0, n_pad, bc_pad, bc_b, bc_c);
      io.put(vu, slot[kSlotU]);
      io.put(vd, slot[kSlotDt]);
      if (backward) {
        io.put(vo, slot[kSlotDy]);
        if (z) io.put(vz, slot[kSlotZg]);
      }
      __syncthreads();
      // per lane, its own slots
      float dv[kFwdSteps];
#pragma unroll
      for (int i = 0; i < kFwdSteps; ++i) dv[i] = slot[kSlotDt][io.slot(i)];
      prepare_delta(dv, t0, t_end, bias, p.delta_softplus);  // padded steps: zero, an identity
#pragma unroll
      for (int i = 0; i < kFwdSteps; ++i) {
        const int k = io.slot(i);
        const float uv = slot[kSlotU][k];
        slot[kSlotDt][k] = dv[i];
        slot[kSlotDtu][k] = dv[i] * uv;
        if (!backward) continue;
        float dy = slot[kSlotDy][k];
        if (z) {
          const float zv = slot[kSlotZg][k], s = sigmoidf(zv);
          slot[kSlotZg][k] = dy * s * (1.f + zv * (1.f - s));
          dy *= zv * s;
        }
        slot[kSlotDy][k] = dy;
        slot[kSlotGb][k] = 0.f;
        slot[kSlotDda][k] = 0.f;
        slot[kSlotY][k] = Dd * uv;
      }
      return io;
    };

    // State group g's decays (A log2 e).
    float a2[kBwdGroup];
    auto load_group = [&](int g) {
#pragma unroll
      for (int k = 0; k < kBwdGroup; ++k) {
        const int n = g * kBwdGroup + k;
        a2[k] = n < N ? p.A[d * N + n] * kLog2e : 0.f;
      }
    };
    // States n0 .. n0 + 3 of B or C at step i: staged (grouped) or the row's constants X, read
    // where used (L1-resident; in registers they made the kernel spill).
    auto bc_values = [&](bool grouped, const float* staged, const float* X, int i, int n0, float (&v4)[4]) {
      if (grouped) {
        const float4 v = vec_at<const float4>(staged + i * bc_pad + n0)[0];
        v4[0] = v.x, v4[1] = v.y, v4[2] = v.z, v4[3] = v.w;
      } else {
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) v4[jj] = n0 + jj < N ? X[d * N + n0 + jj] : 0.f;
      }
    };
    // The step's B and C of states 4 q4 .. 4 q4 + 3 of group g.
    auto bc_step = [&](int i, int g, int q4, float (&bs)[4], float (&cs)[4]) {
      const int n0 = g * kBwdGroup + 4 * q4;
      bc_values(b_grouped, bc_b, p.B, i, n0, bs);
      bc_values(c_grouped, bc_c, p.C, i, n0, cs);
    };
    if (!spill) load_group(0);

    // Carries across segments, per state: h (the sweep), then q (the adjoint flowing into the
    // step), s1 (dA; summary: the local end state) and, in the summary, s2 (the product of the
    // decays after the step): in registers with one group, else in `carry` (fields 0, 1, 2).
    // The main pass sums constant dB/dC in `carry` (fields 2, 3) whatever N.
    float h[kBwdGroup], q[kBwdGroup], s1[kBwdGroup], s2[kBwdGroup];
    // States 4 q4 .. 4 q4 + 3 of group g through step i (dt, x = delta u): h = exp(dt A) h + x B.
    auto advance = [&](int i, int g, int q4, float dt, float x) {
      float bs[4], cs[4];
      bc_step(i, g, q4, bs, cs);
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        const int k = 4 * q4 + jj;
        h[k] = fmaf(decay_exp2(dt * a2[k]), h[k], x * bs[jj]);
      }
    };
    // fn(register, its slot in `carry`) for each of group g's carries q, s1 and (summary) s2.
    auto each_carry = [&](int g, auto fn) {
#pragma unroll
      for (int k = 0; k < kBwdGroup; ++k) {
        const int n = g * kBwdGroup + k;
        fn(q[k], carry_at(0, n)), fn(s1[k], carry_at(1, n));
        if (kSummary) fn(s2[k], carry_at(2, n));
      }
    };
    auto load_carry = [&](int g) { each_carry(g, [](float& v, const float& slot) { v = slot; }); };
    auto store_carry = [&](int g) { each_carry(g, [](const float& v, float& slot) { slot = v; }); };
    const long long chunk_slot = (row * p.n_chunks + c) * N;
    // the row's states entering segment [t0, t0 + kBwdSegment), state n at [n * dim]
    auto checkpoint = [&](int t0) {
      return p.checkpoints + ((static_cast<long long>(b) * n_segs + t0 / kBwdSegment) * N) * p.dim + d;
    };

    if (!kSummary) {  // the forward sweep: checkpoints at every segment start of the chunk
      auto entry = [&](int n) -> float {
        if (!active || n >= N) return 0.f;
        if (p.n_chunks > 1) return p.chunk_h[chunk_slot + n];
        return p.initial_state ? p.initial_state[row * N + n] : 0.f;
      };
      if (spill) {
        for (int n = 0; n < n_pad; ++n) carry_at(0, n) = entry(n);
      } else {
#pragma unroll
        for (int k = 0; k < kBwdGroup; ++k) h[k] = entry(k);
      }
      for (int t0 = t_begin; t0 < t_end; t0 += kBwdSegment) {
        const RowSteps<kReverse> io = stage(t0, false);
        float* ckpt = checkpoint(t0);
        for (int g = 0; g < n_groups; ++g) {
          if (spill) {
            load_group(g);
#pragma unroll
            for (int k = 0; k < kBwdGroup; ++k) h[k] = carry_at(0, g * kBwdGroup + k);
          }
#pragma unroll
          for (int k = 0; k < kBwdGroup; ++k) {
            const int n = g * kBwdGroup + k;
            if (active && n < N) ckpt[static_cast<long long>(n) * p.dim] = h[k];
          }
#pragma unroll 1
          for (int i = 0; i < kFwdSteps; ++i) {
            const float dt = slot[kSlotDt][io.slot(i)], x = slot[kSlotDtu][io.slot(i)];
#pragma unroll
            for (int q4 = 0; q4 < kBwdGroup / 4; ++q4) advance(i, g, q4, dt, x);
          }
          if (spill) {
#pragma unroll
            for (int k = 0; k < kBwdGroup; ++k) carry_at(0, g * kBwdGroup + k) = h[k];
          }
        }
      }
    }

    {  // the adjoint's entry and zeroed sums
      auto entry_q = [&](int n) -> float {
        if (kSummary || !active || n >= N) return 0.f;
        if (p.n_chunks > 1) return p.chunk_q[chunk_slot + n];
        return p.dlast_state ? p.dlast_state[row * N + n] : 0.f;
      };
      const float s2_init = kSummary ? 1.f : 0.f;
      if (spill || (!kSummary && !bc_all_grouped)) {
        for (int n = 0; n < n_pad; ++n) {
          carry_at(0, n) = entry_q(n), carry_at(1, n) = 0.f, carry_at(2, n) = s2_init, carry_at(3, n) = 0.f;
        }
      }
      if (!spill) {
#pragma unroll
        for (int k = 0; k < kBwdGroup; ++k) q[k] = entry_q(k), s1[k] = 0.f, s2[k] = s2_init;
      }
    }
    float dD = 0.f, ddb = 0.f, sum_dt = 0.f;
    // The segment's outputs, from its slots (the sums over the states complete).
    auto finish_segment = [&](const RowSteps<kReverse>& io, int t0) {
      float du[kFwdSteps], ddelta[kFwdSteps], dz[kFwdSteps];
#pragma unroll
      for (int i = 0; i < kFwdSteps; ++i) {
        const int k = io.slot(i);
        const float dt = slot[kSlotDt][k], uv = slot[kSlotU][k], dy = slot[kSlotDy][k];
        const float gb = slot[kSlotGb][k];
        du[i] = fmaf(dt, gb, Dd * dy);
        float dd = fmaf(uv, gb, slot[kSlotDda][k] * kLn2);
        // softplus'(x) = sigmoid(x) = 1 - exp(-softplus(x)); expm1f keeps it accurate when
        // softplus(x) is tiny (very negative x), where 1 - exp(.) would cancel.
        if (p.delta_softplus) dd *= -expm1f(-dt);
        if (t0 + i >= t_end) dd = 0.f;  // padded steps: keep them out of ddelta_bias
        ddelta[i] = dd;
        ddb += dd;
        dD = fmaf(dy, uv, dD);
        dz[i] = z ? slot[kSlotZg][k] * slot[kSlotY][k] : 0.f;
      }
      io.store(static_cast<T*>(p.du) + src, L, du, slot[kSlotGb]);
      io.store(static_cast<T*>(p.ddelta) + src, L, ddelta, slot[kSlotGb]);
      if (z) io.store(static_cast<T*>(p.dz) + src, L, dz, slot[kSlotGb]);
    };
    for (int t0 = t_begin + (t_end - 1 - t_begin) / kBwdSegment * kBwdSegment; t0 >= t_begin; t0 -= kBwdSegment) {
      const RowSteps<kReverse> io = stage(t0, true);
      const float* ckpt = checkpoint(t0);
      for (int g = 0; g < n_groups; ++g) {
        if (spill) {
          load_group(g);
          load_carry(g);
        }
        if (!kSummary) {  // forward over the segment from its checkpoint: the state before each step
#pragma unroll
          for (int k = 0; k < kBwdGroup; ++k) {
            const int n = g * kBwdGroup + k;
            h[k] = active && n < N ? ckpt[static_cast<long long>(n) * p.dim] : 0.f;
          }
#pragma unroll 1
          for (int i = 0; i < kFwdSteps; ++i) {
            const float dt = slot[kSlotDt][io.slot(i)], x = slot[kSlotDtu][io.slot(i)];
#pragma unroll
            for (int q4 = 0; q4 < kBwdGroup / 4; ++q4) {
              hist[(i * (kBwdGroup / 4) + q4) * kBwdRows + lane] =
                  make_float4(h[4 * q4], h[4 * q4 + 1], h[4 * q4 + 2], h[4 * q4 + 3]);
              advance(i, g, q4, dt, x);
            }
          }
        }
        // backward over the segment
#pragma unroll 1
        for (int i = kFwdSteps - 1; i >= 0; --i) {
          const int k_slot = io.slot(i);
          const float dt = slot[kSlotDt][k_slot], x = slot[kSlotDtu][k_slot], dy = slot[kSlotDy][k_slot];
          float gbq[4] = {0.f, 0.f, 0.f, 0.f}, ddq[4] = {0.f, 0.f, 0.f, 0.f}, yq[4] = {0.f, 0.f, 0.f, 0.f};
          float* red = smem.red[lane];  // this row's dB, dC of the step (grouped operands)
#pragma unroll
          for (int q4 = 0; q4 < kBwdGroup / 4; ++q4) {
            float bs[4], cs[4];
            bc_step(i, g, q4, bs, cs);
            float hp[4] = {0.f, 0.f, 0.f, 0.f};
            if (!kSummary) {
              const float4 v = hist[(i * (kBwdGroup / 4) + q4) * kBwdRows + lane];
              hp[0] = v.x, hp[1] = v.y, hp[2] = v.z, hp[3] = v.w;
            }
#pragma unroll
            for (int jj = 0; jj < 4; ++jj) {
              const int k = 4 * q4 + jj;
              const float e = decay_exp2(dt * a2[k]);
              if (kSummary) {
                s1[k] = fmaf(s2[k], x * bs[jj], s1[k]);
                s2[k] *= e;
                q[k] = e * fmaf(cs[jj], dy, q[k]);
                continue;
              }
              const float ht = fmaf(e, hp[jj], x * bs[jj]);  // the state after the step
              const float gv = fmaf(cs[jj], dy, q[k]);
              gbq[jj] = fmaf(gv, bs[jj], gbq[jj]);
              yq[jj] = fmaf(cs[jj], ht, yq[jj]);
              q[k] = e * gv;
              const float gh = q[k] * hp[jj];
              s1[k] = fmaf(dt, gh, s1[k]);
              ddq[jj] = fmaf(a2[k], gh, ddq[jj]);
              const float db = gv * x, dc = dy * ht;
              if (bc_sums) {
                red[k] = b_grouped ? db : 0.f;
                red[kBwdGroup + k] = c_grouped ? dc : 0.f;
              }
              if (!b_grouped) carry_at(2, g * kBwdGroup + k) += db;
              if (!c_grouped) carry_at(3, g * kBwdGroup + k) += dc;
            }
          }
          if (!kSummary) {
            slot[kSlotGb][k_slot] += (gbq[0] + gbq[1]) + (gbq[2] + gbq[3]);
            slot[kSlotDda][k_slot] += (ddq[0] + ddq[1]) + (ddq[2] + ddq[3]);
            slot[kSlotY][k_slot] += (yq[0] + yq[1]) + (yq[2] + yq[3]);
            if (bc_sums) {  // the step's dB/dC summed over the block's rows (lane l: value l)
              __syncwarp();
              float sum = 0.f;
#pragma unroll 8
              for (int r = 0; r < kBwdRows; ++r) sum += smem.red[r][lane];
              __syncwarp();
              const int t = t0 + i, n = g * kBwdGroup + lane % kBwdGroup;
              const bool is_c = lane >= kBwdGroup;
              float* part = is_c ? (c_grouped ? p.part_C : nullptr) : (b_grouped ? p.part_B : nullptr);
              if (part != nullptr && n < N && t < t_end) {
                float* dst = part + ((b * n_parts + blockIdx.x) * N + n) * static_cast<long long>(L) +
                             (kReverse ? L - 1 - t : t);
                *dst = first_rows ? sum : *dst + sum;
              }
            }
          }
        }
        if (spill) store_carry(g);
      }
      if (kSummary) {
#pragma unroll
        for (int i = 0; i < kFwdSteps; ++i) sum_dt += slot[kSlotDt][io.slot(i)];
      } else {
        finish_segment(io, t0);
      }
    }

    if (!active) continue;
    auto finish = [&](int n, float qn, float v1, float v2, float v3) {
      if (kSummary) {
        p.chunk_h[chunk_slot + n] = v1;
        p.chunk_q[chunk_slot + n] = qn;
        return;
      }
      const long long pj = (static_cast<long long>(d) * N + n) * J + j;
      if (c == 0 && p.dinitial_state) p.dinitial_state[row * N + n] = qn;
      p.part_A[pj] = v1;
      if (!b_grouped) p.part_B[pj] = v2;
      if (!c_grouped) p.part_C[pj] = v3;
    };
    if (spill) {
      for (int n = 0; n < N; ++n) finish(n, carry_at(0, n), carry_at(1, n), carry_at(2, n), carry_at(3, n));
    } else {
#pragma unroll
      for (int k = 0; k < kBwdGroup; ++k) {  // constant indices: the carries stay in registers
        if (k < N) {
          finish(k, q[k], s1[k], !kSummary && !b_grouped ? carry_at(2, k) : 0.f,
                 !kSummary && !c_grouped ? carry_at(3, k) : 0.f);
        }
      }
    }
    if (kSummary) {
      p.chunk_sum_delta[row * p.n_chunks + c] = sum_dt;
    } else {
      if (p.part_D) p.part_D[static_cast<long long>(d) * J + j] = dD;
      if (p.part_delta_bias) p.part_delta_bias[static_cast<long long>(d) * J + j] = ddb;
    }
  }
}

template <typename T, bool kSummary, bool kBCGrouped>
__global__ __launch_bounds__(kBwdRows, kBwdBlocks) void scan_bwd_kernel(ScanParams p) {
  if (p.reverse) {
    scan_bwd_rows<T, kSummary, true, kBCGrouped>(p, scan_chunk_z<kSummary>());
  } else {
    scan_bwd_rows<T, kSummary, false, kBCGrouped>(p, scan_chunk_z<kSummary>());
  }
}

// Both directions: grid.z = 2 * n_chunks, direction-major; direction 1 is the reversed one. Two
// call sites with constant indices (a run-time index into the parameter struct costs registers).
template <typename T, bool kSummary, bool kBCGrouped>
__global__ __launch_bounds__(kBwdRows, kBwdBlocks) void scan_bwd_bi_kernel(BiScanParams bp) {
  const int n_chunks = bp.dir[0].n_chunks;
  const int z = scan_chunk_z<kSummary>();
  if (z < n_chunks) {
    scan_bwd_rows<T, kSummary, false, kBCGrouped>(bp.dir[0], z);
  } else {
    scan_bwd_rows<T, kSummary, true, kBCGrouped>(bp.dir[1], z - n_chunks);
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

inline unsigned scan_bwd_parts(const ScanParams& p) {
  return static_cast<unsigned>((p.dim / p.seg_channels) * p.slabs_per_seg);
}

// The backward's phases, for one direction (args: ScanParams) or both (BiScanParams): with
// several chunks the summary kernel and each direction's two carry combines, then the main
// kernel and each direction's reductions. kernels(summary, grouped) gives the kernel.
template <typename Args, typename Kernels>
inline cudaError_t launch_bwd_phases(const Args& args, const ScanParams* dirs, int n_dirs, Kernels kernels,
                                     cudaStream_t stream) {
  const ScanParams& p = dirs[0];  // every direction has the same sizes, B/C layout and planning
  const unsigned n_parts = scan_bwd_parts(p);
  const dim3 grid(n_parts, p.batch, n_dirs * p.n_chunks), block(kBwdRows);
  const size_t smem = scan_bwd_smem(p);
  return with_bc_layout(p, [&](auto grouped) {
    const auto main = kernels(std::false_type{}, grouped);
    const auto summary = kernels(std::true_type{}, grouped);
    cudaError_t err;
    if (p.n_chunks > 1) {
      if ((err = allow_dynamic_smem(summary, smem)) != cudaSuccess) return err;
      if ((err = launch_kernel(summary, grid, block, smem, stream, args)) != cudaSuccess) return err;
      for (int s = 0; s < n_dirs; ++s) {
        if ((err = scan_combine(dirs[s], /*adjoint=*/false, stream)) != cudaSuccess) return err;
        if ((err = scan_combine(dirs[s], /*adjoint=*/true, stream)) != cudaSuccess) return err;
      }
    }
    if ((err = allow_dynamic_smem(main, smem)) != cudaSuccess) return err;
    if ((err = launch_kernel(main, grid, block, smem, stream, args)) != cudaSuccess) return err;
    for (int s = 0; s < n_dirs; ++s) {
      if ((err = scan_bwd_reduce(dirs[s], n_parts, stream)) != cudaSuccess) return err;
    }
    return cudaSuccess;
  });
}

}  // namespace

template <typename T>
cudaError_t selective_scan_bwd_launch(const ScanParams& p, cudaStream_t stream) {
  return launch_bwd_phases(p, &p, 1, [](auto summary, auto grouped) {
    return scan_bwd_kernel<T, decltype(summary)::value, decltype(grouped)::value>;
  }, stream);
}

template <typename T>
cudaError_t selective_scan_bi_bwd_launch(const BiScanParams& bp, cudaStream_t stream) {
  return launch_bwd_phases(bp, bp.dir, 2, [](auto summary, auto grouped) {
    return scan_bwd_bi_kernel<T, decltype(summary)::value, decltype(grouped)::value>;
  }, stream);
}

}  // namespace cuda
}  // namespace vimd
