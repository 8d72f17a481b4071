// Plain interface between the tensor-level CPU ops (ops.cpp, baseline ISA) and the kernels
// (scan.h, conv.h), which are compiled once per instruction set (kernels.cpp, built by setup.py
// per ISA inside namespace vimd::cpu::<ISA>). Only raw pointers and sizes cross this boundary, so
// no torch inline function is compiled with different ISA flags in two translation units.
#pragma once

#include <cstdint>

namespace vimd::cpu {

enum class IoType : int32_t { F32 = 0, F64 = 1, F16 = 2, BF16 = 3 };

// Backward: rows of up to kWholeRow steps are recomputed in one piece and walked backwards; on
// longer rows the states are checkpointed every kChunk steps and each chunk is recomputed from its
// checkpoint before it is walked backwards (per-thread buffers stay small; nothing of size
// (batch, dim, L, N) is ever stored).
constexpr int64_t kChunk = 64;
constexpr int64_t kWholeRow = 1024;

// Selective scan. Sizes: u/delta/z/out (batch, dim, L) in `io`; everything else in the compute
// type (double when dbl, else float) with the state axis padded to npad (a multiple of the ISA's
// vector width) with zeros. Variable B/C are laid out (batch, groups, L, npad); constant B/C are
// (dim, npad). Backward tasks are (batch, gpart, nblk) blocks of `rows_per_block` channels
// (gpart = lcm of the groups; the split depends on the shapes only, never on the thread count);
// each task owns a slice of the dB/dC partial sums, which the caller reduces in a fixed order.
struct ScanArgs {
  int64_t batch = 0, dim = 0, L = 0, N = 0, npad = 0;
  int64_t groups_b = 1, groups_c = 1, gpart = 1, nblk = 1, rows_per_block = 1;
  bool b_var = false, c_var = false;
  bool softplus = false, reverse = false, dbl = false;
  IoType io = IoType::F32;
  const void* u = nullptr;
  const void* delta = nullptr;
  const void* z = nullptr;           // or null
  const void* A = nullptr;           // (dim, npad)
  const void* B = nullptr;
  const void* C = nullptr;
  const void* D = nullptr;           // (dim) or null
  const void* delta_bias = nullptr;  // (dim) or null
  const void* h0 = nullptr;          // (batch, dim, npad) or null
  // forward outputs
  void* out = nullptr;     // io
  void* h_last = nullptr;  // (batch, dim, npad)
  // backward inputs / outputs (the kernels zero their own partial-sum slices)
  const void* dout = nullptr;     // io
  const void* dh_last = nullptr;  // (batch, dim, npad) or null
  void* du = nullptr;             // io
  void* ddelta = nullptr;         // io
  void* dz = nullptr;             // io or null
  void* dA_part = nullptr;        // (batch, dim, npad)
  void* dD_part = nullptr;        // (batch, dim) or null
  void* ddb_part = nullptr;       // (batch, dim) or null
  void* dh0 = nullptr;            // (batch, dim, npad) or null
  void* dB_part = nullptr;        // variable: (batch, gpart, nblk, L, npad); constant: (batch, dim, npad)
  void* dC_part = nullptr;
};

// Depthwise causal conv1d of widths 2..kConvMaxWidth. x/out/dout/dx (batch, dim, L) in `io`;
// weight (dim, width), bias (dim), dw_part (batch, dim, width), db_part (batch, dim) in the
// compute type.
constexpr int64_t kConvMaxWidth = 8;
struct ConvArgs {
  int64_t batch = 0, dim = 0, L = 0, width = 0;
  bool silu = false, reverse = false, dbl = false;
  IoType io = IoType::F32;
  const void* x = nullptr;
  const void* weight = nullptr;
  const void* bias = nullptr;  // or null
  void* out = nullptr;
  const void* dout = nullptr;
  void* dx = nullptr;
  void* dw_part = nullptr;
  void* db_part = nullptr;  // or null
};

// Inference steps (update.h): one decoding step per (batch, channel) row, rows independent.
// State update: state (batch, dim, N) in `state_io`, x/dt/z/out (batch, dim) in `io`; A (dim, N),
// B/C (batch, groups, N), D/dt_bias (dim) in the compute type. Channel d reads group
// d / (dim / groups) of B/C.
struct StateUpdateArgs {
  int64_t batch = 0, dim = 0, N = 0, groups_b = 1, groups_c = 1;
  bool softplus = false, dbl = false;
  IoType io = IoType::F32, state_io = IoType::F32;
  void* state = nullptr;
  const void* x = nullptr;
  const void* dt = nullptr;
  const void* z = nullptr;        // or null
  const void* A = nullptr;
  const void* B = nullptr;
  const void* C = nullptr;
  const void* D = nullptr;        // or null
  const void* dt_bias = nullptr;  // or null
  void* out = nullptr;
};

// Conv update: x/out (batch, dim, seqlen) and conv_state (batch, dim, state_len >= width - 1) in
// `io`; weight (dim, width), bias (dim) in the compute type. cache_seqlens (batch) or null: null
// shifts the inputs through conv_state, else conv_state is a circular buffer whose next slot for
// row b is cache_seqlens[b] mod state_len.
struct ConvUpdateArgs {
  int64_t batch = 0, dim = 0, seqlen = 0, width = 0, state_len = 0;
  bool silu = false, dbl = false;
  IoType io = IoType::F32;
  const void* x = nullptr;
  void* conv_state = nullptr;
  const void* weight = nullptr;
  const void* bias = nullptr;              // or null
  const int32_t* cache_seqlens = nullptr;  // or null
  void* out = nullptr;
};

struct KernelTable {
  const char* name;
  int lanes_float;
  int lanes_double;
  void (*scan_fwd)(const ScanArgs&, int64_t row_begin, int64_t row_end);    // rows b*dim + d
  void (*scan_bwd)(const ScanArgs&, int64_t task_begin, int64_t task_end);  // (b, gpart, nblk)
  void (*conv_fwd)(const ConvArgs&, int64_t row_begin, int64_t row_end);
  void (*conv_bwd)(const ConvArgs&, int64_t row_begin, int64_t row_end);
  void (*state_update)(const StateUpdateArgs&, int64_t row_begin, int64_t row_end);
  void (*conv_update)(const ConvUpdateArgs&, int64_t row_begin, int64_t row_end);
};

namespace DEFAULT {
const KernelTable& table();
}
#ifdef VIMD_ISA_AVX2
namespace AVX2 {
const KernelTable& table();
}
#endif
#ifdef VIMD_ISA_AVX512
namespace AVX512 {
const KernelTable& table();
}
#endif

}  // namespace vimd::cpu
