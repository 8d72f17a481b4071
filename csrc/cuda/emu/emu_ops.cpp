// The CUDA ops (csrc/cuda/ops.cpp) over CPU tensors, with the kernel templates of
// csrc/cuda running under the host emulator (simt_host.h). Built on demand by the tests
// (torch.utils.cpp_extension.load); never part of the package build.
#include <torch/extension.h>

#include "simt_host.h"

#include "../causal_conv1d.cuh"
#include "../selective_scan_bwd.cuh"
#include "../selective_scan_fwd.cuh"
#include "../update.cuh"

#include "../ops.cpp"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { register_cuda_ops(m); }
