// The CPU instruction-set switch of the ops library (csrc/cpu/ops.cpp), for the pybind11 module
// (csrc/bindings.cpp). The tensor-level CPU ops themselves are reached through torch's dispatcher
// (torch.ops.vimd.*_cpu: the table at the end of ops.cpp).
#pragma once

#include <string>
#include <vector>

namespace vimd::cpu {

std::vector<std::string> compiled_isas();   // e.g. {"default", "avx2", "avx512"}
std::vector<std::string> supported_isas();  // compiled and runnable on this CPU
std::string active_isa();
// Selects the kernels of `isa` (one of supported_isas(), or "auto"); returns the previous one.
std::string set_isa(const std::string& isa);

}  // namespace vimd::cpu
