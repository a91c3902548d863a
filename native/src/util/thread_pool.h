// A fixed pool of worker threads for data-parallel loops. parallel_for splits
// [0, n) into contiguous ranges, one per worker, and runs them with the calling
// thread taking a share; the split depends only on n and the thread count, so
// results never depend on timing.
//
// A forward pass issues dozens of short loops back to back, so workers (and the
// caller waiting for them) spin for a short while before sleeping on a condition
// variable: a futex wake-up per loop would cost more than many of the loops.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace ew {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);  // n_threads <= 0: hardware_concurrency
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }
  // fn(begin, end) over disjoint ranges covering [0, n); chunks of at least `grain`.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain = 1);
  // fn(b, e) over consecutive chunks [b, e) of `chunk` items covering [0, n), which the
  // threads claim one at a time: a thread that starts late (its core busy elsewhere)
  // takes fewer chunks instead of holding up the loop with a fixed share. Timing decides
  // only who computes a chunk, never what it computes.
  void parallel_chunks(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t)>& fn);

  // The process-wide pool used by the CPU kernels.
  static ThreadPool& global();
  // Replaces the global pool when the size differs. The previous pool is kept alive
  // (its threads asleep), so a loop still running on it, e.g. another engine's step,
  // finishes safely.
  static void set_global_threads(int n_threads);

 private:
  void worker_loop(int index);
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_start_, cv_done_;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0;
  int job_parts_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  int sleepers_ = 0;  // workers waiting on cv_start_ (guarded by mu_)
  std::atomic<bool> stop_{false};
  std::mutex run_mu_;  // one parallel_for at a time
};

}  // namespace ew
