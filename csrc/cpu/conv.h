// The depthwise causal conv1d's CPU kernels (per instruction set: see vec.h): one (batch,
// channel) row at a time, vectorised along L; compute type float, or double for float64 inputs.
//
// out[t] = act(bias + sum_j wr[j] * xs[t + j]) where xs is the row zero-padded by width-1 in front
// (causal, wr = w) or behind (reverse, wr = w reversed).
#pragma once

#include "cpu/vec.h"

namespace vimd::cpu::CPU_CAPABILITY {

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
  T wr[kConvMaxWidth];
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
  T wr[kConvMaxWidth], wd[kConvMaxWidth];
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

}  // namespace vimd::cpu::CPU_CAPABILITY
