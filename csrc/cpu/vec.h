// Vector and row helpers shared by the CPU kernels (scan.h, conv.h), compiled once per
// instruction set: kernels.cpp includes them with CPU_CAPABILITY=<NAME> (setup.py sets it and the
// matching -m flags), so at::vec picks the matching Vectorized<T> and every symbol lands in
// namespace vimd::cpu::<NAME>. Only at::vec and these helpers are used by the kernels (see
// kernels.h).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdlib>
#include <cstring>
#include <new>

#include "cpu/kernels.h"

#ifndef CPU_CAPABILITY
#error "compile this through csrc/cpu/kernels.cpp (setup.py defines CPU_CAPABILITY per build of it)"
#endif

namespace vimd::cpu::CPU_CAPABILITY {

template <typename T>
using Vec = at::vec::Vectorized<T>;

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

// Converts n elements of a row into the compute type; rev=true stores them in reverse order (the
// per-row scratch of a reverse scan is kept in step order, so the tensors are never flipped).
template <typename T>
void load_row(IoType io, const void* base, int64_t off, int64_t n, T* dst, bool rev = false) {
  if (rev) {
    load_row(io, base, off, n, dst, false);
    for (int64_t i = 0, j = n - 1; i < j; ++i, --j) {
      const T tmp = dst[i];
      dst[i] = dst[j];
      dst[j] = tmp;
    }
    return;
  }
  if ((io == IoType::F32 && sizeof(T) == 4) || (io == IoType::F64 && sizeof(T) == 8)) {
    std::memcpy(dst, static_cast<const T*>(base) + off, sizeof(T) * n);
    return;
  }
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

// Stores n compute-type values into a row (reversing them when rev; src is then used as scratch).
template <typename T>
void store_row(IoType io, void* base, int64_t off, int64_t n, T* src, bool rev = false) {
  if (rev) {
    for (int64_t i = 0, j = n - 1; i < j; ++i, --j) {
      const T tmp = src[i];
      src[i] = src[j];
      src[j] = tmp;
    }
  }
  if ((io == IoType::F32 && sizeof(T) == 4) || (io == IoType::F64 && sizeof(T) == 8)) {
    std::memcpy(static_cast<T*>(base) + off, src, sizeof(T) * n);
    return;
  }
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

template <typename T>
inline T hsum(const Vec<T>& v) {
  return at::vec::vec_reduce_all<T>([](const Vec<T>& a, const Vec<T>& b) { return a + b; }, v);
}

template <typename T>
inline Vec<T> vsigmoid(const Vec<T>& x) {
  return Vec<T>(T(1)) / (Vec<T>(T(1)) + x.neg().exp());
}

}  // namespace vimd::cpu::CPU_CAPABILITY
