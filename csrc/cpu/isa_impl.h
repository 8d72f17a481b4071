// The CPU kernels, compiled once per instruction set: isa_<name>.cpp includes this file with
// CPU_CAPABILITY=<NAME> (setup.py sets it and the matching -m flags per file), so at::vec picks
// the matching Vectorized<T> and every symbol lands in namespace vimd::cpu::<NAME>.
//
// Layout of the work: one (batch, channel) row at a time; cheap per-time-step quantities
// (softplus, dt*u, gating, conversions) are computed with vectors along L into per-thread
// scratch rows, and the recurrence keeps up to 4 vectors of states in registers while it walks
// L (backwards for reverse=True; nothing is flipped). Compute type: float, or double for
// float64 inputs. Only at::vec and this file's own helpers are used here (see kernels.h).
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>

#include "cpu/kernels.h"

#ifndef CPU_CAPABILITY
#error "compile this through csrc/cpu/isa_<name>.cpp (setup.py defines CPU_CAPABILITY per file)"
#endif

#define VIMD_STR2(x) #x
#define VIMD_STR(x) VIMD_STR2(x)

namespace vimd::cpu::CPU_CAPABILITY {

template <typename T>
using Vec = at::vec::Vectorized<T>;

constexpr int kMaxKV = 4;  // state vectors held in registers per pass

// ----------------------------------------------------------------------------- small helpers

template <typename T>
class Scratch {  // one allocation per task, never per step
 public:
  explicit Scratch(int64_t n) : p_(static_cast<T*>(std::malloc(sizeof(T) * (n > 0 ? n : 1)))) {
    if (p_ == nullptr) throw std::bad_alloc();
  }
  ~Scratch() { std::free(p_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* get() const { return p_; }

 private:
  T* p_;
};

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;
  if (em >= 0x7c00u) return bits_to_float(sign | 0x7f800000u | ((em & 0x3ffu) << 13));  // inf/nan
  if (em >= 0x0400u) return bits_to_float(sign | ((em << 13) + 0x38000000u));           // normal
  return bits_to_float(sign | float_to_bits(static_cast<float>(em) * 5.9604644775390625e-8f));
}

inline uint16_t float_to_half(float f) {  // round to nearest even
  uint32_t x = float_to_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return sign | 0x7c00u | (x > 0x7f800000u ? 0x200u : 0u);  // inf/nan
  if (x >= 0x477ff000u) return sign | 0x7c00u;                                    // overflow
  if (x < 0x38800000u) {  // half subnormal: let the FPU round at 2^-24 granularity
    const float r = bits_to_float(x) + 0.5f;
    return sign | static_cast<uint16_t>(float_to_bits(r) - 0x3f000000u);
  }
  x += 0xc8000fffu + ((x >> 13) & 1u);  // rebias exponent (-112 << 23) and round
  return sign | static_cast<uint16_t>(x >> 13);
}

inline float bf16_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

inline uint16_t float_to_bf16(float f) {  // round to nearest even
  uint32_t x = float_to_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

template <typename T>
void load_row(IoType io, const void* base, int64_t off, int64_t n, T* dst) {
  switch (io) {
    case IoType::F32: {
      const float* p = static_cast<const float*>(base) + off;
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(p[i]);
      break;
    }
    case IoType::F64: {
      const double* p = static_cast<const double*>(base) + off;
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(p[i]);
      break;
    }
    case IoType::F16: {
      const uint16_t* p = static_cast<const uint16_t*>(base) + off;
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(half_to_float(p[i]));
      break;
    }
    case IoType::BF16: {
      const uint16_t* p = static_cast<const uint16_t*>(base) + off;
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(bf16_to_float(p[i]));
      break;
    }
  }
}

template <typename T>
void store_row(IoType io, void* base, int64_t off, int64_t n, const T* src) {
  switch (io) {
    case IoType::F32: {
      float* p = static_cast<float*>(base) + off;
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(src[i]);
      break;
    }
    case IoType::F64: {
      double* p = static_cast<double*>(base) + off;
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<double>(src[i]);
      break;
    }
    case IoType::F16: {
      uint16_t* p = static_cast<uint16_t*>(base) + off;
      for (int64_t i = 0; i < n; ++i) p[i] = float_to_half(static_cast<float>(src[i]));
      break;
    }
    case IoType::BF16: {
      uint16_t* p = static_cast<uint16_t*>(base) + off;
      for (int64_t i = 0; i < n; ++i) p[i] = float_to_bf16(static_cast<float>(src[i]));
      break;
    }
  }
}

// exp of the recurrence: the inline polynomial (about 20 ulp) for float, Sleef for double.
template <typename T>
inline Vec<T> vexp(const Vec<T>& x) {
  if constexpr (std::is_same_v<T, float>) {
    return x.exp_u20();
  } else {
    return x.exp();
  }
}

template <typename T>
inline T hsum(const Vec<T>& v) {
  return at::vec::vec_reduce_all<T>([](const Vec<T>& a, const Vec<T>& b) { return a + b; }, v);
}

template <typename T>
inline Vec<T> vsigmoid(const Vec<T>& x) {
  return Vec<T>(T(1)) / (Vec<T>(T(1)) + x.neg().exp());
}

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

// ----------------------------------------------------------------------------- selective scan

template <typename T>
struct RowView {  // the parameters of one (batch, channel) row; B_t = B + t * bstep
  const T* A;
  const T* B;
  int64_t bstep;
  const T* C;
  int64_t cstep;
};

template <typename T>
RowView<T> row_view(const ScanArgs& a, int64_t b, int64_t d) {
  RowView<T> r{};
  r.A = static_cast<const T*>(a.A) + d * a.npad;
  if (a.b_var) {
    const int64_t g = d / (a.dim / a.groups_b);
    r.B = static_cast<const T*>(a.B) + (b * a.groups_b + g) * a.L * a.npad;
    r.bstep = a.npad;
  } else {
    r.B = static_cast<const T*>(a.B) + d * a.npad;
    r.bstep = 0;
  }
  if (a.c_var) {
    const int64_t g = d / (a.dim / a.groups_c);
    r.C = static_cast<const T*>(a.C) + (b * a.groups_c + g) * a.L * a.npad;
    r.cstep = a.npad;
  } else {
    r.C = static_cast<const T*>(a.C) + d * a.npad;
    r.cstep = 0;
  }
  return r;
}

// ut = u, dt = softplus(delta + delta_bias) (sig = its derivative, when sig != null), dtu = dt*u.
template <typename T>
void prologue(const ScanArgs& a, int64_t row, int64_t d, T* ut, T* dt, T* dtu, T* sig) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const int64_t L = a.L;
  load_row(a.io, a.u, row * L, L, ut);
  load_row(a.io, a.delta, row * L, L, dt);
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

// Scans the states [n0, n0 + KV*W) of one row from h0 (null: zeros): y[t] (+)= <h_t, C_t>;
// h at every kChunk-th step boundary goes to ckpt[(s / kChunk) * npad + n] when ckpt != null;
// the final state to h_end when h_end != null.
template <typename T, int KV>
void fwd_block(const RowView<T>& r, int64_t L, bool reverse, int64_t npad, int64_t n0,
               const T* dt, const T* dtu, const T* h0, T* h_end, T* y, bool accumulate, T* ckpt) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  V a[KV], h[KV];
  for (int k = 0; k < KV; ++k) {
    a[k] = V::loadu(r.A + n0 + k * W);
    h[k] = h0 ? V::loadu(h0 + n0 + k * W) : V(T(0));
  }
  const T* Bp = r.B + n0;
  const T* Cp = r.C + n0;
  for (int64_t s = 0; s < L; ++s) {
    const int64_t t = reverse ? L - 1 - s : s;
    const V vdt(dt[t]), vdtu(dtu[t]);
    const T* bt = Bp + t * r.bstep;
    const T* ct = Cp + t * r.cstep;
    V acc(T(0));
    for (int k = 0; k < KV; ++k) {
      h[k] = at::vec::fmadd(vexp(vdt * a[k]), h[k], vdtu * V::loadu(bt + k * W));
      acc = at::vec::fmadd(h[k], V::loadu(ct + k * W), acc);
    }
    if (y) {
      const T yt = hsum(acc);
      y[t] = accumulate ? y[t] + yt : yt;
    }
    if (ckpt && (s + 1) % kChunk == 0 && s + 1 < L) {
      T* dst = ckpt + ((s + 1) / kChunk) * npad + n0;
      for (int k = 0; k < KV; ++k) h[k].store(dst + k * W);
    }
  }
  if (h_end) {
    for (int k = 0; k < KV; ++k) h[k].store(h_end + n0 + k * W);
  }
}

// Walks the states [n0, n0 + KV*W) of one row backwards, chunk by chunk: each chunk's states are
// recomputed from its checkpoint into hbuf/abuf (L1-sized), then walked back in time.
// g is the gradient of the loss w.r.t. h_t (it starts at dh_last). Accumulates dB_t, dC_t (into
// dB + t*dbstep, dC + t*dcstep), ddt[t], dgu[t] (gradient w.r.t. dt*u); writes dA (and dh0).
template <typename T, int KV>
void bwd_block(const RowView<T>& r, int64_t L, bool reverse, int64_t npad, int64_t n0,
               const T* dt, const T* dtu, const T* dy, const T* ckpt, const T* dh_last, T* dh0,
               T* dB, int64_t dbstep, T* dC, int64_t dcstep, T* dA, T* ddt, T* dgu, T* hbuf,
               T* abuf) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  constexpr int64_t KW = KV * W;
  V a[KV], g[KV], dacc[KV];
  for (int k = 0; k < KV; ++k) {
    a[k] = V::loadu(r.A + n0 + k * W);
    g[k] = dh_last ? V::loadu(dh_last + n0 + k * W) : V(T(0));
    dacc[k] = V(T(0));
  }
  const T* Bp = r.B + n0;
  const T* Cp = r.C + n0;
  const int64_t nchunks = (L + kChunk - 1) / kChunk;
  for (int64_t c = nchunks - 1; c >= 0; --c) {
    const int64_t s0 = c * kChunk;
    const int64_t n = imin(kChunk, L - s0);
    {  // recompute: hbuf[j] = h before step s0 + j, abuf[j] = exp(dt A) of that step
      V h[KV];
      for (int k = 0; k < KV; ++k) {
        h[k] = V::loadu(ckpt + c * npad + n0 + k * W);
        h[k].store(hbuf + k * W);
      }
      for (int64_t j = 0; j < n; ++j) {
        const int64_t t = reverse ? L - 1 - (s0 + j) : s0 + j;
        const V vdt(dt[t]), vdtu(dtu[t]);
        const T* bt = Bp + t * r.bstep;
        for (int k = 0; k < KV; ++k) {
          const V ak = vexp(vdt * a[k]);
          ak.store(abuf + j * KW + k * W);
          h[k] = at::vec::fmadd(ak, h[k], vdtu * V::loadu(bt + k * W));
          h[k].store(hbuf + (j + 1) * KW + k * W);
        }
      }
    }
    for (int64_t j = n - 1; j >= 0; --j) {
      const int64_t t = reverse ? L - 1 - (s0 + j) : s0 + j;
      const V vdy(dy[t]), vdt(dt[t]), vdtu(dtu[t]);
      const T* bt = Bp + t * r.bstep;
      const T* ct = Cp + t * r.cstep;
      T* dbt = dB + n0 + t * dbstep;
      T* dct = dC + n0 + t * dcstep;
      V s1(T(0)), s2(T(0));
      for (int k = 0; k < KV; ++k) {
        const V h_t = V::loadu(hbuf + (j + 1) * KW + k * W);
        const V h_prev = V::loadu(hbuf + j * KW + k * W);
        const V ak = V::loadu(abuf + j * KW + k * W);
        at::vec::fmadd(vdy, h_t, V::loadu(dct + k * W)).store(dct + k * W);  // dC_t += dy h_t
        g[k] = at::vec::fmadd(vdy, V::loadu(ct + k * W), g[k]);            // dL/dh_t
        at::vec::fmadd(g[k], vdtu, V::loadu(dbt + k * W)).store(dbt + k * W);  // dB_t += g dt u
        s2 = at::vec::fmadd(g[k], V::loadu(bt + k * W), s2);
        const V w = g[k] * ak * h_prev;  // dL/d(dt A) per state
        dacc[k] = at::vec::fmadd(w, vdt, dacc[k]);
        s1 = at::vec::fmadd(w, a[k], s1);
        g[k] = g[k] * ak;  // dL/dh_{t-1} before its own output term
      }
      ddt[t] += hsum(s1);
      dgu[t] += hsum(s2);
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
    for (int64_t n0 = 0; n0 < a.npad; n0 += kMaxKV * W) {
      with_kv(imin(kMaxKV, (a.npad - n0) / W), [&](auto kv) {
        fwd_block<T, decltype(kv)::value>(r, L, a.reverse, a.npad, n0, dt, dtu, h0, h_end, y,
                                          n0 > 0, nullptr);
      });
    }
    const V Dv(a.D ? static_cast<const T*>(a.D)[d] : T(0));
    if (a.z) load_row(a.io, a.z, row * L, L, zt);
    for (int64_t i = 0; i < L; i += W) {
      const int64_t c = imin(W, L - i);
      V o = at::vec::fmadd(Dv, V::loadu(ut + i, c), V::loadu(y + i, c));
      if (a.z) {
        const V zv = V::loadu(zt + i, c);
        o = o * zv * vsigmoid(zv);
      }
      o.store(y + i, c);
    }
    store_row(a.io, a.out, row * L, L, y);
  }
}

template <typename T>
void scan_bwd_row(const ScanArgs& a, int64_t b, int64_t d, int64_t gp, int64_t blk, T* buf) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const int64_t L = a.L, npad = a.npad, row = b * a.dim + d;
  const int64_t nchunks = (L + kChunk - 1) / kChunk;
  T* ut = buf;
  T* dt = ut + L;
  T* dtu = dt + L;
  T* sig = dtu + L;
  T* y = sig + L;
  T* dy = y + L;
  T* zt = dy + L;
  T* ddt = zt + L;
  T* dgu = ddt + L;
  T* ckpt = dgu + L;
  T* hbuf = ckpt + nchunks * npad;
  T* abuf = hbuf + (kChunk + 1) * kMaxKV * W;

  prologue(a, row, d, ut, dt, dtu, a.softplus ? sig : nullptr);
  const RowView<T> r = row_view<T>(a, b, d);
  const T* h0 = a.h0 ? static_cast<const T*>(a.h0) + row * npad : nullptr;
  for (int64_t n = 0; n < npad; ++n) ckpt[n] = h0 ? h0[n] : T(0);
  if (a.z || nchunks > 1) {  // checkpoints, and y when z gates the output
    for (int64_t n0 = 0; n0 < npad; n0 += kMaxKV * W) {
      with_kv(imin(kMaxKV, (npad - n0) / W), [&](auto kv) {
        fwd_block<T, decltype(kv)::value>(r, L, a.reverse, npad, n0, dt, dtu, h0, nullptr,
                                          a.z ? y : nullptr, n0 > 0, ckpt);
      });
    }
  }
  const T Dd = a.D ? static_cast<const T*>(a.D)[d] : T(0);
  const V Dv(Dd);
  load_row(a.io, a.dout, row * L, L, dy);
  if (a.z) {
    load_row(a.io, a.z, row * L, L, zt);
    for (int64_t i = 0; i < L; i += W) {  // zt <- dz, dy <- dout * silu(z)
      const int64_t c = imin(W, L - i);
      const V zv = V::loadu(zt + i, c), go = V::loadu(dy + i, c);
      const V yv = at::vec::fmadd(Dv, V::loadu(ut + i, c), V::loadu(y + i, c));
      const V sg = vsigmoid(zv);
      const V dsilu = sg * (V(T(1)) + zv * (V(T(1)) - sg));
      (go * yv * dsilu).store(zt + i, c);
      (go * zv * sg).store(dy + i, c);
    }
    store_row(a.io, a.dz, row * L, L, zt);
  }
  if (a.dD_part) {
    V acc(T(0));
    for (int64_t i = 0; i < L; i += W) {
      const int64_t c = imin(W, L - i);
      acc = at::vec::fmadd(V::loadu(dy + i, c), V::loadu(ut + i, c), acc);
    }
    static_cast<T*>(a.dD_part)[row] = hsum(acc);
  }
  for (int64_t i = 0; i < L; ++i) ddt[i] = dgu[i] = T(0);

  T* dB;
  T* dC;
  int64_t dbstep, dcstep;
  const int64_t part = ((b * a.gpart + gp) * a.nblk + blk) * L * npad;
  if (a.b_var) {
    dB = static_cast<T*>(a.dB_part) + part;
    dbstep = npad;
  } else {
    dB = static_cast<T*>(a.dB_part) + row * npad;
    dbstep = 0;
    std::memset(dB, 0, sizeof(T) * npad);
  }
  if (a.c_var) {
    dC = static_cast<T*>(a.dC_part) + part;
    dcstep = npad;
  } else {
    dC = static_cast<T*>(a.dC_part) + row * npad;
    dcstep = 0;
    std::memset(dC, 0, sizeof(T) * npad);
  }
  const T* dh_last = a.dh_last ? static_cast<const T*>(a.dh_last) + row * npad : nullptr;
  T* dh0 = a.dh0 ? static_cast<T*>(a.dh0) + row * npad : nullptr;
  T* dA = static_cast<T*>(a.dA_part) + row * npad;
  for (int64_t n0 = 0; n0 < npad; n0 += kMaxKV * W) {
    with_kv(imin(kMaxKV, (npad - n0) / W), [&](auto kv) {
      bwd_block<T, decltype(kv)::value>(r, L, a.reverse, npad, n0, dt, dtu, dy, ckpt, dh_last,
                                        dh0, dB, dbstep, dC, dcstep, dA, ddt, dgu, hbuf, abuf);
    });
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
  store_row(a.io, a.du, row * L, L, ut);
  store_row(a.io, a.ddelta, row * L, L, ddt);
  if (a.ddb_part) static_cast<T*>(a.ddb_part)[row] = hsum(dbias);
}

template <typename T>
void scan_bwd_impl(const ScanArgs& a, int64_t task_begin, int64_t task_end) {
  constexpr int64_t W = Vec<T>::size();
  const int64_t L = a.L;
  const int64_t nchunks = (L + kChunk - 1) / kChunk;
  Scratch<T> buf(9 * L + nchunks * a.npad + (2 * kChunk + 1) * kMaxKV * W);
  const int64_t dpg = a.dim / a.gpart;
  for (int64_t task = task_begin; task < task_end; ++task) {
    const int64_t b = task / (a.gpart * a.nblk);
    const int64_t gp = (task / a.nblk) % a.gpart;
    const int64_t blk = task % a.nblk;
    const int64_t d0 = gp * dpg + blk * a.rows_per_block;
    const int64_t d1 = imin(d0 + a.rows_per_block, (gp + 1) * dpg);
    const int64_t part = ((b * a.gpart + gp) * a.nblk + blk) * L * a.npad;
    for (T* p : {a.b_var ? static_cast<T*>(a.dB_part) + part : nullptr,
                 a.c_var ? static_cast<T*>(a.dC_part) + part : nullptr}) {
      if (p) std::memset(p, 0, sizeof(T) * L * a.npad);
    }
    for (int64_t d = d0; d < d1; ++d) scan_bwd_row<T>(a, b, d, gp, blk, buf.get());
  }
}

// ----------------------------------------------------------------------------- causal conv1d
// out[t] = act(bias + sum_j wr[j] * xs[t + j]) where xs is the row zero-padded by width-1 in front
// (causal, wr = w) or behind (reverse, wr = w reversed).

template <typename T>
void conv_load_padded(const ConvArgs& a, int64_t row, T* xs, T* wr) {
  const int64_t L = a.L, P = a.width - 1;
  const T* w = static_cast<const T*>(a.weight) + (row % a.dim) * a.width;
  for (int64_t j = 0; j < a.width; ++j) wr[j] = a.reverse ? w[a.width - 1 - j] : w[j];
  T* pad = a.reverse ? xs + L : xs;
  for (int64_t j = 0; j < P; ++j) pad[j] = T(0);
  load_row(a.io, a.x, row * L, L, a.reverse ? xs : xs + P);
}

template <typename T>
inline Vec<T> conv_preact(const T* xs, const T* wr, int64_t width, T bias, int64_t i, int64_t c) {
  Vec<T> acc(bias);
  for (int64_t j = 0; j < width; ++j) acc = at::vec::fmadd(Vec<T>(wr[j]), Vec<T>::loadu(xs + i + j, c), acc);
  return acc;
}

template <typename T>
void conv_fwd_impl(const ConvArgs& a, int64_t row_begin, int64_t row_end) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const int64_t L = a.L, P = a.width - 1;
  Scratch<T> buf(2 * L + P);
  T* xs = buf.get();
  T* o = xs + L + P;
  T wr[8];
  for (int64_t row = row_begin; row < row_end; ++row) {
    conv_load_padded(a, row, xs, wr);
    const T bias = a.bias ? static_cast<const T*>(a.bias)[row % a.dim] : T(0);
    for (int64_t i = 0; i < L; i += W) {
      const int64_t c = imin(W, L - i);
      V s = conv_preact(xs, wr, a.width, bias, i, c);
      if (a.silu) s = s * vsigmoid(s);
      s.store(o + i, c);
    }
    store_row(a.io, a.out, row * L, L, o);
  }
}

template <typename T>
void conv_bwd_impl(const ConvArgs& a, int64_t row_begin, int64_t row_end) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const int64_t L = a.L, P = a.width - 1;
  Scratch<T> buf(3 * L + 2 * P);
  T* xs = buf.get();
  T* dsp = xs + L + P;  // d(pre-activation), zero-padded on the side opposite to xs's padding
  T* go = dsp + L + P;
  T wr[8], wd[8];
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t d = row % a.dim;
    conv_load_padded(a, row, xs, wr);
    for (int64_t j = 0; j < a.width; ++j) wd[j] = wr[a.width - 1 - j];
    const T bias = a.bias ? static_cast<const T*>(a.bias)[d] : T(0);
    T* ds = a.reverse ? dsp + P : dsp;
    T* pad = a.reverse ? dsp : dsp + L;
    for (int64_t j = 0; j < P; ++j) pad[j] = T(0);
    load_row(a.io, a.dout, row * L, L, go);
    V db(T(0));
    for (int64_t i = 0; i < L; i += W) {
      const int64_t c = imin(W, L - i);
      V g = V::loadu(go + i, c);
      if (a.silu) {
        const V s = conv_preact(xs, wr, a.width, bias, i, c);
        const V sg = vsigmoid(s);
        g = g * sg * (V(T(1)) + s * (V(T(1)) - sg));
      }
      db = db + g;
      g.store(ds + i, c);
    }
    T* dw = static_cast<T*>(a.dw_part) + row * a.width;
    for (int64_t j = 0; j < a.width; ++j) {  // d wr[j] = sum_t ds[t] xs[t + j]
      V acc(T(0));
      for (int64_t i = 0; i < L; i += W) {
        const int64_t c = imin(W, L - i);
        acc = at::vec::fmadd(V::loadu(ds + i, c), V::loadu(xs + i + j, c), acc);
      }
      dw[a.reverse ? a.width - 1 - j : j] = hsum(acc);
    }
    if (a.db_part) static_cast<T*>(a.db_part)[row] = hsum(db);
    for (int64_t i = 0; i < L; i += W) {  // dx[i] = sum_j wd[j] dsp[i + j]
      const int64_t c = imin(W, L - i);
      conv_preact(dsp, wd, a.width, T(0), i, c).store(go + i, c);
    }
    store_row(a.io, a.dx, row * L, L, go);
  }
}

// ----------------------------------------------------------------------------- entry points

void scan_fwd(const ScanArgs& a, int64_t b, int64_t e) {
  if (a.dbl) scan_fwd_impl<double>(a, b, e); else scan_fwd_impl<float>(a, b, e);
}
void scan_bwd(const ScanArgs& a, int64_t b, int64_t e) {
  if (a.dbl) scan_bwd_impl<double>(a, b, e); else scan_bwd_impl<float>(a, b, e);
}
void conv_fwd(const ConvArgs& a, int64_t b, int64_t e) {
  if (a.dbl) conv_fwd_impl<double>(a, b, e); else conv_fwd_impl<float>(a, b, e);
}
void conv_bwd(const ConvArgs& a, int64_t b, int64_t e) {
  if (a.dbl) conv_bwd_impl<double>(a, b, e); else conv_bwd_impl<float>(a, b, e);
}

const KernelTable& table() {
  static const KernelTable t{VIMD_STR(CPU_CAPABILITY), static_cast<int>(Vec<float>::size()),
                             static_cast<int>(Vec<double>::size()), &scan_fwd, &scan_bwd,
                             &conv_fwd, &conv_bwd};
  return t;
}

}  // namespace vimd::cpu::CPU_CAPABILITY
