// A fixed pool of worker threads for data-parallel loops. A loop is cut into chunks that
// depend only on its size (never on timing), and the threads claim chunks one at a time,
// the calling thread among them, so results never depend on who ran which chunk.
//
// No thread is ever waited for unless it took part: a worker that is late (its core busy
// with another process, or asleep) joins a loop only while the loop is still open, and the
// caller, once every chunk is claimed, closes the loop and waits only for the workers that
// joined it to finish their chunks. A loaded machine therefore costs a loop the share of
// work a missing thread would have done, never a scheduler time slice spent waiting for it.
//
// A forward pass issues dozens of short loops back to back, so workers (and the caller
// waiting for them) spin for a short while before sleeping on a condition variable: a
// futex wake-up per loop would cost more than many of the loops.
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
  // fn(begin, end) over disjoint ranges covering [0, n): at most size() of them, each at
  // least `grain` long (the cut depends only on n, grain and the thread count), claimed as
  // parallel_chunks' chunks are, so one thread may run several.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain = 1);
  // fn(b, e) over consecutive chunks [b, e) of `chunk` items covering [0, n), which the
  // threads claim one at a time: a thread that starts late takes fewer chunks (or none)
  // instead of holding up the loop with a fixed share.
  void parallel_chunks(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t)>& fn);

  // The process-wide pool used by the CPU kernels.
  static ThreadPool& global();
  // Replaces the global pool when the size differs. The previous pool is kept alive
  // (its threads asleep), so a loop still running on it, e.g. another engine's step,
  // finishes safely.
  static void set_global_threads(int n_threads);

 private:
  // state_: the loop's generation (high 32 bits), kClosed, and the workers in it (low bits).
  static constexpr uint64_t kClosed = uint64_t{1} << 31, kCount = kClosed - 1;
  void worker_loop();
  void run_chunks();
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_start_, cv_done_;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0, job_chunk_ = 1, job_chunks_ = 0;
  std::atomic<int64_t> next_{0};  // the next chunk to claim
  std::atomic<uint64_t> state_{0};
  int sleepers_ = 0;  // workers waiting on cv_start_ (guarded by mu_)
  std::atomic<bool> stop_{false};
  std::mutex run_mu_;  // one loop at a time
};

}  // namespace ew
