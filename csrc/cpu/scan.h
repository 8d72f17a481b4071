// The selective scan's CPU kernels (per instruction set: see vec.h).
//
// Layout of the work: one (batch, channel) row at a time; cheap per-time-step quantities
// (softplus, dt*u, gating, conversions) are computed with vectors along L into per-thread
// scratch rows (in step order, i.e. reversed while loading for reverse=True; the tensors are never
// flipped and B/C are walked backwards in place), and the recurrence keeps up to kMaxKV vectors of
// states in registers while it walks L. Compute type: float, or double for float64 inputs.
#pragma once

#include <type_traits>

#include "cpu/vec.h"

namespace vimd::cpu::CPU_CAPABILITY {

constexpr int kMaxKV = 4;  // state vectors held in registers per pass

// exp of the recurrence: the inline polynomial (about 20 ulp) for float, Sleef for double.
template <typename T>
inline Vec<T> vexp(const Vec<T>& x) {
  if constexpr (std::is_same_v<T, float>) {
    return x.exp_u20();
  } else {
    return x.exp();
  }
}

// Lane i of the result is the sum of the lanes of v[i], for W = Vec<T>::size() vectors (v is
// overwritten): a butterfly of W - 1 deinterleave+add steps, about 3 vector ops per vector
// instead of a full horizontal reduction each.
template <typename T>
inline Vec<T> lane_sums(Vec<T>* v) {
  for (int64_t n = Vec<T>::size(); n > 1; n /= 2) {
    for (int64_t i = 0; i < n / 2; ++i) {
      const auto p = at::vec::deinterleave2(v[2 * i], v[2 * i + 1]);
      v[i] = p.first + p.second;
    }
  }
  return v[0];
}

// Collects one vector per step s and adds the lane sums of each aligned group of W steps to out[s]
// (out must be initialised). Steps go either up (then call finish()) or down from L - 1 to 0.
template <typename T>
class StepSums {
 public:
  static constexpr int64_t W = Vec<T>::size();
  StepSums(T* out, int64_t L) : out_(out), L_(L) {
    for (int64_t i = 0; i < W; ++i) buf_[i] = Vec<T>(T(0));
  }
  void up(int64_t s, const Vec<T>& v) {
    buf_[s % W] = v;
    if (s % W == W - 1) flush(s - (W - 1));
  }
  void finish() {
    const int64_t c = L_ % W;
    if (c == 0) return;
    for (int64_t i = c; i < W; ++i) buf_[i] = Vec<T>(T(0));
    flush(L_ - c);
  }
  void down(int64_t s, const Vec<T>& v) {
    buf_[s % W] = v;
    if (s % W == 0) flush(s);
  }

 private:
  void flush(int64_t s0) {
    const int64_t c = imin(W, L_ - s0);
    (Vec<T>::loadu(out_ + s0, c) + lane_sums(buf_)).store(out_ + s0, c);
  }
  Vec<T> buf_[W];
  T* out_;
  int64_t L_;
};

// Calls f(std::integral_constant<int, KV>) for kv in 1..kMaxKV.
template <typename F>
inline void with_kv(int64_t kv, F&& f) {
  switch (kv) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, 4>{}); break;
  }
}

// walking their time axis backwards for reverse: B at step s is B0 + s * bstep.
template <typename T>
struct RowView {  // the parameters of one (batch, channel) row
  const T* A;
  const T* B0;
  int64_t bstep;
  const T* C0;
  int64_t cstep;
};

// Start pointer and signed per-step stride of a (L, npad) time series (stride 0: constant).
template <typename T>
inline void series(T* base, int64_t L, int64_t step, bool reverse, T*& start, int64_t& stride) {
  start = reverse ? base + (L - 1) * step : base;
  stride = reverse ? -step : step;
}

template <typename T>
RowView<T> row_view(const ScanArgs& a, int64_t b, int64_t d) {
  RowView<T> r{};
  r.A = static_cast<const T*>(a.A) + d * a.npad;
  const T* Bb = static_cast<const T*>(a.B);
  const T* Cb = static_cast<const T*>(a.C);
  Bb += a.b_var ? (b * a.groups_b + d / (a.dim / a.groups_b)) * a.L * a.npad : d * a.npad;
  Cb += a.c_var ? (b * a.groups_c + d / (a.dim / a.groups_c)) * a.L * a.npad : d * a.npad;
  series(Bb, a.L, a.b_var ? a.npad : 0, a.reverse, r.B0, r.bstep);
  series(Cb, a.L, a.c_var ? a.npad : 0, a.reverse, r.C0, r.cstep);
  return r;
}

// ut = u, dt = softplus(delta + delta_bias) (sig = its derivative, when sig != null), dtu = dt*u,
// all in step order.
template <typename T>
void prologue(const ScanArgs& a, int64_t row, int64_t d, T* ut, T* dt, T* dtu, T* sig) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const int64_t L = a.L;
  load_row(a.io, a.u, row * L, L, ut, a.reverse);
  load_row(a.io, a.delta, row * L, L, dt, a.reverse);
  const V bias(a.delta_bias ? static_cast<const T*>(a.delta_bias)[d] : T(0));
  for (int64_t i = 0; i < L; i += W) {
    const int64_t c = imin(W, L - i);
    V x = V::loadu(dt + i, c) + bias;
    if (a.softplus) {
      if (sig) vsigmoid(x).store(sig + i, c);
      x = V::blendv(x.exp().log1p(), x, x > V(T(20)));  // torch's softplus threshold
    }
    x.store(dt + i, c);
    (x * V::loadu(ut + i, c)).store(dtu + i, c);
  }
}

// Scans the states [n0, n0 + KV*W) of one row from h0 (null: zeros), adding <h_s, C_s> to y[s]
// when y != null; the state at the start of chunk c (steps [c*chunk, (c+1)*chunk)) goes to
// ckpt[c * npad + n] when ckpt != null, the final state to h_end when h_end != null.
template <typename T, int KV>
void fwd_block(const RowView<T>& r, int64_t L, int64_t npad, int64_t n0, const T* dt,
               const T* dtu, const T* h0, T* h_end, T* y, T* ckpt, int64_t chunk) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  V a[KV], h[KV];
  for (int k = 0; k < KV; ++k) {
    a[k] = V::loadu(r.A + n0 + k * W);
    h[k] = h0 ? V::loadu(h0 + n0 + k * W) : V(T(0));
  }
  StepSums<T> ys(y, L);
  for (int64_t s = 0; s < L; ++s) {
    const V vdt(dt[s]), vdtu(dtu[s]);
    const T* bs = r.B0 + s * r.bstep + n0;
    const T* cs = r.C0 + s * r.cstep + n0;
    V acc(T(0));
    for (int k = 0; k < KV; ++k) {
      h[k] = at::vec::fmadd(vexp(vdt * a[k]), h[k], vdtu * V::loadu(bs + k * W));
      acc = at::vec::fmadd(h[k], V::loadu(cs + k * W), acc);
    }
    if (y) ys.up(s, acc);
    if (ckpt && (s + 1) % chunk == 0 && s + 1 < L) {
      T* dst = ckpt + ((s + 1) / chunk) * npad + n0;
      for (int k = 0; k < KV; ++k) h[k].store(dst + k * W);
    }
  }
  if (y) ys.finish();
  if (h_end) {
    for (int k = 0; k < KV; ++k) h[k].store(h_end + n0 + k * W);
  }
}

// Walks the states [n0, n0 + KV*W) of one row backwards, chunk by chunk: each chunk's states are
// recomputed from its checkpoint into hbuf/abuf (adding <h_s, C_s> to y[s] on the way when
// y != null), then walked back in time. g is the gradient of the loss w.r.t. h_s (it starts at
// dh_last). Accumulates dB_s, dC_s (at dB0 + s*dbstep, dC0 + s*dcstep), ddt[s] and dgu[s]
// (gradient w.r.t. dt*u); writes dA (and dh0).
template <typename T, int KV>
void bwd_block(const RowView<T>& r, int64_t L, int64_t npad, int64_t n0, int64_t chunk,
               const T* dt, const T* dtu, const T* dy, const T* ckpt, const T* dh_last, T* dh0,
               T* dB0, int64_t dbstep, T* dC0, int64_t dcstep, T* dA, T* y, T* ddt, T* dgu,
               T* hbuf, T* abuf) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  constexpr int64_t KW = KV * W;
  V a[KV], g[KV], dacc[KV];
  for (int k = 0; k < KV; ++k) {
    a[k] = V::loadu(r.A + n0 + k * W);
    g[k] = dh_last ? V::loadu(dh_last + n0 + k * W) : V(T(0));
    dacc[k] = V(T(0));
  }
  StepSums<T> ddt_sums(ddt, L), dgu_sums(dgu, L);
  const int64_t nchunks = (L + chunk - 1) / chunk;
  for (int64_t c = nchunks - 1; c >= 0; --c) {
    const int64_t s0 = c * chunk;
    const int64_t n = imin(chunk, L - s0);
    {  // recompute: hbuf[j] = h before step s0 + j, abuf[j] = exp(dt A) of that step
      V h[KV];
      for (int k = 0; k < KV; ++k) {
        h[k] = V::loadu(ckpt + c * npad + n0 + k * W);
        h[k].store(hbuf + k * W);
      }
      StepSums<T> ys(y, s0 + n);  // chunks start at multiples of W: whole groups but the last
      for (int64_t j = 0; j < n; ++j) {
        const int64_t s = s0 + j;
        const V vdt(dt[s]), vdtu(dtu[s]);
        const T* bs = r.B0 + s * r.bstep + n0;
        const T* cs = r.C0 + s * r.cstep + n0;
        V acc(T(0));
        for (int k = 0; k < KV; ++k) {
          const V ak = vexp(vdt * a[k]);
          ak.store(abuf + j * KW + k * W);
          h[k] = at::vec::fmadd(ak, h[k], vdtu * V::loadu(bs + k * W));
          h[k].store(hbuf + (j + 1) * KW + k * W);
          acc = at::vec::fmadd(h[k], V::loadu(cs + k * W), acc);
        }
        if (y) ys.up(s, acc);
      }
      if (y) ys.finish();
    }
    for (int64_t j = n - 1; j >= 0; --j) {
      const int64_t s = s0 + j;
      const V vdy(dy[s]), vdt(dt[s]), vdtu(dtu[s]);
      const T* bs = r.B0 + s * r.bstep + n0;
      const T* cs = r.C0 + s * r.cstep + n0;
      T* dbs = dB0 + s * dbstep + n0;
      T* dcs = dC0 + s * dcstep + n0;
      V s1(T(0)), s2(T(0));
      for (int k = 0; k < KV; ++k) {
        const V h_s = V::loadu(hbuf + (j + 1) * KW + k * W);
        const V h_prev = V::loadu(hbuf + j * KW + k * W);
        const V ak = V::loadu(abuf + j * KW + k * W);
        at::vec::fmadd(vdy, h_s, V::loadu(dcs + k * W)).store(dcs + k * W);  // dC_s += dy h_s
        g[k] = at::vec::fmadd(vdy, V::loadu(cs + k * W), g[k]);            // dL/dh_s
        at::vec::fmadd(g[k], vdtu, V::loadu(dbs + k * W)).store(dbs + k * W);  // dB_s += g dt u
        s2 = at::vec::fmadd(g[k], V::loadu(bs + k * W), s2);
        const V w = g[k] * ak * h_prev;  // dL/d(dt A) per state
        dacc[k] = at::vec::fmadd(w, vdt, dacc[k]);
        s1 = at::vec::fmadd(w, a[k], s1);
        g[k] = g[k] * ak;  // dL/dh_{s-1} before its own output term
      }
      ddt_sums.down(s, s1);
      dgu_sums.down(s, s2);
    }
  }
  for (int k = 0; k < KV; ++k) {
    dacc[k].store(dA + n0 + k * W);
    if (dh0) g[k].store(dh0 + n0 + k * W);
  }
}

template <typename T>
void scan_fwd_impl(const ScanArgs& a, int64_t row_begin, int64_t row_end) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const int64_t L = a.L;
  Scratch<T> buf(5 * L);
  T* ut = buf.get();
  T* dt = ut + L;
  T* dtu = dt + L;
  T* y = dtu + L;
  T* zt = y + L;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t b = row / a.dim, d = row % a.dim;
    prologue(a, row, d, ut, dt, dtu, static_cast<T*>(nullptr));
    const RowView<T> r = row_view<T>(a, b, d);
    const T* h0 = a.h0 ? static_cast<const T*>(a.h0) + row * a.npad : nullptr;
    T* h_end = static_cast<T*>(a.h_last) + row * a.npad;
    for (int64_t i = 0; i < L; ++i) y[i] = T(0);
    for (int64_t n0 = 0; n0 < a.npad; n0 += kMaxKV * W) {
      with_kv(imin(kMaxKV, (a.npad - n0) / W), [&](auto kv) {
        fwd_block<T, decltype(kv)::value>(r, L, a.npad, n0, dt, dtu, h0, h_end, y, nullptr, L);
      });
    }
    const V Dv(a.D ? static_cast<const T*>(a.D)[d] : T(0));
    if (a.z) load_row(a.io, a.z, row * L, L, zt, a.reverse);
    for (int64_t i = 0; i < L; i += W) {
      const int64_t c = imin(W, L - i);
      V o = at::vec::fmadd(Dv, V::loadu(ut + i, c), V::loadu(y + i, c));
      if (a.z) {
        const V zv = V::loadu(zt + i, c);
        o = o * zv * vsigmoid(zv);
      }
      o.store(y + i, c);
    }
    store_row(a.io, a.out, row * L, L, y, a.reverse);
  }
}

// Backward chunk length: rows up to kWholeRow steps are recomputed in one piece (no checkpoint
// pass; per-thread buffers of at most (2 * kWholeRow + 1) * kMaxKV * W values), longer ones in
// kChunk-step pieces from checkpoints.
inline int64_t bwd_chunk(int64_t L) { return L <= kWholeRow ? L : kChunk; }

template <typename T>
void scan_bwd_row(const ScanArgs& a, int64_t b, int64_t d, int64_t gp, int64_t blk, T* buf) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const int64_t L = a.L, npad = a.npad, row = b * a.dim + d;
  const int64_t chunk = bwd_chunk(L);
  const int64_t nchunks = (L + chunk - 1) / chunk;
  T* ut = buf;
  T* dt = ut + L;
  T* dtu = dt + L;
  T* sig = dtu + L;
  T* y = sig + L;
  T* dy = y + L;
  T* zt = dy + L;
  T* ddt = zt + L;
  T* dgu = ddt + L;
  T* go = dgu + L;
  T* ckpt = go + L;
  T* hbuf = ckpt + nchunks * npad;
  T* abuf = hbuf + (chunk + 1) * kMaxKV * W;

  prologue(a, row, d, ut, dt, dtu, a.softplus ? sig : nullptr);
  const RowView<T> r = row_view<T>(a, b, d);
  const T* h0 = a.h0 ? static_cast<const T*>(a.h0) + row * npad : nullptr;
  for (int64_t n = 0; n < npad; ++n) ckpt[n] = h0 ? h0[n] : T(0);
  for (int64_t i = 0; i < L; ++i) y[i] = ddt[i] = dgu[i] = T(0);
  if (nchunks > 1) {  // checkpoints
    for (int64_t n0 = 0; n0 < npad; n0 += kMaxKV * W) {
      with_kv(imin(kMaxKV, (npad - n0) / W), [&](auto kv) {
        fwd_block<T, decltype(kv)::value>(r, L, npad, n0, dt, dtu, h0, nullptr, nullptr, ckpt,
                                          chunk);
      });
    }
  }
  const T Dd = a.D ? static_cast<const T*>(a.D)[d] : T(0);
  const V Dv(Dd);
  load_row(a.io, a.dout, row * L, L, go, a.reverse);
  if (a.z) {
    load_row(a.io, a.z, row * L, L, zt, a.reverse);
    for (int64_t i = 0; i < L; i += W) {  // dy = dout * silu(z)
      const int64_t c = imin(W, L - i);
      const V zv = V::loadu(zt + i, c);
      (V::loadu(go + i, c) * zv * vsigmoid(zv)).store(dy + i, c);
    }
  } else {
    std::memcpy(dy, go, sizeof(T) * L);
  }
  if (a.dD_part) {
    V acc(T(0));
    for (int64_t i = 0; i < L; i += W) {
      const int64_t c = imin(W, L - i);
      acc = at::vec::fmadd(V::loadu(dy + i, c), V::loadu(ut + i, c), acc);
    }
    static_cast<T*>(a.dD_part)[row] = hsum(acc);
  }

  // dB/dC partial sums: this task's (L, npad) slice for variable B/C, this row's for constant.
  const int64_t part = ((b * a.gpart + gp) * a.nblk + blk) * L * npad;
  T* dB0;
  T* dC0;
  int64_t dbstep, dcstep;
  if (!a.b_var) std::memset(static_cast<T*>(a.dB_part) + row * npad, 0, sizeof(T) * npad);
  if (!a.c_var) std::memset(static_cast<T*>(a.dC_part) + row * npad, 0, sizeof(T) * npad);
  series(static_cast<T*>(a.dB_part) + (a.b_var ? part : row * npad), L, a.b_var ? npad : 0,
         a.reverse, dB0, dbstep);
  series(static_cast<T*>(a.dC_part) + (a.c_var ? part : row * npad), L, a.c_var ? npad : 0,
         a.reverse, dC0, dcstep);
  const T* dh_last = a.dh_last ? static_cast<const T*>(a.dh_last) + row * npad : nullptr;
  T* dh0 = a.dh0 ? static_cast<T*>(a.dh0) + row * npad : nullptr;
  T* dA = static_cast<T*>(a.dA_part) + row * npad;
  for (int64_t n0 = 0; n0 < npad; n0 += kMaxKV * W) {
    with_kv(imin(kMaxKV, (npad - n0) / W), [&](auto kv) {
      bwd_block<T, decltype(kv)::value>(r, L, npad, n0, chunk, dt, dtu, dy, ckpt, dh_last, dh0,
                                        dB0, dbstep, dC0, dcstep, dA, a.z ? y : nullptr, ddt,
                                        dgu, hbuf, abuf);
    });
  }
  if (a.z) {  // dz = dout * (y + D u) * silu'(z), with y from the recompute passes
    for (int64_t i = 0; i < L; i += W) {
      const int64_t c = imin(W, L - i);
      const V zv = V::loadu(zt + i, c);
      const V yv = at::vec::fmadd(Dv, V::loadu(ut + i, c), V::loadu(y + i, c));
      const V sg = vsigmoid(zv);
      (V::loadu(go + i, c) * yv * sg * (V(T(1)) + zv * (V(T(1)) - sg))).store(zt + i, c);
    }
    store_row(a.io, a.dz, row * L, L, zt, a.reverse);
  }

  V dbias(T(0));
  for (int64_t i = 0; i < L; i += W) {  // ut <- du, ddt <- d(delta)
    const int64_t c = imin(W, L - i);
    const V gu = V::loadu(dgu + i, c);
    V gd = at::vec::fmadd(gu, V::loadu(ut + i, c), V::loadu(ddt + i, c));
    if (a.softplus) gd = gd * V::loadu(sig + i, c);
    dbias = dbias + gd;
    gd.store(ddt + i, c);
    at::vec::fmadd(gu, V::loadu(dt + i, c), V::loadu(dy + i, c) * Dv).store(ut + i, c);
  }
  store_row(a.io, a.du, row * L, L, ut, a.reverse);
  store_row(a.io, a.ddelta, row * L, L, ddt, a.reverse);
  if (a.ddb_part) static_cast<T*>(a.ddb_part)[row] = hsum(dbias);
}

template <typename T>
void scan_bwd_impl(const ScanArgs& a, int64_t task_begin, int64_t task_end) {
  constexpr int64_t W = Vec<T>::size();
  const int64_t L = a.L;
  const int64_t chunk = bwd_chunk(L);
  const int64_t nchunks = (L + chunk - 1) / chunk;
  Scratch<T> buf(10 * L + nchunks * a.npad + (2 * chunk + 1) * kMaxKV * W);
  const int64_t dpg = a.dim / a.gpart;
  for (int64_t task = task_begin; task < task_end; ++task) {
    const int64_t b = task / (a.gpart * a.nblk);
    const int64_t gp = (task / a.nblk) % a.gpart;
    const int64_t blk = task % a.nblk;
    const int64_t d0 = gp * dpg + blk * a.rows_per_block;
    const int64_t d1 = imin(d0 + a.rows_per_block, (gp + 1) * dpg);
    const int64_t part = ((b * a.gpart + gp) * a.nblk + blk) * L * a.npad;
    if (a.b_var) std::memset(static_cast<T*>(a.dB_part) + part, 0, sizeof(T) * L * a.npad);
    if (a.c_var) std::memset(static_cast<T*>(a.dC_part) + part, 0, sizeof(T) * L * a.npad);
    for (int64_t d = d0; d < d1; ++d) scan_bwd_row<T>(a, b, d, gp, blk, buf.get());
  }
}

}  // namespace vimd::cpu::CPU_CAPABILITY
