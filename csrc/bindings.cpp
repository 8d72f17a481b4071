// pybind11 module vimd_kernels._C: what is not an op. The kernels' layout constants, what the
// build contains, and the CPU instruction-set switch. The ops themselves live in the library
// vimd_kernels/libvimd_ops.so (csrc/cpu/ops.cpp, and csrc/cuda/ops.cpp in CUDA builds), which
// registers them with torch's dispatcher (torch.ops.vimd.*) and needs no Python; this module links
// it, so importing it loads the ops.
#include <torch/extension.h>

#include "cpu/kernels.h"
#include "cpu/ops.h"
#include "cuda/layout.h"

namespace {

// Module attributes: the kernels' layout constants, for the Python side (launch planning,
// argument checks). Every build exports them, the CPU-only one too.
struct Constant {
  const char* name;
  long long value;
};
constexpr Constant kConstants[] = {
    {"cpu_scan_chunk", vimd::cpu::kChunk},
    {"cpu_scan_whole_row", vimd::cpu::kWholeRow},
    {"cpu_conv_max_width", vimd::cpu::kConvMaxWidth},
    {"cuda_scan_max_state", vimd::cuda::kScanMaxState},
    {"cuda_bwd_rows", vimd::cuda::kBwdRows},
    {"cuda_bwd_segment", vimd::cuda::kBwdSegment},
    {"cuda_fwd_rows", vimd::cuda::kFwdRows},
    {"cuda_fwd_steps", vimd::cuda::kFwdSteps},
    {"cuda_fwd_state_group", vimd::cuda::kFwdStateGroup},
    {"cuda_fwd_max_seqlen", vimd::cuda::kFwdMaxSeqlen},
    {"cuda_fwd_blocks", vimd::cuda::kFwdBlocks},
    {"cuda_fwd_blocks_const_bc", vimd::cuda::kFwdBlocksConstBC},
    {"cuda_conv_items", vimd::cuda::kConvItems},
    {"cuda_conv_max_width", vimd::cuda::kConvMaxWidth},
    {"cuda_conv_threads", vimd::cuda::kConvThreads},
};

pybind11::dict build_info() {
  pybind11::dict info;
  info["cpu_isas_compiled"] = vimd::cpu::compiled_isas();
  info["cpu_isas_supported"] = vimd::cpu::supported_isas();
  info["cpu_isa"] = vimd::cpu::active_isa();
  info["torch_cpu_capability"] = at::get_cpu_capability();
  info["cplusplus"] = static_cast<long>(__cplusplus);  // the C++ standard it was compiled as
#ifdef VIMD_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "vimd kernels: layout constants and build information (the ops: torch.ops.vimd)";
  m.def("build_info", &build_info, "what this build contains and which CPU kernels run");
  m.def("_set_cpu_isa", &vimd::cpu::set_isa, py::arg("isa"),
        "select the CPU kernels ('auto' or a supported ISA); returns the previous one (for tests)");
  for (const Constant& c : kConstants) m.attr(c.name) = c.value;
#ifdef VIMD_WITH_CUDA
  m.attr("with_cuda") = true;  // the ops library has the CUDA ops (torch.ops.vimd.*_cuda)
#else
  m.attr("with_cuda") = false;
#endif
}
