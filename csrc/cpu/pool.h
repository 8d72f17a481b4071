// The CPU ops' own worker threads (csrc/cpu/pool.cpp). Idle workers sleep on a condition variable
// instead of spinning, so on a machine shared with other processes (data-loader workers, a second
// job) a call gives the cores back as soon as its pieces are done: OpenMP's default wait policy
// keeps idle threads spinning for a while after every parallel region.
#pragma once

#include <c10/util/FunctionRef.h>

#include <cstdint>

namespace vimd::cpu {

// Runs fn(begin, end) over [0, n) in pieces of `grab` items (the last one shorter), handed out
// dynamically to the calling thread and up to at::get_num_threads() - 1 workers: on a busy machine
// a thread the OS deschedules holds up at most one piece. Every piece must write its own outputs
// (results never depend on which thread runs which piece). Runs on the calling thread alone when
// `work` (estimated inner steps) is below `min_work`, when torch is limited to one thread, inside
// an intra-op parallel region, or while another thread's call holds the workers. The first
// exception thrown by a piece is rethrown here once every thread has stopped.
void parallel_pieces(int64_t n, int64_t grab, int64_t work, int64_t min_work,
                     c10::function_ref<void(int64_t, int64_t)> fn);

}  // namespace vimd::cpu
