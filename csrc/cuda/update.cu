// Explicit instantiations of the inference steps: the state update per (x type, state type), the
// conv update per element type.
#include "update.cuh"

namespace vimd {
namespace cuda {
template cudaError_t selective_state_update_launch<float, float>(const StateUpdateParams&, cudaStream_t);
template cudaError_t selective_state_update_launch<float, __half>(const StateUpdateParams&, cudaStream_t);
template cudaError_t selective_state_update_launch<float, __nv_bfloat16>(const StateUpdateParams&, cudaStream_t);
template cudaError_t selective_state_update_launch<__half, float>(const StateUpdateParams&, cudaStream_t);
template cudaError_t selective_state_update_launch<__half, __half>(const StateUpdateParams&, cudaStream_t);
template cudaError_t selective_state_update_launch<__half, __nv_bfloat16>(const StateUpdateParams&, cudaStream_t);
template cudaError_t selective_state_update_launch<__nv_bfloat16, float>(const StateUpdateParams&, cudaStream_t);
template cudaError_t selective_state_update_launch<__nv_bfloat16, __half>(const StateUpdateParams&, cudaStream_t);
template cudaError_t selective_state_update_launch<__nv_bfloat16, __nv_bfloat16>(const StateUpdateParams&, cudaStream_t);
template cudaError_t causal_conv1d_update_launch<float>(const ConvUpdateParams&, cudaStream_t);
template cudaError_t causal_conv1d_update_launch<__half>(const ConvUpdateParams&, cudaStream_t);
template cudaError_t causal_conv1d_update_launch<__nv_bfloat16>(const ConvUpdateParams&, cudaStream_t);
}  // namespace cuda
}  // namespace vimd
