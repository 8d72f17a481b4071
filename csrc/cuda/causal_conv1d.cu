// Explicit instantiations of the causal conv1d forward and backward (per element type; one and both directions).
#include "causal_conv1d.cuh"

namespace vimd {
namespace cuda {
template cudaError_t causal_conv1d_fwd_launch<float>(const ConvParams&, cudaStream_t);
template cudaError_t causal_conv1d_fwd_launch<__half>(const ConvParams&, cudaStream_t);
template cudaError_t causal_conv1d_fwd_launch<__nv_bfloat16>(const ConvParams&, cudaStream_t);
template cudaError_t causal_conv1d_bwd_launch<float>(const ConvParams&, cudaStream_t);
template cudaError_t causal_conv1d_bwd_launch<__half>(const ConvParams&, cudaStream_t);
template cudaError_t causal_conv1d_bwd_launch<__nv_bfloat16>(const ConvParams&, cudaStream_t);
template cudaError_t causal_conv1d_bi_fwd_launch<float>(const BiConvParams&, cudaStream_t);
template cudaError_t causal_conv1d_bi_fwd_launch<__half>(const BiConvParams&, cudaStream_t);
template cudaError_t causal_conv1d_bi_fwd_launch<__nv_bfloat16>(const BiConvParams&, cudaStream_t);
template cudaError_t causal_conv1d_bi_bwd_launch<float>(const BiConvParams&, cudaStream_t);
template cudaError_t causal_conv1d_bi_bwd_launch<__half>(const BiConvParams&, cudaStream_t);
template cudaError_t causal_conv1d_bi_bwd_launch<__nv_bfloat16>(const BiConvParams&, cudaStream_t);
}  // namespace cuda
}  // namespace vimd
