// Explicit instantiations of the selective-scan forward (per element type; one and both directions).
#include "selective_scan_fwd.cuh"

namespace vimd {
namespace cuda {
template cudaError_t selective_scan_fwd_launch<float>(const ScanParams&, cudaStream_t);
template cudaError_t selective_scan_fwd_launch<__half>(const ScanParams&, cudaStream_t);
template cudaError_t selective_scan_fwd_launch<__nv_bfloat16>(const ScanParams&, cudaStream_t);
template cudaError_t selective_scan_bi_fwd_launch<float>(const BiScanParams&, cudaStream_t);
template cudaError_t selective_scan_bi_fwd_launch<__half>(const BiScanParams&, cudaStream_t);
template cudaError_t selective_scan_bi_fwd_launch<__nv_bfloat16>(const BiScanParams&, cudaStream_t);
}  // namespace cuda
}  // namespace vimd
