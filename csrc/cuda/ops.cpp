// Tensor-level CUDA ops: argument checks, device guard, current stream, output and workspace
// allocation, dtype dispatch. The kernels themselves (*.cuh) see only plain parameter structs and
// raw pointers. CUDA builds register the ops with torch's dispatcher (torch.ops.vimd.<name>, CUDA
// kernels; see the table at the end).
//
// csrc/cuda/emu/emu_ops.cpp includes this file with VIMD_CUDA_EMULATION defined: the same
// ops then take CPU tensors, run the kernels under the host emulator (tests, no GPU) and are
// exported as the functions of a pybind11 module (register_cuda_ops).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#ifndef VIMD_CUDA_EMULATION
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <optional>
#include <tuple>
#include <vector>

#include "params.h"

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
namespace vc = vimd::cuda;

#ifdef VIMD_CUDA_EMULATION
struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};
cudaStream_t current_stream() { return nullptr; }
bool on_kernel_device(const Tensor& t) { return t.is_cpu(); }
#else
using DeviceGuard = c10::cuda::CUDAGuard;
cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }
bool on_kernel_device(const Tensor& t) { return t.is_cuda(); }
#endif

void check_cuda_tensor(const Tensor& t, const char* name) {
  TORCH_CHECK(on_kernel_device(t), name, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// A float32 operand that must live on the device of `like` (u or x).
void check_float32(const Tensor& t, const Tensor& like, const char* name) {
  check_cuda_tensor(t, name);
  TORCH_CHECK(t.device() == like.device(), name, " must be on ", like.device(), ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32 for the cuda kernels, got ",
              t.scalar_type());
}

void check_io(const Tensor& t, const Tensor& u, const char* name) {
  check_cuda_tensor(t, name);
  TORCH_CHECK(t.scalar_type() == u.scalar_type(), name, " must have the dtype of u/x (",
              u.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == u.sizes(), name, " must have shape ", u.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.device() == u.device(), name, " must be on ", u.device());
}

// A (batch, dim, L) operand read as rows of L contiguous steps, the channels of a batch element
// one after another, batch elements `stride(0)` apart: a contiguous tensor, or a channel slice of
// a bigger one (e.g. x and z inside the mixer's xz). Returns the batch stride in elements.
int64_t check_rows(const Tensor& t, const Tensor& like, const char* name) {
  TORCH_CHECK(on_kernel_device(t), name, " must be a CUDA tensor");
  TORCH_CHECK(t.dim() == 3, name, " must be (batch, dim, L)");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have the dtype of u/x (",
              like.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == like.sizes(), name, " must have shape ", like.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.device() == like.device(), name, " must be on ", like.device());
  const int64_t dim = t.size(1), L = t.size(2);
  const bool rows = (L == 1 || t.stride(2) == 1) && (dim == 1 || t.stride(1) == L) &&
                    (t.size(0) == 1 || t.stride(0) >= dim * L);
  TORCH_CHECK(rows, name, " must be rows of L contiguous steps with the channels contiguous (a contiguous ",
              "tensor or a channel slice of one); got strides ", t.strides());
  return t.size(0) == 1 ? dim * L : t.stride(0);
}

const float* fptr(const OptTensor& t) {
  return t.has_value() ? t->data_ptr<float>() : nullptr;
}

const void* vptr(const OptTensor& t) { return t.has_value() ? t->data_ptr() : nullptr; }

// Gradient lists hold an undefined tensor (None in Python) for an absent input.
Tensor undefined_if_absent(const OptTensor& t) { return t.value_or(Tensor()); }

// Calls fn(T{}) with T the kernel element type of `dtype`.
template <typename Fn>
cudaError_t dispatch_io(at::ScalarType dtype, Fn&& fn) {
  switch (dtype) {
    case at::kFloat: return fn(float{});
    case at::kHalf: return fn(__half{});
    case at::kBFloat16: return fn(__nv_bfloat16{});
    default: TORCH_CHECK(false, "the cuda kernels take float32, float16 or bfloat16, got ", dtype);
  }
  return cudaErrorInvalidValue;
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

// Calls launch(T{}, stream) on the current stream, T the kernel element type of `dtype`, and
// fails with `what` if the launch does.
template <typename Launch>
void launch_io(at::ScalarType dtype, const char* what, Launch&& launch) {
  const cudaStream_t stream = current_stream();
  check_launch(dispatch_io(dtype, [&](auto t) { return launch(t, stream); }), what);
}

// Shared checks and parameter setup of the scan forward and backward.
vc::ScanParams scan_params(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                           const Tensor& C, const OptTensor& D, const OptTensor& z,
                           const OptTensor& delta_bias, const OptTensor& initial_state,
                           bool delta_softplus, bool reverse) {
  check_cuda_tensor(u, "u");
  TORCH_CHECK(u.dim() == 3, "u must be (batch, dim, L)");
  check_io(delta, u, "delta");
  check_float32(A, u, "A");
  const int64_t batch = u.size(0), dim = u.size(1), L = u.size(2);
  TORCH_CHECK(A.dim() == 2 && A.size(0) == dim, "A must be (dim, N)");
  const int64_t N = A.size(1);
  TORCH_CHECK(N >= 1 && N <= vc::kScanMaxState, "the cuda scan supports 1 <= N <= ",
              vc::kScanMaxState, ", got N=", N);
  TORCH_CHECK(batch <= 65535, "the cuda scan supports batch <= 65535");
  vc::ScanParams p;
  p.batch = static_cast<int>(batch);
  p.dim = static_cast<int>(dim);
  p.seqlen = static_cast<int>(L);
  p.dstate = static_cast<int>(N);
  const Tensor* bc[2] = {&B, &C};
  int* groups[2] = {&p.b_groups, &p.c_groups};
  long long* row_strides[2] = {&p.b_row_stride, &p.c_row_stride};
  const char* names[2] = {"B", "C"};
  for (int k = 0; k < 2; ++k) {
    const Tensor& X = *bc[k];
    if (X.dim() == 2) {
      check_float32(X, u, names[k]);
      TORCH_CHECK(X.size(0) == dim && X.size(1) == N, names[k], " must be (dim, N)");
      *groups[k] = 0;
    } else {
      // Rows of L steps, equally spaced (they may be padded for alignment: stride(-2) >= L).
      TORCH_CHECK(on_kernel_device(X), names[k], " must be a CUDA tensor");
      TORCH_CHECK(X.device() == u.device(), names[k], " must be on ", u.device(), ", got ", X.device());
      TORCH_CHECK(X.scalar_type() == at::kFloat, names[k], " must be float32 for the cuda kernels, got ",
                  X.scalar_type());
      const bool grouped = X.dim() == 4;
      TORCH_CHECK(X.dim() == 3 || grouped, names[k], " must be (dim, N), (batch, N, L) or (batch, G, N, L)");
      const int64_t G = grouped ? X.size(1) : 1;
      TORCH_CHECK(G >= 1 && dim % G == 0, names[k], " groups must divide dim");
      TORCH_CHECK(X.size(0) == batch && X.size(grouped ? 2 : 1) == N && X.size(grouped ? 3 : 2) == L,
                  names[k], " has the wrong shape ", X.sizes());
      const int64_t S = X.stride(-2);
      const bool rows_ok = X.stride(-1) == 1 && S >= L && (batch == 1 || X.stride(0) == G * N * S) &&
                           (!grouped || G == 1 || X.stride(1) == N * S);
      TORCH_CHECK(rows_ok, names[k], " must be laid out as rows of L contiguous steps, equally spaced ",
                  "(contiguous, or padded rows); got strides ", X.strides());
      *groups[k] = static_cast<int>(G);
      *row_strides[k] = S;
    }
  }
  p.B = B.data_ptr<float>();
  p.C = C.data_ptr<float>();
  p.A = A.data_ptr<float>();
  if (D) {
    check_float32(*D, u, "D");
    TORCH_CHECK(D->numel() == dim, "D must be (dim,)");
  }
  if (delta_bias) {
    check_float32(*delta_bias, u, "delta_bias");
    TORCH_CHECK(delta_bias->numel() == dim, "delta_bias must be (dim,)");
  }
  if (initial_state) {
    check_float32(*initial_state, u, "initial_state");
    TORCH_CHECK(initial_state->numel() == batch * dim * N, "initial_state must be (batch, dim, N)");
  }
  if (z) p.z_batch_stride = check_rows(*z, u, "z");
  p.D = fptr(D);
  p.delta_bias = fptr(delta_bias);
  p.initial_state = fptr(initial_state);
  p.z = vptr(z);
  p.u = u.data_ptr();
  p.delta = delta.data_ptr();
  p.delta_softplus = delta_softplus;
  p.reverse = reverse;
  return p;
}

// chunk_len: a positive multiple of `unit` (kFwdSteps).
void set_chunks(vc::ScanParams& p, int64_t chunk_len, int unit) {
  TORCH_CHECK(chunk_len >= unit && chunk_len % unit == 0,
              "chunk_len must be a positive multiple of ", unit, ", got ", chunk_len);
  const int64_t n_chunks = (p.seqlen + chunk_len - 1) / chunk_len;
  TORCH_CHECK(n_chunks <= 65535, "L=", p.seqlen, " in chunks of ", chunk_len, " gives ", n_chunks,
              " chunks; the grid takes at most 65535");
  p.chunk_len = static_cast<int>(chunk_len);
  p.n_chunks = static_cast<int>(n_chunks);
}

// The forward's outputs and chunk workspaces of one direction (out/last may be views into
// stacked outputs); `work` keeps the workspaces alive until the launch is queued.
void setup_scan_fwd(vc::ScanParams& p, const Tensor& out, const Tensor& last, int64_t chunk_len,
                    std::vector<Tensor>& work) {
  TORCH_CHECK(p.seqlen <= vc::kFwdMaxSeqlen, "selective scan forward: L=", p.seqlen,
              " is above the kernel's limit of ", vc::kFwdMaxSeqlen, " steps");
  set_chunks(p, chunk_len, vc::kFwdSteps);
  if (p.n_chunks > 1) {
    work.push_back(at::empty({p.batch, p.dim, p.n_chunks, p.dstate}, last.options()));
    p.chunk_h = work.back().data_ptr<float>();
    work.push_back(at::empty({p.batch, p.dim, p.n_chunks}, last.options()));
    p.chunk_sum_delta = work.back().data_ptr<float>();
  }
  p.out = out.data_ptr();
  p.last_state = last.data_ptr<float>();
}

std::tuple<Tensor, Tensor> selective_scan_fwd_cuda(const Tensor& u, const Tensor& delta,
                                                   const Tensor& A, const Tensor& B, const Tensor& C,
                                                   const OptTensor& D, const OptTensor& z,
                                                   const OptTensor& delta_bias,
                                                   const OptTensor& initial_state,
                                                   bool delta_softplus, bool reverse,
                                                   int64_t chunk_len) {
  vc::ScanParams p = scan_params(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                                 reverse);
  const DeviceGuard guard(u.device());
  Tensor out = at::empty_like(u);
  Tensor last = at::empty({p.batch, p.dim, p.dstate}, u.options().dtype(at::kFloat));
  std::vector<Tensor> work;
  setup_scan_fwd(p, out, last, chunk_len, work);
  launch_io(u.scalar_type(), "selective_scan_fwd_cuda",
            [&](auto t, cudaStream_t s) { return vc::selective_scan_fwd_launch<decltype(t)>(p, s); });
  return {out, last};
}

// The backward's outputs of one direction: defined tensors (views into stacked outputs) are
// written in place, undefined ones are allocated.
struct ScanBwdOut {
  Tensor du, ddelta, dA, dB, dC;
  OptTensor dD, dz, ddelta_bias, dinit;
};

// Checks the backward-only arguments, plans the channel slabs, allocates the outputs missing in
// `o` and the workspaces (kept in `work`) and fills p's backward pointers.
void setup_scan_bwd(vc::ScanParams& p, ScanBwdOut& o, std::vector<Tensor>& work, const Tensor& u,
                    const Tensor& A, const Tensor& B, const Tensor& C, const OptTensor& D,
                    const OptTensor& z, const OptTensor& delta_bias, const OptTensor& initial_state,
                    const Tensor& dout, const OptTensor& dlast_state, int64_t seg_channels,
                    int64_t slab_channels, int64_t chunk_len) {
  check_io(dout, u, "dout");
  if (dlast_state) {
    check_float32(*dlast_state, u, "dlast_state");
    TORCH_CHECK(dlast_state->numel() == static_cast<int64_t>(p.batch) * p.dim * p.dstate,
                "dlast_state must be (batch, dim, N)");
  }
  TORCH_CHECK(p.seqlen <= vc::kFwdMaxSeqlen, "selective scan backward: L=", p.seqlen,
              " is above the kernel's limit of ", vc::kFwdMaxSeqlen, " steps");
  // chunk_len 0: one chunk per row
  const int64_t seg = vc::kBwdSegment;
  set_chunks(p, chunk_len == 0 ? (p.seqlen + seg - 1) / seg * seg : chunk_len, vc::kBwdSegment);
  TORCH_CHECK(seg_channels >= 1 && p.dim % seg_channels == 0, "seg_channels must divide dim");
  for (int G : {p.b_groups, p.c_groups}) {
    TORCH_CHECK(G == 0 || (p.dim / G) % seg_channels == 0,
                "seg_channels must divide the channels of every B/C group");
  }
  TORCH_CHECK(slab_channels >= 1 && slab_channels % vc::kBwdRows == 0,
              "slab_channels must be a positive multiple of ", vc::kBwdRows);
  p.seg_channels = static_cast<int>(seg_channels);
  p.slab_channels = static_cast<int>(slab_channels);
  p.slabs_per_seg = static_cast<int>((seg_channels + slab_channels - 1) / slab_channels);
  const int64_t n_parts = (p.dim / seg_channels) * p.slabs_per_seg;
  TORCH_CHECK(n_parts <= 0x7fffffff, "too many channel slabs");

  const auto f32 = u.options().dtype(at::kFloat);
  p.dout = dout.data_ptr();
  p.dlast_state = fptr(dlast_state);
  auto fill = [](Tensor& t, const Tensor& like) { if (!t.defined()) t = at::empty_like(like); };
  auto fill_opt = [](OptTensor& t, const OptTensor& like) {
    if (like && !t) t = at::empty_like(*like);
  };
  fill(o.du, u);
  fill(o.ddelta, u);
  fill(o.dA, A);
  // dB/dC are written contiguous (B/C themselves may have padded rows).
  if (!o.dB.defined()) o.dB = at::empty(B.sizes(), B.options());
  if (!o.dC.defined()) o.dC = at::empty(C.sizes(), C.options());
  fill_opt(o.dD, D);
  if (z && !o.dz) o.dz = at::empty(z->sizes(), z->options());  // contiguous, whatever z's strides
  fill_opt(o.ddelta_bias, delta_bias);
  fill_opt(o.dinit, initial_state);
  p.du = o.du.data_ptr();
  p.ddelta = o.ddelta.data_ptr();
  p.dA = o.dA.data_ptr<float>();
  p.dB = o.dB.data_ptr<float>();
  p.dC = o.dC.data_ptr<float>();
  p.dz = o.dz ? o.dz->data_ptr() : nullptr;
  p.dinitial_state = o.dinit ? o.dinit->data_ptr<float>() : nullptr;
  auto workspace = [&](at::IntArrayRef sizes) {
    work.push_back(at::empty(sizes, f32));
    return work.back().data_ptr<float>();
  };
  const int64_t J = static_cast<int64_t>(p.batch) * p.n_chunks;
  p.part_A = workspace({p.dim, p.dstate, J});
  if (D) {
    p.dD = o.dD->data_ptr<float>();
    p.part_D = workspace({p.dim, J});
  }
  if (delta_bias) {
    p.ddelta_bias = o.ddelta_bias->data_ptr<float>();
    p.part_delta_bias = workspace({p.dim, J});
  }
  auto bc_part = [&](int groups) {
    return groups == 0 ? workspace({p.dim, p.dstate, J}) : workspace({p.batch, n_parts, p.dstate, p.seqlen});
  };
  p.part_B = bc_part(p.b_groups);
  p.part_C = bc_part(p.c_groups);
  p.checkpoints = workspace({p.batch, (p.seqlen + seg - 1) / seg, p.dstate, p.dim});
  if (p.n_chunks > 1) {
    p.chunk_h = workspace({p.batch, p.dim, p.n_chunks, p.dstate});
    p.chunk_q = workspace({p.batch, p.dim, p.n_chunks, p.dstate});
    p.chunk_sum_delta = workspace({p.batch, p.dim, p.n_chunks});
  }
}

// Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state); None for absent inputs.
// dA..dC, dD, ddelta_bias, dinitial_state are float32. seg_channels/slab_channels: see params.h.
std::vector<Tensor> selective_scan_bwd_cuda(const Tensor& u, const Tensor& delta, const Tensor& A,
                                               const Tensor& B, const Tensor& C, const OptTensor& D,
                                               const OptTensor& z, const OptTensor& delta_bias,
                                               const OptTensor& initial_state, const Tensor& dout,
                                               const OptTensor& dlast_state, bool delta_softplus,
                                               bool reverse, int64_t seg_channels,
                                               int64_t slab_channels, int64_t chunk_len) {
  vc::ScanParams p = scan_params(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                                 reverse);
  const DeviceGuard guard(u.device());
  ScanBwdOut o;
  std::vector<Tensor> work;
  setup_scan_bwd(p, o, work, u, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state,
                 seg_channels, slab_channels, chunk_len);
  launch_io(u.scalar_type(), "selective_scan_bwd_cuda",
            [&](auto t, cudaStream_t s) { return vc::selective_scan_bwd_launch<decltype(t)>(p, s); });
  return {o.du, o.ddelta, o.dA, o.dB, o.dC, undefined_if_absent(o.dD), undefined_if_absent(o.dz),
          undefined_if_absent(o.ddelta_bias), undefined_if_absent(o.dinit)};
}

// ----------------------------------------------------------------------------- both directions
// ViM's two directions in one launch: every input but z carries a leading direction dimension
// of 2 (z, shared, is (batch, dim, L)); direction 1 runs reversed.

OptTensor at_dir(const OptTensor& t, int s) {
  return t ? OptTensor(t->select(0, s)) : std::nullopt;
}

void check_two_dirs(const Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() >= 2 && t.size(0) == 2, name, " must have a leading direction dimension of 2, got ",
              t.sizes());
}

vc::BiScanParams bi_scan_params(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                                const Tensor& C, const OptTensor& D, const OptTensor& z,
                                const OptTensor& delta_bias, bool delta_softplus) {
  check_two_dirs(u, "u");
  check_two_dirs(delta, "delta");
  check_two_dirs(A, "A");
  check_two_dirs(B, "B");
  check_two_dirs(C, "C");
  if (D) check_two_dirs(*D, "D");
  if (delta_bias) check_two_dirs(*delta_bias, "delta_bias");
  vc::BiScanParams bp;
  for (int s = 0; s < 2; ++s) {
    bp.dir[s] = scan_params(u.select(0, s), delta.select(0, s), A.select(0, s), B.select(0, s),
                            C.select(0, s), at_dir(D, s), z, at_dir(delta_bias, s), std::nullopt,
                            delta_softplus, /*reverse=*/s == 1);
  }
  return bp;
}

// Returns (out (2, batch, dim, L), last_state (2, batch, dim, N)).
std::tuple<Tensor, Tensor> selective_scan_bi_fwd_cuda(const Tensor& u, const Tensor& delta,
                                                      const Tensor& A, const Tensor& B, const Tensor& C,
                                                      const OptTensor& D, const OptTensor& z,
                                                      const OptTensor& delta_bias, bool delta_softplus,
                                                      int64_t chunk_len) {
  vc::BiScanParams bp = bi_scan_params(u, delta, A, B, C, D, z, delta_bias, delta_softplus);
  const vc::ScanParams& p = bp.dir[0];
  const DeviceGuard guard(u.device());
  Tensor out = at::empty_like(u);
  Tensor last = at::empty({2, p.batch, p.dim, p.dstate}, u.options().dtype(at::kFloat));
  std::vector<Tensor> work;
  for (int s = 0; s < 2; ++s) setup_scan_fwd(bp.dir[s], out.select(0, s), last.select(0, s), chunk_len, work);
  TORCH_CHECK(2 * static_cast<int64_t>(p.n_chunks) <= 65535, "too many chunks (", p.n_chunks,
              "): raise chunk_len");
  launch_io(u.scalar_type(), "selective_scan_bi_fwd_cuda",
            [&](auto t, cudaStream_t s) { return vc::selective_scan_bi_fwd_launch<decltype(t)>(bp, s); });
  return {out, last};
}

// Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), stacked over the directions (dz too:
// one per direction); None for absent inputs. dout_f/dout_b are the two directions' output
// gradients (they may be one tensor).
std::vector<Tensor> selective_scan_bi_bwd_cuda(const Tensor& u, const Tensor& delta, const Tensor& A,
                                                  const Tensor& B, const Tensor& C, const OptTensor& D,
                                                  const OptTensor& z, const OptTensor& delta_bias,
                                                  const Tensor& dout_f, const Tensor& dout_b,
                                                  bool delta_softplus, int64_t seg_channels,
                                                  int64_t slab_channels, int64_t chunk_len) {
  vc::BiScanParams bp = bi_scan_params(u, delta, A, B, C, D, z, delta_bias, delta_softplus);
  const DeviceGuard guard(u.device());
  Tensor du = at::empty_like(u), ddelta = at::empty_like(u);
  Tensor dA = at::empty_like(A);
  Tensor dB = at::empty(B.sizes(), B.options()), dC = at::empty(C.sizes(), C.options());  // contiguous
  OptTensor dD, dz, ddelta_bias;
  if (D) dD = at::empty_like(*D);
  if (delta_bias) ddelta_bias = at::empty_like(*delta_bias);
  if (z) dz = at::empty({2, z->size(0), z->size(1), z->size(2)}, z->options());
  std::vector<Tensor> work;
  for (int s = 0; s < 2; ++s) {
    ScanBwdOut o{du.select(0, s), ddelta.select(0, s), dA.select(0, s), dB.select(0, s), dC.select(0, s),
                 at_dir(dD, s), at_dir(dz, s), at_dir(ddelta_bias, s), std::nullopt};
    setup_scan_bwd(bp.dir[s], o, work, u.select(0, s), A.select(0, s), B.select(0, s), C.select(0, s),
                   at_dir(D, s), z, at_dir(delta_bias, s), std::nullopt, s == 0 ? dout_f : dout_b,
                   std::nullopt, seg_channels, slab_channels, chunk_len);
  }
  TORCH_CHECK(2 * static_cast<int64_t>(bp.dir[0].n_chunks) <= 65535, "too many chunks (",
              bp.dir[0].n_chunks, " per direction; the grid takes at most 65535 in all): raise chunk_len");
  launch_io(u.scalar_type(), "selective_scan_bi_bwd_cuda",
            [&](auto t, cudaStream_t s) { return vc::selective_scan_bi_bwd_launch<decltype(t)>(bp, s); });
  return {du, ddelta, dA, dB, dC, undefined_if_absent(dD), undefined_if_absent(dz),
          undefined_if_absent(ddelta_bias)};
}

vc::ConvParams conv_params(const Tensor& x, const Tensor& weight, const OptTensor& bias, bool silu,
                           bool reverse) {
  TORCH_CHECK(x.dim() == 3, "x must be (batch, dim, L)");
  const int64_t x_batch_stride = check_rows(x, x, "x");
  check_float32(weight, x, "weight");
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == x.size(1), "weight must be (dim, width)");
  const int64_t width = weight.size(1);
  TORCH_CHECK(width >= 2 && width <= vc::kConvMaxWidth, "weight width must be in [2, ",
              vc::kConvMaxWidth, "], got ", width);
  if (bias) {
    check_float32(*bias, x, "bias");
    TORCH_CHECK(bias->numel() == x.size(1), "bias must be (dim,)");
  }
  vc::ConvParams p;
  p.batch = static_cast<int>(x.size(0));
  p.dim = static_cast<int>(x.size(1));
  p.seqlen = static_cast<int>(x.size(2));
  p.width = static_cast<int>(width);
  p.x_batch_stride = x_batch_stride;
  p.silu = silu;
  p.reverse = reverse;
  p.segs = (p.seqlen + vc::kConvItems - 1) / vc::kConvItems;
  p.seg_groups = (p.segs + 31) / 32;
  p.x = x.data_ptr();
  p.weight = weight.data_ptr<float>();
  p.bias = fptr(bias);
  return p;
}

Tensor causal_conv1d_fwd_cuda(const Tensor& x, const Tensor& weight, const OptTensor& bias, bool silu,
                              bool reverse) {
  vc::ConvParams p = conv_params(x, weight, bias, silu, reverse);
  const DeviceGuard guard(x.device());
  Tensor out = at::empty(x.sizes(), x.options());  // contiguous, whatever x's strides
  p.out = out.data_ptr();
  launch_io(x.scalar_type(), "causal_conv1d_fwd_cuda",
            [&](auto t, cudaStream_t s) { return vc::causal_conv1d_fwd_launch<decltype(t)>(p, s); });
  return out;
}

// Returns (dx, dweight float32, dbias float32 or None).
std::vector<Tensor> causal_conv1d_bwd_cuda(const Tensor& x, const Tensor& weight,
                                              const OptTensor& bias, const Tensor& dout, bool silu,
                                              bool reverse) {
  vc::ConvParams p = conv_params(x, weight, bias, silu, reverse);
  check_io(dout, x, "dout");
  const DeviceGuard guard(x.device());
  Tensor dx = at::empty(x.sizes(), x.options()), dweight = at::empty_like(weight);
  Tensor part = at::empty({p.dim, p.width + 1, static_cast<int64_t>(p.batch) * p.seg_groups},
                          x.options().dtype(at::kFloat));
  OptTensor dbias;
  if (bias) {
    dbias = at::empty_like(*bias);
    p.dbias = dbias->data_ptr<float>();
  }
  p.dout = dout.data_ptr();
  p.dx = dx.data_ptr();
  p.dweight = dweight.data_ptr<float>();
  p.part_w = part.data_ptr<float>();
  launch_io(x.scalar_type(), "causal_conv1d_bwd_cuda",
            [&](auto t, cudaStream_t s) { return vc::causal_conv1d_bwd_launch<decltype(t)>(p, s); });
  return {dx, dweight, undefined_if_absent(dbias)};
}

// Both directions of the conv over one x: weight (2, dim, width), bias (2, dim); direction 1
// runs reversed (anti-causal). Returns out (2, batch, dim, L).
vc::BiConvParams bi_conv_params(const Tensor& x, const Tensor& weight, const OptTensor& bias, bool silu) {
  check_two_dirs(weight, "weight");
  if (bias) check_two_dirs(*bias, "bias");
  vc::BiConvParams bp;
  for (int s = 0; s < 2; ++s) {
    bp.dir[s] = conv_params(x, weight.select(0, s), at_dir(bias, s), silu, /*reverse=*/s == 1);
  }
  return bp;
}

Tensor causal_conv1d_bi_fwd_cuda(const Tensor& x, const Tensor& weight, const OptTensor& bias, bool silu) {
  vc::BiConvParams bp = bi_conv_params(x, weight, bias, silu);
  const DeviceGuard guard(x.device());
  Tensor out = at::empty({2, x.size(0), x.size(1), x.size(2)}, x.options());
  for (int s = 0; s < 2; ++s) bp.dir[s].out = out.select(0, s).data_ptr();
  launch_io(x.scalar_type(), "causal_conv1d_bi_fwd_cuda",
            [&](auto t, cudaStream_t s) { return vc::causal_conv1d_bi_fwd_launch<decltype(t)>(bp, s); });
  return out;
}

// Returns (dx (2, batch, dim, L), dweight (2, dim, width) float32, dbias (2, dim) float32 or None).
std::vector<Tensor> causal_conv1d_bi_bwd_cuda(const Tensor& x, const Tensor& weight,
                                                 const OptTensor& bias, const Tensor& dout_f,
                                                 const Tensor& dout_b, bool silu) {
  vc::BiConvParams bp = bi_conv_params(x, weight, bias, silu);
  check_io(dout_f, x, "dout_f");
  check_io(dout_b, x, "dout_b");
  const DeviceGuard guard(x.device());
  Tensor dx = at::empty({2, x.size(0), x.size(1), x.size(2)}, x.options());
  Tensor dweight = at::empty_like(weight);
  OptTensor dbias;
  if (bias) dbias = at::empty_like(*bias);
  const vc::ConvParams& p = bp.dir[0];
  Tensor part = at::empty({2, p.dim, p.width + 1, static_cast<int64_t>(p.batch) * p.seg_groups},
                          x.options().dtype(at::kFloat));
  for (int s = 0; s < 2; ++s) {
    vc::ConvParams& q = bp.dir[s];
    q.dout = (s == 0 ? dout_f : dout_b).data_ptr();
    q.dx = dx.select(0, s).data_ptr();
    q.dweight = dweight.select(0, s).data_ptr<float>();
    q.dbias = dbias ? dbias->select(0, s).data_ptr<float>() : nullptr;
    q.part_w = part.select(0, s).data_ptr<float>();
  }
  launch_io(x.scalar_type(), "causal_conv1d_bi_bwd_cuda",
            [&](auto t, cudaStream_t s) { return vc::causal_conv1d_bi_bwd_launch<decltype(t)>(bp, s); });
  return {dx, dweight, undefined_if_absent(dbias)};
}

// ----------------------------------------------------------------------------- inference steps
// One decoding step, the state updated in place (it must be contiguous). A/B/C/D/dt_bias and the
// conv weight/bias are float32 (the Python backend converts them).

void check_same_device(const Tensor& t, const Tensor& like, const char* name) {
  TORCH_CHECK(t.device() == like.device(), name, " must be on ", like.device(), ", got ", t.device());
}

Tensor selective_state_update_cuda(const Tensor& state, const Tensor& x, const Tensor& dt, const Tensor& A,
                                   const Tensor& B, const Tensor& C, const OptTensor& D, const OptTensor& z,
                                   const OptTensor& dt_bias, bool dt_softplus) {
  check_cuda_tensor(x, "x");
  TORCH_CHECK(x.dim() == 2 && x.numel() > 0, "x must be a non-empty (batch, dim) tensor, got ", x.sizes());
  const int64_t batch = x.size(0), dim = x.size(1);
  check_cuda_tensor(state, "state");
  check_same_device(state, x, "state");
  TORCH_CHECK(state.dim() == 3 && state.size(0) == batch && state.size(1) == dim && state.size(2) >= 1,
              "state must be (", batch, ", ", dim, ", N), got ", state.sizes());
  const int64_t N = state.size(2);
  TORCH_CHECK(batch * dim * N < (int64_t(1) << 31) && N <= (int64_t(1) << 20),
              "state has too many elements for the cuda kernel: ", state.sizes());
  check_io(dt, x, "dt");
  if (z) check_io(*z, x, "z");
  check_float32(A, x, "A");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == dim && A.size(1) == N, "A must be (", dim, ", ", N, "), got ",
              A.sizes());
  const Tensor* bc[2] = {&B, &C};
  const char* names[2] = {"B", "C"};
  for (int k = 0; k < 2; ++k) {
    const Tensor& X = *bc[k];
    check_float32(X, x, names[k]);
    TORCH_CHECK(X.dim() == 3 && X.size(0) == batch && X.size(1) >= 1 && dim % X.size(1) == 0 && X.size(2) == N,
                names[k], " must be (batch, G, N) with G dividing dim=", dim, ", got ", X.sizes());
  }
  const OptTensor* vecs[2] = {&D, &dt_bias};
  const char* vec_names[2] = {"D", "dt_bias"};
  for (int k = 0; k < 2; ++k) {
    if (!*vecs[k]) continue;
    check_float32(**vecs[k], x, vec_names[k]);
    TORCH_CHECK((*vecs[k])->numel() == dim, vec_names[k], " must be (", dim, ",)");
  }
  vc::StateUpdateParams p;
  p.batch = static_cast<int>(batch);
  p.dim = static_cast<int>(dim);
  p.dstate = static_cast<int>(N);
  p.b_groups = static_cast<int>(B.size(1));
  p.c_groups = static_cast<int>(C.size(1));
  while (p.lanes > 4 && p.lanes / 2 >= N) p.lanes /= 2;  // the smallest power of two >= N, from 4 to 32
  p.dt_softplus = dt_softplus;
  p.state = state.data_ptr();
  p.x = x.data_ptr();
  p.dt = dt.data_ptr();
  p.z = vptr(z);
  p.A = A.data_ptr<float>();
  p.B = B.data_ptr<float>();
  p.C = C.data_ptr<float>();
  p.D = fptr(D);
  p.dt_bias = fptr(dt_bias);
  const DeviceGuard guard(x.device());
  Tensor out = at::empty_like(x);
  p.out = out.data_ptr();
  launch_io(x.scalar_type(), "selective_state_update_cuda", [&](auto t, cudaStream_t s) {
    return dispatch_io(state.scalar_type(), [&](auto st) {
      return vc::selective_state_update_launch<decltype(t), decltype(st)>(p, s);
    });
  });
  return out;
}

Tensor causal_conv1d_update_cuda(const Tensor& x, const Tensor& conv_state, const Tensor& weight,
                                 const OptTensor& bias, bool silu, const OptTensor& cache_seqlens) {
  check_cuda_tensor(x, "x");
  TORCH_CHECK(x.dim() == 3 && x.numel() > 0, "x must be a non-empty (batch, dim, seqlen) tensor, got ",
              x.sizes());
  const int64_t batch = x.size(0), dim = x.size(1);
  check_float32(weight, x, "weight");
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == dim && weight.size(1) >= 2 &&
                  weight.size(1) <= vc::kConvMaxWidth,
              "weight must be (", dim, ", width) with 2 <= width <= ", vc::kConvMaxWidth, ", got ",
              weight.sizes());
  const int64_t width = weight.size(1);
  check_cuda_tensor(conv_state, "conv_state");
  check_same_device(conv_state, x, "conv_state");
  TORCH_CHECK(conv_state.scalar_type() == x.scalar_type(), "conv_state must have x's dtype ",
              x.scalar_type(), ", got ", conv_state.scalar_type());
  TORCH_CHECK(conv_state.dim() == 3 && conv_state.size(0) == batch && conv_state.size(1) == dim &&
                  conv_state.size(2) >= width - 1 && conv_state.size(2) < (int64_t(1) << 30),
              "conv_state must be (", batch, ", ", dim, ", state_len >= ", width - 1, "), got ",
              conv_state.sizes());
  TORCH_CHECK(x.numel() < (int64_t(1) << 31) && conv_state.numel() < (int64_t(1) << 40),
              "x has too many elements for the cuda kernel: ", x.sizes());
  if (bias) {
    check_float32(*bias, x, "bias");
    TORCH_CHECK(bias->numel() == dim, "bias must be (", dim, ",)");
  }
  if (cache_seqlens) {
    check_cuda_tensor(*cache_seqlens, "cache_seqlens");
    check_same_device(*cache_seqlens, x, "cache_seqlens");
    TORCH_CHECK(cache_seqlens->scalar_type() == at::kInt, "cache_seqlens must be int32, got ",
                cache_seqlens->scalar_type());
    TORCH_CHECK(cache_seqlens->dim() == 1 && cache_seqlens->numel() == batch, "cache_seqlens must be (",
                batch, ",)");
  }
  vc::ConvUpdateParams p;
  p.batch = static_cast<int>(batch);
  p.dim = static_cast<int>(dim);
  p.seqlen = static_cast<int>(x.size(2));
  p.width = static_cast<int>(width);
  p.state_len = static_cast<int>(conv_state.size(2));
  p.silu = silu;
  p.x = x.data_ptr();
  p.conv_state = conv_state.data_ptr();
  p.weight = weight.data_ptr<float>();
  p.bias = fptr(bias);
  p.cache_seqlens = cache_seqlens ? cache_seqlens->data_ptr<int>() : nullptr;
  const DeviceGuard guard(x.device());
  Tensor out = at::empty_like(x);
  p.out = out.data_ptr();
  launch_io(x.scalar_type(), "causal_conv1d_update_cuda",
            [&](auto t, cudaStream_t s) { return vc::causal_conv1d_update_launch<decltype(t)>(p, s); });
  return out;
}

}  // namespace

// The CUDA ops, one line each: name and the schema's arguments and returns. CUDA builds register
// them with torch's dispatcher (schema + CUDA kernel); the emulator build exports the same
// functions from its pybind11 module. Fake (meta) kernels: vimd_kernels/native.py.
#define VIMD_CUDA_OPS(X)                                                                          \
  X(selective_scan_fwd_cuda,                                                                      \
    "(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "               \
    "Tensor? delta_bias, Tensor? initial_state, bool delta_softplus, bool reverse, "              \
    "int chunk_len) -> (Tensor, Tensor)")                                                         \
  X(selective_scan_bwd_cuda,                                                                      \
    "(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "               \
    "Tensor? delta_bias, Tensor? initial_state, Tensor dout, Tensor? dlast_state, "               \
    "bool delta_softplus, bool reverse, int seg_channels, int slab_channels, int chunk_len) "    \
    "-> Tensor[]")                                                                                \
  X(causal_conv1d_fwd_cuda,                                                                       \
    "(Tensor x, Tensor weight, Tensor? bias, bool silu, bool reverse) -> Tensor")                 \
  X(causal_conv1d_bwd_cuda,                                                                       \
    "(Tensor x, Tensor weight, Tensor? bias, Tensor dout, bool silu, bool reverse) -> Tensor[]")  \
  X(selective_scan_bi_fwd_cuda,                                                                   \
    "(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "               \
    "Tensor? delta_bias, bool delta_softplus, int chunk_len) -> (Tensor, Tensor)")                \
  X(selective_scan_bi_bwd_cuda,                                                                   \
    "(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "               \
    "Tensor? delta_bias, Tensor dout_f, Tensor dout_b, bool delta_softplus, int seg_channels, "   \
    "int slab_channels, int chunk_len) -> Tensor[]")                                             \
  X(causal_conv1d_bi_fwd_cuda, "(Tensor x, Tensor weight, Tensor? bias, bool silu) -> Tensor")    \
  X(causal_conv1d_bi_bwd_cuda,                                                                    \
    "(Tensor x, Tensor weight, Tensor? bias, Tensor dout_f, Tensor dout_b, bool silu) -> Tensor[]")  \
  X(selective_state_update_cuda,                                                                  \
    "(Tensor(a!) state, Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor? D, "           \
    "Tensor? z, Tensor? dt_bias, bool dt_softplus) -> Tensor")                                    \
  X(causal_conv1d_update_cuda,                                                                    \
    "(Tensor x, Tensor(a!) conv_state, Tensor weight, Tensor? bias, bool silu, "                  \
    "Tensor? cache_seqlens) -> Tensor")

#ifdef VIMD_CUDA_EMULATION
void register_cuda_ops(pybind11::module_& m) {
#define VIMD_PYBIND_DEF(name, schema) m.def(#name, &name, #name schema);
  VIMD_CUDA_OPS(VIMD_PYBIND_DEF)
#undef VIMD_PYBIND_DEF
}
#else
TORCH_LIBRARY_FRAGMENT(vimd, m) {
#define VIMD_DEF(name, schema) m.def(#name schema);
  VIMD_CUDA_OPS(VIMD_DEF)
#undef VIMD_DEF
}

TORCH_LIBRARY_IMPL(vimd, CUDA, m) {
#define VIMD_IMPL(name, schema) m.impl(#name, TORCH_FN(name));
  VIMD_CUDA_OPS(VIMD_IMPL)
#undef VIMD_IMPL
}
#endif
