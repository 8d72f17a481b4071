// Tensor-level CPU ops of the inference steps (csrc/cpu/update_ops.cpp): argument checks,
// packing, dispatch to the kernels of the selected instruction set (update.h). The state is
// updated in place; see vimd_kernels/ops.py for the contract.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "cpu/kernels.h"

namespace vimd::cpu {

// state (batch, dim, N) contiguous, updated in place -> out (batch, dim) in x's dtype.
at::Tensor selective_state_update(const at::Tensor& state, const at::Tensor& x,
                                  const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                                  const at::Tensor& C, const std::optional<at::Tensor>& D,
                                  const std::optional<at::Tensor>& z,
                                  const std::optional<at::Tensor>& dt_bias, bool dt_softplus);

// x (batch, dim, seqlen); conv_state (batch, dim, state_len) contiguous, updated in place -> out
// (batch, dim, seqlen). cache_seqlens (batch,) int32: conv_state is a circular buffer.
at::Tensor causal_conv1d_update(const at::Tensor& x, const at::Tensor& conv_state,
                                const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                bool silu, const std::optional<at::Tensor>& cache_seqlens);

// Shared with csrc/cpu/ops.cpp: the kernels of the active instruction set, and the kernel element
// type of a tensor (`name` in the error for any other dtype).
const KernelTable& active_kernels();
IoType io_type_of(const at::Tensor& t, const char* name);

}  // namespace vimd::cpu
