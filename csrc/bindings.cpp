// pybind11 module vimd_kernels._C: the CPU ops of csrc/cpu/ops.cpp (always), the kernels' layout
// constants (always) and, when built with -DVIMD_WITH_CUDA, the CUDA ops registered by
// csrc/cuda/ops.cpp (functions named *_cuda).
#include <torch/extension.h>

#include "cpu/kernels.h"
#include "cpu/ops.h"
#include "cuda/layout.h"

#ifdef VIMD_WITH_CUDA
void register_cuda_ops(pybind11::module_& m);
#endif

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
  m.doc() = "vimd kernels: selective scan and causal conv1d (C++ CPU; CUDA when built with it)";
  m.def("selective_scan_fwd_cpu", &vimd::cpu::selective_scan_fwd,
        "selective scan forward -> [out, last_state]", py::arg("u"), py::arg("delta"),
        py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"), py::arg("z"),
        py::arg("delta_bias"), py::arg("initial_state"), py::arg("delta_softplus"),
        py::arg("reverse"));
  m.def("selective_scan_bwd_cpu", &vimd::cpu::selective_scan_bwd,
        "selective scan backward -> [du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state]",
        py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"),
        py::arg("z"), py::arg("delta_bias"), py::arg("initial_state"), py::arg("dout"),
        py::arg("dlast_state"), py::arg("delta_softplus"), py::arg("reverse"));
  m.def("causal_conv1d_fwd_cpu", &vimd::cpu::causal_conv1d_fwd, "depthwise causal conv1d forward",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("silu"), py::arg("reverse"));
  m.def("causal_conv1d_bwd_cpu", &vimd::cpu::causal_conv1d_bwd,
        "depthwise causal conv1d backward -> [dx, dweight, dbias]", py::arg("x"),
        py::arg("weight"), py::arg("bias"), py::arg("dout"), py::arg("silu"), py::arg("reverse"));
  m.def("build_info", &build_info, "what this build contains and which CPU kernels run");
  m.def("_set_cpu_isa", &vimd::cpu::set_isa, py::arg("isa"),
        "select the CPU kernels ('auto' or a supported ISA); returns the previous one (for tests)");
  for (const Constant& c : kConstants) m.attr(c.name) = c.value;
#ifdef VIMD_WITH_CUDA
  register_cuda_ops(m);
#endif
}
