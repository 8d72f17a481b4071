// Tensor-level CPU ops (argument checks, packing, allocation, dispatch to the
// kernels of the selected instruction set, ordered reductions). See vimd_kernels/ops.py for the
// contract; grads come back in the dtype and shape of their input, undefined for absent inputs.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace vimd::cpu {

using OptTensor = std::optional<at::Tensor>;

// -> (out, last_state)
std::tuple<at::Tensor, at::Tensor> selective_scan_fwd(const at::Tensor& u, const at::Tensor& delta,
                                                      const at::Tensor& A, const at::Tensor& B,
                                                      const at::Tensor& C, const OptTensor& D,
                                                      const OptTensor& z, const OptTensor& delta_bias,
                                                      const OptTensor& initial_state,
                                                      bool delta_softplus, bool reverse);

// -> {du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state}
std::vector<at::Tensor> selective_scan_bwd(const at::Tensor& u, const at::Tensor& delta,
                                           const at::Tensor& A, const at::Tensor& B,
                                           const at::Tensor& C, const OptTensor& D,
                                           const OptTensor& z, const OptTensor& delta_bias,
                                           const OptTensor& initial_state, const at::Tensor& dout,
                                           const OptTensor& dlast_state, bool delta_softplus,
                                           bool reverse);

at::Tensor causal_conv1d_fwd(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias,
                             bool silu, bool reverse);

// -> {dx, dweight, dbias}
std::vector<at::Tensor> causal_conv1d_bwd(const at::Tensor& x, const at::Tensor& weight,
                                          const OptTensor& bias, const at::Tensor& dout, bool silu,
                                          bool reverse);

std::vector<std::string> compiled_isas();   // e.g. {"default", "avx2", "avx512"}
std::vector<std::string> supported_isas();  // compiled and runnable on this CPU
std::string active_isa();
// Selects the kernels of `isa` (one of supported_isas(), or "auto"); returns the previous one.
std::string set_isa(const std::string& isa);

}  // namespace vimd::cpu
