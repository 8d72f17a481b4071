// The inference steps' CPU kernels (per instruction set: see vec.h): one decoding step of the
// selective scan and of the depthwise causal conv1d, one (batch, channel) row at a time; compute
// type float, or double for float64 inputs.
//
// State update: dt = softplus(dt + dt_bias); h = exp(dt A) h + dt B x, vectorised over the N
// states; out = (<h, C> + D x) silu(z), from h before it is rounded to the state's dtype.
// Conv update: x_ext = (the width - 1 previous inputs, x); out[t] = act(bias + sum_k w[k]
// x_ext[t + k]); conv_state then shifted (or, as a circular buffer, overwritten) with x.
#pragma once

#include <cmath>

#include "cpu/vec.h"

namespace vimd::cpu::CPU_CAPABILITY {

template <typename T>
inline T load_one(IoType io, const void* base, int64_t off) {
  T v;
  load_row(io, base, off, 1, &v);
  return v;
}

template <typename T>
inline T softplus_one(T v) {  // torch's softplus (threshold 20: identity above)
  return v > T(20) ? v : std::log1p(std::exp(v));
}

template <typename T>
void state_update_impl(const StateUpdateArgs& a, int64_t row_begin, int64_t row_end) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const int64_t N = a.N;
  Scratch<T> buf(N);
  T* h = buf.get();
  const T* A = static_cast<const T*>(a.A);
  const T* Bs = static_cast<const T*>(a.B);
  const T* Cs = static_cast<const T*>(a.C);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t b = row / a.dim, d = row % a.dim;
    const T* Brow = Bs + (b * a.groups_b + d / (a.dim / a.groups_b)) * N;
    const T* Crow = Cs + (b * a.groups_c + d / (a.dim / a.groups_c)) * N;
    const T* Arow = A + d * N;
    const T x = load_one<T>(a.io, a.x, row);
    T dt = load_one<T>(a.io, a.dt, row);
    if (a.dt_bias) dt += static_cast<const T*>(a.dt_bias)[d];
    if (a.softplus) dt = softplus_one(dt);
    load_row(a.state_io, a.state, row * N, N, h);
    const V vdt(dt), vdtx(dt * x);
    V acc(T(0));
    for (int64_t n = 0; n < N; n += W) {
      const int64_t c = imin(W, N - n);
      const V hn = V::loadu(h + n, c) * (vdt * V::loadu(Arow + n, c)).exp() + vdtx * V::loadu(Brow + n, c);
      hn.store(h + n, c);
      acc = at::vec::fmadd(hn, V::loadu(Crow + n, c), acc);  // lanes past c hold zeros (loadu(p, c))
    }
    store_row(a.state_io, a.state, row * N, N, h);
    T out = hsum(acc);
    if (a.D) out += static_cast<const T*>(a.D)[d] * x;
    if (a.z) {
      const T z = load_one<T>(a.io, a.z, row);
      out *= z / (T(1) + std::exp(-z));
    }
    store_row(a.io, a.out, row, 1, &out);
  }
}

inline int64_t floor_mod(int64_t v, int64_t m) { return ((v % m) + m) % m; }

template <typename T>
void conv_update_impl(const ConvUpdateArgs& a, int64_t row_begin, int64_t row_end) {
  const int64_t S = a.state_len, P = a.width - 1, L = a.seqlen;
  Scratch<T> buf(S + 2 * L + P + S);
  T* st = buf.get();   // the row's conv_state (S)
  T* xe = st + S;      // x_ext (P + L)
  T* o = xe + P + L;   // outputs (L)
  T* ns = o + L;       // the new conv_state (S)
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t b = row / a.dim, d = row % a.dim;
    load_row(a.io, a.conv_state, row * S, S, st);
    const bool circular = a.cache_seqlens != nullptr;
    const int64_t pos = circular ? static_cast<int64_t>(a.cache_seqlens[b]) : 0;
    for (int64_t k = 0; k < P; ++k) xe[k] = st[circular ? floor_mod(pos - P + k, S) : S - P + k];
    load_row(a.io, a.x, row * L, L, xe + P);
    const T* w = static_cast<const T*>(a.weight) + d * a.width;
    const T bias = a.bias ? static_cast<const T*>(a.bias)[d] : T(0);
    for (int64_t t = 0; t < L; ++t) {
      T s = bias;
      for (int64_t k = 0; k < a.width; ++k) s += w[k] * xe[t + k];
      o[t] = a.silu ? s / (T(1) + std::exp(-s)) : s;
    }
    store_row(a.io, a.out, row * L, L, o);
    const T* xs = xe + P;
    if (circular) {  // the last min(L, S) inputs, a later one winning a slot
      for (int64_t t = L - imin(L, S); t < L; ++t) st[floor_mod(pos + t, S)] = xs[t];
      store_row(a.io, a.conv_state, row * S, S, st);
    } else {  // the last S entries of (conv_state, x)
      for (int64_t j = 0; j < S; ++j) ns[j] = L + j < S ? st[L + j] : xs[L + j - S];
      store_row(a.io, a.conv_state, row * S, S, ns);
    }
  }
}

}  // namespace vimd::cpu::CPU_CAPABILITY
