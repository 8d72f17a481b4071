// Worker threads of the CPU ops: see pool.h. One job at a time; the caller takes pieces too and,
// when it runs out, waits only for the workers that hold a piece.
#include "cpu/pool.h"

#include <ATen/Parallel.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

namespace vimd::cpu {
namespace {

struct Job {
  int64_t n, grab;
  c10::function_ref<void(int64_t, int64_t)> fn;
  std::atomic<int64_t> next{0};
  std::mutex error_mutex;
  std::exception_ptr error;

  // Takes pieces until none is left; keeps the first exception and stops the others early.
  void work() {
    for (int64_t i = next.fetch_add(grab); i < n; i = next.fetch_add(grab)) {
      try {
        fn(i, std::min(i + grab, n));
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next.store(n);
      }
    }
  }
};

class Pool {
 public:
  // Runs `job` on the caller and `helpers` workers; false (nothing run) while another call holds it.
  bool run(Job& job, int helpers) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (job_ != nullptr) return false;
    while (workers_ < helpers) {  // detached: a pool lives as long as the process
      std::thread([this] { loop(); }).detach();
      ++workers_;
    }
    job_ = &job;
    open_ = helpers;
    busy_ = 0;
    lock.unlock();
    wake_.notify_all();
    job.work();
    lock.lock();
    open_ = 0;  // workers that have not started yet stay out: the pieces are gone
    done_.wait(lock, [this] { return busy_ == 0; });
    job_ = nullptr;
    return true;
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [this] { return open_ > 0; });
      --open_;
      ++busy_;
      Job* job = job_;
      lock.unlock();
      job->work();
      lock.lock();
      if (--busy_ == 0) done_.notify_one();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_, done_;
  Job* job_ = nullptr;
  int open_ = 0;     // workers the current job still takes
  int busy_ = 0;     // workers inside the current job
  int workers_ = 0;  // threads started
};

// The process's pool. A forked child (a data-loader worker) has none of the parent's threads and
// may inherit a locked mutex: it starts a pool of its own and leaves the parent's copy untouched.
std::atomic<Pool*> g_pool{nullptr};

Pool& pool() {
  static const int registered = pthread_atfork(nullptr, nullptr, [] { g_pool.store(nullptr); });
  (void)registered;
  Pool* p = g_pool.load();
  if (p == nullptr) {
    Pool* fresh = new Pool();
    if (g_pool.compare_exchange_strong(p, fresh)) {
      p = fresh;
    } else {
      delete fresh;
    }
  }
  return *p;
}

}  // namespace

void parallel_pieces(int64_t n, int64_t grab, int64_t work, int64_t min_work,
                     c10::function_ref<void(int64_t, int64_t)> fn) {
  if (n <= 0) return;
  grab = std::max<int64_t>(grab, 1);
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), (n + grab - 1) / grab);
  Job job{n, grab, fn};
  if (work < min_work || threads <= 1 || at::in_parallel_region() ||
      !pool().run(job, static_cast<int>(threads - 1))) {
    job.work();
  }
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace vimd::cpu
