// Tensor-level CPU ops (argument checks, packing, allocation, dispatch to the kernels of the
// selected instruction set, ordered reductions), registered with torch's dispatcher (the table at
// the end); compiled with the baseline ISA. See vimd_kernels/ops.py for the contract; grads come
// back in the dtype and shape of their input, undefined for absent inputs. The kernels behind them
// are chosen at run time among the compiled instruction sets, capped by what torch reports for
// this CPU (at::get_cpu_capability(), which also honours ATEN_CPU_CAPABILITY=default|avx2|avx512).
#include "cpu/ops.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/update_ops.h"

namespace vimd::cpu {
namespace {

using OptTensor = std::optional<at::Tensor>;

constexpr int64_t kTargetTasks = 128;

struct Isa {
  const char* name;
  const KernelTable& (*table)();
  int rank;
};

const Isa kIsas[] = {
    {"default", &DEFAULT::table, 0},
#ifdef VIMD_ISA_AVX2
    {"avx2", &AVX2::table, 1},
#endif
#ifdef VIMD_ISA_AVX512
    {"avx512", &AVX512::table, 2},
#endif
};

int hardware_rank() {
  const std::string cap = at::get_cpu_capability();
  if (cap.find("AVX512") != std::string::npos) return 2;
  if (cap.find("AVX2") != std::string::npos) return 1;
  return 0;
}

const Isa* best_isa() {
  const int hw = hardware_rank();
  const Isa* best = &kIsas[0];
  for (const Isa& isa : kIsas) {
    if (isa.rank <= hw && isa.rank > best->rank) best = &isa;
  }
  return best;
}

std::atomic<const Isa*> g_active{nullptr};

const Isa& active() {
  const Isa* isa = g_active.load();
  if (isa == nullptr) {
    isa = best_isa();
    g_active.store(isa);
  }
  return *isa;
}

// Below this many inner steps (state vectors x time steps) a call runs on the calling thread:
// waking the other threads costs more than it saves, and on a busy machine it can cost a whole
// scheduler time slice.
constexpr int64_t kParallelWork = int64_t(1) << 16;

// Runs fn(begin, end) over [0, n) on torch's intra-op threads, handing out pieces of `grab` items
// dynamically: on a busy machine a thread the OS deschedules holds up at most one piece (a static
// split would make everyone wait for its whole share). Results never depend on which thread runs
// which piece: every item writes its own outputs. `work` estimates the total inner steps.
template <typename F>
void run_dynamic(int64_t n, int64_t grab, int64_t work, const F& fn) {
  if (work < kParallelWork || at::get_num_threads() == 1) {
    fn(0, n);
    return;
  }
  std::atomic<int64_t> next{0};
  const int64_t nthreads = std::min<int64_t>(at::get_num_threads(), (n + grab - 1) / grab);
  at::parallel_for(0, std::max<int64_t>(nthreads, 1), 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(grab); i < n; i = next.fetch_add(grab)) {
      fn(i, std::min(i + grab, n));
    }
  });
}

// Rows per piece: about 16 pieces per thread.
int64_t row_grab(int64_t rows) {
  return std::max<int64_t>(1, rows / (16 * std::max(1, at::get_num_threads())));
}

IoType io_type(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return IoType::F32;
    case at::kDouble: return IoType::F64;
    case at::kHalf: return IoType::F16;
    case at::kBFloat16: return IoType::BF16;
    default: TORCH_CHECK(false, name, " must be float32, float16, bfloat16 or float64, got ", t.scalar_type());
  }
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), name, " is undefined");
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
}

void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  check_cpu(t, name);
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
}

void check_io(const at::Tensor& t, const char* name, const at::Tensor& ref) {
  check_shape(t, name, ref.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " must have dtype ", ref.scalar_type(),
              ", got ", t.scalar_type());
}

// Last axis zero-padded to npad, in the compute type.
at::Tensor pad_last(const at::Tensor& t, int64_t npad, at::ScalarType ct) {
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
  const int64_t n = shape.back();
  shape.back() = npad;
  at::Tensor out = at::zeros(shape, t.options().dtype(ct));
  out.narrow(-1, 0, n).copy_(t);
  return out;
}

// B/C in the compute type with the states padded: constant (dim, npad) or (batch, G, L, npad).
at::Tensor pack_bc(const at::Tensor& X, int64_t npad, at::ScalarType ct) {
  if (X.dim() == 2) return pad_last(X, npad, ct);
  const at::Tensor g = X.dim() == 3 ? X.unsqueeze(1) : X;  // (batch, G, N, L)
  return pad_last(g.transpose(2, 3), npad, ct);
}

void check_bc(const at::Tensor& X, const char* name, int64_t batch, int64_t dim, int64_t N,
              int64_t L, at::ScalarType io, at::ScalarType ct) {
  check_cpu(X, name);
  TORCH_CHECK(X.scalar_type() == io || X.scalar_type() == ct, name, " must have dtype ", io,
              " or ", ct, ", got ", X.scalar_type());
  if (X.dim() == 2) {
    check_shape(X, name, {dim, N});
  } else if (X.dim() == 3) {
    check_shape(X, name, {batch, N, L});
  } else {
    TORCH_CHECK(X.dim() == 4 && X.size(1) >= 1 && dim % X.size(1) == 0, name,
                " must be (dim, N), (batch, N, L) or (batch, G, N, L) with G dividing dim, got ",
                X.sizes());
    check_shape(X, name, {batch, X.size(1), N, L});
  }
}

int64_t groups_of(const at::Tensor& X) { return X.dim() == 4 ? X.size(1) : 1; }

// Sum over dim 0 in index order, so the result does not depend on the number of threads.
at::Tensor ordered_sum0(const at::Tensor& t) {
  at::Tensor acc = t.select(0, 0).clone();
  for (int64_t i = 1; i < t.size(0); ++i) acc.add_(t.select(0, i));
  return acc;
}

const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }
void* mut_ptr_or_null(at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

at::Tensor param(const OptTensor& t, const char* name, at::IntArrayRef shape, at::ScalarType ct) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  check_shape(*t, name, shape);
  TORCH_CHECK(t->scalar_type() == ct, name, " must have dtype ", ct, ", got ", t->scalar_type());
  return t->contiguous();
}

// The fields the scan and conv arguments share: the (batch, dim, L) sizes and element type of
// the first input, the direction and the compute type.
template <typename Args>
void set_common_args(Args& a, const at::Tensor& first, const char* name, at::ScalarType ct,
                     bool reverse) {
  a.batch = first.size(0);
  a.dim = first.size(1);
  a.L = first.size(2);
  a.reverse = reverse;
  a.dbl = ct == at::kDouble;
  a.io = io_type(first, name);
}

struct ScanSetup {
  ScanArgs args;
  at::Tensor u, delta, z, A, B, C, D, delta_bias, h0;  // owners of the pointers in args
};

ScanSetup setup_scan(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                     const at::Tensor& B, const at::Tensor& C, const OptTensor& D,
                     const OptTensor& z, const OptTensor& delta_bias,
                     const OptTensor& initial_state, bool softplus, bool reverse) {
  check_cpu(u, "u");
  TORCH_CHECK(u.dim() == 3 && u.numel() > 0, "u must be a non-empty (batch, dim, L) tensor, got ",
              u.sizes());
  const int64_t batch = u.size(0), dim = u.size(1), L = u.size(2);
  const at::ScalarType ct = u.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  check_io(delta, "delta", u);
  check_cpu(A, "A");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == dim && A.size(1) >= 1, "A must be (", dim, ", N), got ",
              A.sizes());
  TORCH_CHECK(A.scalar_type() == ct, "A must have dtype ", ct, ", got ", A.scalar_type());
  const int64_t N = A.size(1);
  check_bc(B, "B", batch, dim, N, L, u.scalar_type(), ct);
  check_bc(C, "C", batch, dim, N, L, u.scalar_type(), ct);

  const KernelTable& k = active().table();
  const int64_t lanes = ct == at::kDouble ? k.lanes_double : k.lanes_float;
  const int64_t npad = (N + lanes - 1) / lanes * lanes;

  ScanSetup s;
  s.u = u.contiguous();
  s.delta = delta.contiguous();
  if (z.has_value() && z->defined()) {
    check_io(*z, "z", u);
    s.z = z->contiguous();
  }
  s.A = pad_last(A, npad, ct);
  s.B = pack_bc(B, npad, ct);
  s.C = pack_bc(C, npad, ct);
  s.D = param(D, "D", {dim}, ct);
  s.delta_bias = param(delta_bias, "delta_bias", {dim}, ct);
  at::Tensor h0 = param(initial_state, "initial_state", {batch, dim, N}, ct);
  if (h0.defined()) s.h0 = pad_last(h0, npad, ct);

  ScanArgs& a = s.args;
  set_common_args(a, u, "u", ct, reverse);
  a.N = N;
  a.npad = npad;
  a.b_var = B.dim() >= 3;
  a.c_var = C.dim() >= 3;
  a.groups_b = groups_of(B);
  a.groups_c = groups_of(C);
  a.gpart = std::lcm(a.b_var ? a.groups_b : 1, a.c_var ? a.groups_c : 1);
  // Backward split: about kTargetTasks tasks, but the dB/dC partial sums (nblk slices of
  // (L, npad) per batch and group) kept within ~2x the size of u.
  const int64_t dpg = dim / a.gpart;
  int64_t nblk = (kTargetTasks + batch * a.gpart - 1) / (batch * a.gpart);
  if (a.b_var || a.c_var) nblk = std::min(nblk, std::max<int64_t>(1, 2 * dim / (a.gpart * npad)));
  nblk = std::max<int64_t>(1, std::min(nblk, dpg));
  a.rows_per_block = (dpg + nblk - 1) / nblk;
  a.nblk = (dpg + a.rows_per_block - 1) / a.rows_per_block;
  a.softplus = softplus;
  a.u = s.u.data_ptr();
  a.delta = s.delta.data_ptr();
  a.z = ptr_or_null(s.z);
  a.A = s.A.data_ptr();
  a.B = s.B.data_ptr();
  a.C = s.C.data_ptr();
  a.D = ptr_or_null(s.D);
  a.delta_bias = ptr_or_null(s.delta_bias);
  a.h0 = ptr_or_null(s.h0);
  return s;
}

// (batch, G', L, npad) partial sums -> gradient of B/C in its own shape and dtype.
at::Tensor finish_dbc(const at::Tensor& part, const at::Tensor& X, const ScanArgs& a) {
  const int64_t N = a.N;
  if (X.dim() == 2) return ordered_sum0(part).narrow(1, 0, N).to(X.scalar_type()).contiguous();
  const int64_t G = groups_of(X);
  // partial index (gpart, nblk) flattened: gpart = g * (gpart / G) + sub, so each group's
  // contributions are one contiguous run of slices, summed in order.
  const at::Tensor p = part.reshape({a.batch, G, -1, a.L, a.npad}).movedim(2, 0);
  at::Tensor d = ordered_sum0(p).narrow(3, 0, N).transpose(2, 3);  // (batch, G, N, L)
  if (X.dim() == 3) d = d.squeeze(1);
  return d.to(X.scalar_type()).contiguous();
}

// -> (out, last_state)
std::tuple<at::Tensor, at::Tensor> selective_scan_fwd(const at::Tensor& u, const at::Tensor& delta,
                                                      const at::Tensor& A, const at::Tensor& B,
                                                      const at::Tensor& C, const OptTensor& D,
                                                      const OptTensor& z, const OptTensor& delta_bias,
                                                      const OptTensor& initial_state,
                                                      bool delta_softplus, bool reverse) {
  ScanSetup s = setup_scan(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                           reverse);
  ScanArgs& a = s.args;
  at::Tensor out = at::empty_like(s.u);
  at::Tensor h_last = at::empty({a.batch, a.dim, a.npad}, s.A.options());
  a.out = out.data_ptr();
  a.h_last = h_last.data_ptr();
  const KernelTable& k = active().table();
  const int64_t rows = a.batch * a.dim;
  run_dynamic(rows, row_grab(rows), rows * a.L * a.npad,
              [&](int64_t b, int64_t e) { k.scan_fwd(a, b, e); });
  return {out, h_last.narrow(2, 0, a.N).contiguous()};
}

// -> {du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state}
std::vector<at::Tensor> selective_scan_bwd(const at::Tensor& u, const at::Tensor& delta,
                                           const at::Tensor& A, const at::Tensor& B,
                                           const at::Tensor& C, const OptTensor& D,
                                           const OptTensor& z, const OptTensor& delta_bias,
                                           const OptTensor& initial_state, const at::Tensor& dout,
                                           const OptTensor& dlast_state, bool delta_softplus,
                                           bool reverse) {
  ScanSetup s = setup_scan(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                           reverse);
  ScanArgs& a = s.args;
  check_io(dout, "dout", u);
  const at::Tensor dout_c = dout.contiguous();
  const at::TensorOptions opt = s.A.options();
  at::Tensor dh_last;
  if (dlast_state.has_value() && dlast_state->defined()) {
    check_shape(*dlast_state, "dlast_state", {a.batch, a.dim, a.N});
    dh_last = pad_last(*dlast_state, a.npad, s.A.scalar_type());
  }
  at::Tensor du = at::empty_like(s.u), ddelta = at::empty_like(s.delta);
  at::Tensor dz = s.z.defined() ? at::empty_like(s.z) : at::Tensor();
  at::Tensor dA_part = at::empty({a.batch, a.dim, a.npad}, opt);
  at::Tensor dD_part = s.D.defined() ? at::empty({a.batch, a.dim}, opt) : at::Tensor();
  at::Tensor ddb_part = s.delta_bias.defined() ? at::empty({a.batch, a.dim}, opt) : at::Tensor();
  at::Tensor dh0 = s.h0.defined() ? at::empty({a.batch, a.dim, a.npad}, opt) : at::Tensor();
  const std::vector<int64_t> var_part{a.batch, a.gpart, a.nblk, a.L, a.npad};
  const std::vector<int64_t> const_part{a.batch, a.dim, a.npad};
  at::Tensor dB_part = at::empty(a.b_var ? var_part : const_part, opt);
  at::Tensor dC_part = at::empty(a.c_var ? var_part : const_part, opt);

  a.dout = dout_c.data_ptr();
  a.dh_last = ptr_or_null(dh_last);
  a.du = du.data_ptr();
  a.ddelta = ddelta.data_ptr();
  a.dz = mut_ptr_or_null(dz);
  a.dA_part = dA_part.data_ptr();
  a.dD_part = mut_ptr_or_null(dD_part);
  a.ddb_part = mut_ptr_or_null(ddb_part);
  a.dh0 = mut_ptr_or_null(dh0);
  a.dB_part = dB_part.data_ptr();
  a.dC_part = dC_part.data_ptr();
  const KernelTable& k = active().table();
  run_dynamic(a.batch * a.gpart * a.nblk, 1, 3 * a.batch * a.dim * a.L * a.npad,
              [&](int64_t b, int64_t e) { k.scan_bwd(a, b, e); });

  const int64_t N = a.N;
  at::Tensor dA = ordered_sum0(dA_part).narrow(1, 0, N).contiguous();
  at::Tensor dB = finish_dbc(dB_part, B, a);
  at::Tensor dC = finish_dbc(dC_part, C, a);
  at::Tensor dD = dD_part.defined() ? ordered_sum0(dD_part) : at::Tensor();
  at::Tensor ddb = ddb_part.defined() ? ordered_sum0(ddb_part) : at::Tensor();
  if (dh0.defined()) dh0 = dh0.narrow(2, 0, N).contiguous();
  return {du, ddelta, dA, dB, dC, dD, dz, ddb, dh0};
}

struct ConvSetup {
  ConvArgs args;
  at::Tensor x, weight, bias;
};

ConvSetup setup_conv(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias,
                     bool silu, bool reverse) {
  check_cpu(x, "x");
  TORCH_CHECK(x.dim() == 3 && x.numel() > 0, "x must be a non-empty (batch, dim, L) tensor, got ",
              x.sizes());
  const at::ScalarType ct = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  check_cpu(weight, "weight");
  const at::Tensor w = weight.dim() == 3 && weight.size(1) == 1 ? weight.squeeze(1) : weight;
  TORCH_CHECK(w.dim() == 2 && w.size(0) == x.size(1) && w.size(1) >= 2 && w.size(1) <= kConvMaxWidth,
              "weight must be (", x.size(1), ", width) with 2 <= width <= ", kConvMaxWidth, ", got ",
              weight.sizes());
  TORCH_CHECK(w.scalar_type() == x.scalar_type() || w.scalar_type() == ct, "weight must have dtype ",
              x.scalar_type(), " or ", ct, ", got ", w.scalar_type());
  ConvSetup s;
  s.x = x.contiguous();
  s.weight = w.to(ct).contiguous();
  if (bias.has_value() && bias->defined()) {
    check_shape(*bias, "bias", {x.size(1)});
    TORCH_CHECK(bias->scalar_type() == x.scalar_type() || bias->scalar_type() == ct,
                "bias must have dtype ", x.scalar_type(), " or ", ct, ", got ", bias->scalar_type());
    s.bias = bias->to(ct).contiguous();
  }
  ConvArgs& a = s.args;
  set_common_args(a, x, "x", ct, reverse);
  a.width = w.size(1);
  a.silu = silu;
  a.x = s.x.data_ptr();
  a.weight = s.weight.data_ptr();
  a.bias = ptr_or_null(s.bias);
  return s;
}

at::Tensor causal_conv1d_fwd(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias,
                             bool silu, bool reverse) {
  ConvSetup s = setup_conv(x, weight, bias, silu, reverse);
  ConvArgs& a = s.args;
  at::Tensor out = at::empty_like(s.x);
  a.out = out.data_ptr();
  const KernelTable& k = active().table();
  const int64_t rows = a.batch * a.dim;
  run_dynamic(rows, row_grab(rows), rows * a.L * a.width,
              [&](int64_t b, int64_t e) { k.conv_fwd(a, b, e); });
  return out;
}

// -> {dx, dweight, dbias}
std::vector<at::Tensor> causal_conv1d_bwd(const at::Tensor& x, const at::Tensor& weight,
                                          const OptTensor& bias, const at::Tensor& dout, bool silu,
                                          bool reverse) {
  ConvSetup s = setup_conv(x, weight, bias, silu, reverse);
  ConvArgs& a = s.args;
  check_io(dout, "dout", x);
  const at::Tensor dout_c = dout.contiguous();
  at::Tensor dx = at::empty_like(s.x);
  at::Tensor dw_part = at::empty({a.batch, a.dim, a.width}, s.weight.options());
  at::Tensor db_part = s.bias.defined() ? at::empty({a.batch, a.dim}, s.weight.options())
                                        : at::Tensor();
  a.dout = dout_c.data_ptr();
  a.dx = dx.data_ptr();
  a.dw_part = dw_part.data_ptr();
  a.db_part = mut_ptr_or_null(db_part);
  const KernelTable& k = active().table();
  const int64_t rows = a.batch * a.dim;
  run_dynamic(rows, row_grab(rows), 3 * rows * a.L * a.width,
              [&](int64_t b, int64_t e) { k.conv_bwd(a, b, e); });
  at::Tensor dw = ordered_sum0(dw_part).reshape(weight.sizes()).to(weight.scalar_type());
  at::Tensor db = db_part.defined() ? ordered_sum0(db_part).to(bias->scalar_type()) : at::Tensor();
  return {dx, dw.contiguous(), db};
}

}  // namespace

std::vector<std::string> compiled_isas() {
  std::vector<std::string> names;
  for (const Isa& isa : kIsas) names.emplace_back(isa.name);
  return names;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  const int hw = hardware_rank();
  for (const Isa& isa : kIsas) {
    if (isa.rank <= hw) names.emplace_back(isa.name);
  }
  return names;
}

std::string active_isa() { return active().name; }

const KernelTable& active_kernels() { return active().table(); }

IoType io_type_of(const at::Tensor& t, const char* name) { return io_type(t, name); }

std::string set_isa(const std::string& name) {
  const std::string previous = active().name;
  if (name == "auto") {
    g_active.store(best_isa());
    return previous;
  }
  const int hw = hardware_rank();
  for (const Isa& isa : kIsas) {
    if (name == isa.name) {
      TORCH_CHECK(isa.rank <= hw, "isa '", name, "' is compiled in but this CPU does not support it");
      g_active.store(&isa);
      return previous;
    }
  }
  TORCH_CHECK(false, "isa must be 'auto' or one of the compiled instruction sets, got '", name, "'");
}

}  // namespace vimd::cpu

// The CPU ops in torch's dispatcher, torch.ops.vimd.<name>: loading the library (from Python with
// torch.ops.load_library, or from C++) registers them, so an exported or AOT-compiled graph that
// calls them runs without vimd's Python package. One entry per op, as in csrc/cuda/ops.cpp: its
// name, its CPU kernel and its schema's arguments and returns. Fake (meta) kernels:
// vimd_kernels/native.py.
#define VIMD_CPU_OPS(X)                                                                           \
  X(selective_scan_fwd_cpu, vimd::cpu::selective_scan_fwd,                                        \
    "(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "               \
    "Tensor? delta_bias, Tensor? initial_state, bool delta_softplus, bool reverse) "              \
    "-> (Tensor, Tensor)")                                                                        \
  X(selective_scan_bwd_cpu, vimd::cpu::selective_scan_bwd,                                        \
    "(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "               \
    "Tensor? delta_bias, Tensor? initial_state, Tensor dout, Tensor? dlast_state, "               \
    "bool delta_softplus, bool reverse) -> Tensor[]")                                             \
  X(causal_conv1d_fwd_cpu, vimd::cpu::causal_conv1d_fwd,                                          \
    "(Tensor x, Tensor weight, Tensor? bias, bool silu, bool reverse) -> Tensor")                 \
  X(causal_conv1d_bwd_cpu, vimd::cpu::causal_conv1d_bwd,                                          \
    "(Tensor x, Tensor weight, Tensor? bias, Tensor dout, bool silu, bool reverse) -> Tensor[]")  \
  X(selective_state_update_cpu, vimd::cpu::selective_state_update,                                \
    "(Tensor(a!) state, Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor? D, "           \
    "Tensor? z, Tensor? dt_bias, bool dt_softplus) -> Tensor")                                    \
  X(causal_conv1d_update_cpu, vimd::cpu::causal_conv1d_update,                                    \
    "(Tensor x, Tensor(a!) conv_state, Tensor weight, Tensor? bias, bool silu, "                  \
    "Tensor? cache_seqlens) -> Tensor")

TORCH_LIBRARY(vimd, m) {
#define VIMD_DEF(name, fn, schema) m.def(#name schema);
  VIMD_CPU_OPS(VIMD_DEF)
#undef VIMD_DEF
}

TORCH_LIBRARY_IMPL(vimd, CPU, m) {
#define VIMD_IMPL(name, fn, schema) m.impl(#name, TORCH_FN(fn));
  VIMD_CPU_OPS(VIMD_IMPL)
#undef VIMD_IMPL
}
