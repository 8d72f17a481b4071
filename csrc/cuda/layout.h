// Layout constants of the CUDA kernels: tile sizes, rows per block, limits and register budgets.
// Plain C++ with no includes, so that every build of vimd_kernels._C exports them (the Python
// launch planning reads them from there, csrc/bindings.cpp), the CPU-only one too.
#pragma once

namespace vimd {
namespace cuda {

// Largest state dimension N of the scan kernels (states in registers 16 at a time, the other
// groups cycled through shared memory).
constexpr int kScanMaxState = 64;

// Selective scan forward: one thread walks one (batch, channel) row with its states in registers
// (kFwdStateGroup at a time); a block's kFwdRows rows share B/C, staged kFwdSteps steps at a time.
// Forward chunks are multiples of kFwdSteps.
constexpr int kFwdRows = 128;
constexpr int kFwdSteps = 8;
constexpr int kFwdStateGroup = 16;
// The forward addresses a warp's 32 rows and a block's N <= kScanMaxState B/C rows (padded by
// fewer than 16 steps) with 32-bit offsets from one base.
constexpr int kFwdMaxSeqlen = (1 << 25) - 16;
// Forward kernels (summary and main pass): blocks per multiprocessor their registers are budgeted
// for (__launch_bounds__). 3 blocks of 128 threads leave room for the next tile's loads in flight
// (at 4, the B/C-grouped kernels spilled); constant B/C hold 2 x kFwdStateGroup more values in
// registers, so the kernels for them get 2 (at 3 the two-direction one spilled on sm_80).
constexpr int kFwdBlocks = 3;             // B and C both grouped (the models' case)
constexpr int kFwdBlocksConstBC = 2;      // B or C constant

// Selective scan backward: one thread walks one (batch, channel) row, like the forward; a block
// is one warp of kBwdRows rows in one B/C group segment (it walks slab_channels channels, a
// multiple of kBwdRows, kBwdRows at a time). A row's states are checkpointed every kBwdSegment
// steps (= kFwdSteps, the staging unit) and each segment is walked in reverse from its checkpoint.
// Backward chunks are multiples of kBwdSegment.
constexpr int kBwdRows = 32;
constexpr int kBwdSegment = kFwdSteps;

// Causal conv1d: one thread computes kConvItems consecutive outputs of one row.
constexpr int kConvItems = 8;
constexpr int kConvMaxWidth = 8;
constexpr int kConvThreads = 128;

}  // namespace cuda
}  // namespace vimd
