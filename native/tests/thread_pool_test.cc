// ThreadPool (util/thread_pool.h): every index exactly once, however short and however
// many loops run back to back (workers spin between them, then sleep), and replacing
// the global pool while another thread runs loops on it.
#include "util/thread_pool.h"

#include <atomic>
#include <thread>
#include <vector>

#include "test.h"

using namespace ew;

TEST(thread_pool_runs_every_index_once_in_back_to_back_loops) {
  ThreadPool pool(3);
  std::vector<int> hits(64);
  for (int round = 0; round < 3000; ++round) {
    const int64_t n = 1 + round % 64;
    for (int64_t i = 0; i < n; ++i) hits[i] = 0;
    pool.parallel_for(n, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) ++hits[i];
    });
    for (int64_t i = 0; i < n; ++i)
      if (hits[i] != 1) CHECK_EQ(hits[i], 1);
    if (round % 1000 == 999) std::this_thread::sleep_for(std::chrono::milliseconds(2));  // workers fall asleep
  }
}

TEST(thread_pool_global_resize_while_another_thread_runs_loops) {
  std::atomic<bool> done{false};
  std::atomic<int64_t> total{0};
  std::thread user([&] {
    for (int round = 0; round < 400; ++round)
      ThreadPool::global().parallel_for(100, [&](int64_t b, int64_t e) { total += e - b; });
    done = true;
  });
  // Bounded: every replaced pool keeps its threads (asleep) for the process's life, and an
  // unbounded loop on a busy machine made thousands of them until thread creation failed.
  for (int i = 0; !done && i < 200; ++i) {
    ThreadPool::set_global_threads(1 + i % 3);
    std::this_thread::yield();
  }
  user.join();
  CHECK_EQ(total.load(), int64_t{400 * 100});
  ThreadPool::set_global_threads(0);
}

TEST(thread_pool_parallel_chunks_covers_every_index_once) {
  ThreadPool pool(3);
  for (int64_t n : {1, 7, 64, 1000})
    for (int64_t chunk : {1, 3, 64, 5000}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      pool.parallel_chunks(n, chunk, [&](int64_t b, int64_t e) {
        CHECK(e - b <= chunk);
        for (int64_t i = b; i < e; ++i) ++hits[i];
      });
      for (int64_t i = 0; i < n; ++i)
        if (hits[i] != 1) CHECK_EQ(hits[i].load(), 1);
    }
}
