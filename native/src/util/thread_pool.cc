#include "util/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <memory>

namespace ew {
namespace {

// How long a worker or a waiting caller spins before sleeping: long enough to bridge
// the gap between two ops of one step, short enough to leave an idle engine idle.
constexpr auto kSpin = std::chrono::microseconds(200);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

// Spins until pred() or the spin time ran out; returns pred(). Yields now and then so a
// spinning thread gives its core to any other runnable thread (the daemon's event loop).
template <typename Pred>
bool spin_until(Pred pred) {
  const auto end = std::chrono::steady_clock::now() + kSpin;
  for (int i = 0;; ++i) {
    if (pred()) return true;
    cpu_relax();
    if ((i & 63) == 63) {
      if (std::chrono::steady_clock::now() > end) return pred();
      std::this_thread::yield();
    }
  }
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0) n_threads = std::max(1u, std::thread::hardware_concurrency());
  for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_start_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run_chunks() {
  for (int64_t c; (c = next_.fetch_add(1, std::memory_order_relaxed)) < job_chunks_;)
    (*job_)(c * job_chunk_, std::min(job_n_, (c + 1) * job_chunk_));
}

void ThreadPool::worker_loop() {
  uint64_t seen = state_.load(std::memory_order_acquire) >> 32;
  for (;;) {
    auto ready = [&] {
      return stop_.load(std::memory_order_acquire) || (state_.load(std::memory_order_acquire) >> 32) != seen;
    };
    if (!spin_until(ready)) {
      std::unique_lock<std::mutex> lk(mu_);
      ++sleepers_;
      cv_start_.wait(lk, ready);
      --sleepers_;
    }
    if (stop_.load(std::memory_order_acquire)) return;
    // Join the newest loop while it is open; a closed (or already replaced) one is left alone.
    uint64_t s = state_.load(std::memory_order_acquire);
    seen = s >> 32;
    bool joined = false;
    while ((s >> 32) == seen && !(s & kClosed))
      if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
        joined = true;
        break;
      }
    if (!joined) continue;
    run_chunks();  // the job fields were written before the generation that published them
    const uint64_t left = state_.fetch_sub(1, std::memory_order_acq_rel) - 1;
    if ((left & kClosed) && (left & kCount) == 0) {
      std::lock_guard<std::mutex> lk(mu_);
      cv_done_.notify_one();
    }
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t parts = std::min<int64_t>(size(), (n + grain - 1) / grain);
  parallel_chunks(n, (n + parts - 1) / parts, fn);
}

void ThreadPool::parallel_chunks(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  chunk = std::max<int64_t>(1, chunk);
  const int64_t n_chunks = (n + chunk - 1) / chunk;
  if (n_chunks <= 1 || workers_.empty()) {
    for (int64_t b = 0; b < n; b += chunk) fn(b, std::min(n, b + chunk));
    return;
  }
  std::lock_guard<std::mutex> run_lk(run_mu_);
  bool wake = false;
  {
    std::lock_guard<std::mutex> lk(mu_);
    job_ = &fn;
    job_n_ = n;
    job_chunk_ = chunk;
    job_chunks_ = n_chunks;
    next_.store(0, std::memory_order_relaxed);
    const uint64_t generation = (state_.load(std::memory_order_relaxed) >> 32) + 1;
    state_.store((generation & 0xffffffffu) << 32, std::memory_order_release);  // open, nobody in it
    wake = sleepers_ > 0;
  }
  if (wake) cv_start_.notify_all();
  run_chunks();
  // Every chunk is claimed: close the loop and wait for the workers that are in it.
  const uint64_t s = state_.fetch_or(kClosed, std::memory_order_acq_rel);
  if ((s & kCount) == 0) return;
  auto done = [&] { return (state_.load(std::memory_order_acquire) & kCount) == 0; };
  if (!spin_until(done)) {
    std::unique_lock<std::mutex> lk(mu_);
    cv_done_.wait(lk, done);
  }
}

namespace {
std::mutex global_mu;
std::unique_ptr<ThreadPool>& global_slot() {
  static std::unique_ptr<ThreadPool> pool;
  return pool;
}
std::vector<std::unique_ptr<ThreadPool>>& retired() {
  static std::vector<std::unique_ptr<ThreadPool>> pools;
  return pools;
}
}  // namespace

ThreadPool& ThreadPool::global() {
  std::lock_guard<std::mutex> lk(global_mu);
  auto& p = global_slot();
  if (!p) p = std::make_unique<ThreadPool>(0);
  return *p;
}

void ThreadPool::set_global_threads(int n_threads) {
  std::lock_guard<std::mutex> lk(global_mu);
  auto& p = global_slot();
  if (n_threads <= 0) n_threads = std::max(1u, std::thread::hardware_concurrency());
  if (p && p->size() == n_threads) return;
  if (p) retired().push_back(std::move(p));
  p = std::make_unique<ThreadPool>(n_threads);
}

}  // namespace ew
