// Tensor-level CPU ops of the inference steps; compiled with the baseline ISA (the kernels behind
// them, update.h, are picked per instruction set like the scan's and the conv's).
#include "cpu/update_ops.h"

#include <ATen/Parallel.h>

#include <algorithm>

namespace vimd::cpu {
namespace {

using OptTensor = std::optional<at::Tensor>;

// Below about this many inner steps a call stays on the calling thread (a decoding step is small).
constexpr int64_t kParallelWork = int64_t(1) << 15;

void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.defined() && t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
}

// `t` in the compute type, contiguous, after checking its shape and that its dtype is one of
// `io` (the inputs' dtype) or `ct`.
at::Tensor operand(const at::Tensor& t, const char* name, at::IntArrayRef shape, at::ScalarType io,
                   at::ScalarType ct) {
  check_shape(t, name, shape);
  TORCH_CHECK(t.scalar_type() == io || t.scalar_type() == ct, name, " must have dtype ", io, " or ",
              ct, ", got ", t.scalar_type());
  return t.to(ct).contiguous();
}

at::Tensor optional_operand(const OptTensor& t, const char* name, at::IntArrayRef shape,
                            at::ScalarType io, at::ScalarType ct) {
  return t.has_value() && t->defined() ? operand(*t, name, shape, io, ct) : at::Tensor();
}

at::Tensor same_as(const at::Tensor& t, const char* name, const at::Tensor& like) {
  check_shape(t, name, like.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have dtype ", like.scalar_type(),
              ", got ", t.scalar_type());
  return t.contiguous();
}

const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// B or C as (batch, groups, N) in the compute type.
at::Tensor grouped(const at::Tensor& X, const char* name, int64_t batch, int64_t dim, int64_t N,
                   at::ScalarType io, at::ScalarType ct) {
  TORCH_CHECK(X.dim() == 2 || X.dim() == 3, name, " must be (batch, N) or (batch, G, N), got ",
              X.sizes());
  if (X.dim() == 2) return operand(X, name, {batch, N}, io, ct).unsqueeze(1);
  const int64_t G = X.size(1);
  TORCH_CHECK(G >= 1 && dim % G == 0, name, " has ", G, " groups, which must divide dim=", dim);
  return operand(X, name, {batch, G, N}, io, ct);
}

template <typename Args, typename Kernel>
void run_rows(const Args& a, int64_t rows, int64_t work_per_row, Kernel kernel) {
  const int64_t grain = std::max<int64_t>(1, kParallelWork / std::max<int64_t>(1, work_per_row));
  at::parallel_for(0, rows, grain, [&](int64_t b, int64_t e) { kernel(a, b, e); });
}

}  // namespace

at::Tensor selective_state_update(const at::Tensor& state, const at::Tensor& x,
                                  const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                                  const at::Tensor& C, const OptTensor& D, const OptTensor& z,
                                  const OptTensor& dt_bias, bool dt_softplus) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.numel() > 0,
              "x must be a non-empty (batch, dim) CPU tensor, got ", x.sizes());
  const int64_t batch = x.size(0), dim = x.size(1);
  const at::ScalarType io = x.scalar_type();
  const at::ScalarType ct = io == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(state.device().is_cpu() && state.dim() == 3 && state.size(0) == batch &&
                  state.size(1) == dim && state.size(2) >= 1,
              "state must be a (", batch, ", ", dim, ", N) CPU tensor, got ", state.sizes());
  TORCH_CHECK(state.is_contiguous(), "state must be contiguous (it is updated in place)");
  TORCH_CHECK((ct == at::kDouble) == (state.scalar_type() == at::kDouble),
              "state must be float64 exactly when x is, got ", state.scalar_type(), " for x ", io);
  const int64_t N = state.size(2);
  const at::Tensor xc = x.contiguous();
  const at::Tensor dtc = same_as(dt, "dt", xc);
  const at::Tensor zc = z.has_value() && z->defined() ? same_as(*z, "z", xc) : at::Tensor();
  check_shape(A, "A", {dim, N});
  TORCH_CHECK(A.scalar_type() == ct, "A must have dtype ", ct, ", got ", A.scalar_type());
  const at::Tensor Ac = A.contiguous();
  const at::Tensor Bc = grouped(B, "B", batch, dim, N, io, ct);
  const at::Tensor Cc = grouped(C, "C", batch, dim, N, io, ct);
  const at::Tensor Dc = optional_operand(D, "D", {dim}, ct, ct);
  const at::Tensor dbc = optional_operand(dt_bias, "dt_bias", {dim}, ct, ct);
  at::Tensor out = at::empty_like(xc);

  StateUpdateArgs a;
  a.batch = batch;
  a.dim = dim;
  a.N = N;
  a.groups_b = Bc.size(1);
  a.groups_c = Cc.size(1);
  a.softplus = dt_softplus;
  a.dbl = ct == at::kDouble;
  a.io = io_type_of(xc, "x");
  a.state_io = io_type_of(state, "state");
  a.state = state.data_ptr();
  a.x = xc.data_ptr();
  a.dt = dtc.data_ptr();
  a.z = ptr_or_null(zc);
  a.A = Ac.data_ptr();
  a.B = Bc.data_ptr();
  a.C = Cc.data_ptr();
  a.D = ptr_or_null(Dc);
  a.dt_bias = ptr_or_null(dbc);
  a.out = out.data_ptr();
  run_rows(a, batch * dim, N, active_kernels().state_update);
  return out;
}

at::Tensor causal_conv1d_update(const at::Tensor& x, const at::Tensor& conv_state,
                                const at::Tensor& weight, const OptTensor& bias, bool silu,
                                const OptTensor& cache_seqlens) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 3 && x.numel() > 0,
              "x must be a non-empty (batch, dim, seqlen) CPU tensor, got ", x.sizes());
  const int64_t batch = x.size(0), dim = x.size(1), seqlen = x.size(2);
  const at::ScalarType io = x.scalar_type();
  const at::ScalarType ct = io == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor w = weight.dim() == 3 && weight.size(1) == 1 ? weight.squeeze(1) : weight;
  TORCH_CHECK(w.dim() == 2 && w.size(0) == dim && w.size(1) >= 2 && w.size(1) <= kConvMaxWidth,
              "weight must be (", dim, ", width) with 2 <= width <= ", kConvMaxWidth, ", got ",
              weight.sizes());
  const int64_t width = w.size(1);
  const at::Tensor wc = operand(w, "weight", {dim, width}, io, ct);
  const at::Tensor bc = optional_operand(bias, "bias", {dim}, io, ct);
  TORCH_CHECK(conv_state.device().is_cpu() && conv_state.dim() == 3 && conv_state.size(0) == batch &&
                  conv_state.size(1) == dim && conv_state.size(2) >= width - 1,
              "conv_state must be a (", batch, ", ", dim, ", state_len >= ", width - 1,
              ") CPU tensor, got ", conv_state.sizes());
  TORCH_CHECK(conv_state.scalar_type() == io, "conv_state must have x's dtype ", io, ", got ",
              conv_state.scalar_type());
  TORCH_CHECK(conv_state.is_contiguous(), "conv_state must be contiguous (it is updated in place)");
  at::Tensor seqlens;
  if (cache_seqlens.has_value() && cache_seqlens->defined()) {
    check_shape(*cache_seqlens, "cache_seqlens", {batch});
    TORCH_CHECK(cache_seqlens->scalar_type() == at::kInt, "cache_seqlens must be int32, got ",
                cache_seqlens->scalar_type());
    seqlens = cache_seqlens->contiguous();
  }
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty_like(xc);

  ConvUpdateArgs a;
  a.batch = batch;
  a.dim = dim;
  a.seqlen = seqlen;
  a.width = width;
  a.state_len = conv_state.size(2);
  a.silu = silu;
  a.dbl = ct == at::kDouble;
  a.io = io_type_of(xc, "x");
  a.x = xc.data_ptr();
  a.conv_state = conv_state.data_ptr();
  a.weight = wc.data_ptr();
  a.bias = ptr_or_null(bc);
  a.cache_seqlens = seqlens.defined() ? seqlens.data_ptr<int32_t>() : nullptr;
  a.out = out.data_ptr();
  run_rows(a, batch * dim, a.state_len + seqlen * width, active_kernels().conv_update);
  return out;
}

}  // namespace vimd::cpu
