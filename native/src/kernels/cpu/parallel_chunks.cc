#include "kernels/cpu/parallel_chunks.h"

#include <algorithm>
#include <atomic>

#include "util/thread_pool.h"

namespace ew {

void parallel_chunks(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  chunk = std::max<int64_t>(1, chunk);
  ThreadPool& pool = ThreadPool::global();
  const int64_t n_chunks = (n + chunk - 1) / chunk;
  const int parts = static_cast<int>(std::min<int64_t>(pool.size(), n_chunks));
  if (parts <= 1) {
    fn(0, n);
    return;
  }
  std::atomic<int64_t> next{0};
  pool.parallel_for(
      parts,
      [&](int64_t, int64_t) {
        for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < n_chunks;)
          fn(c * chunk, std::min(n, (c + 1) * chunk));
      },
      1);
}

int64_t rows_per_chunk(int64_t rows, int64_t row_bytes, int64_t tokens) {
  constexpr int64_t kMaxBytes = 128 << 10, kMinBytes = 16 << 10;
  constexpr int64_t kMaxMacs = 2 << 20;  // ~0.1 ms of compute-bound work (prefill)
  const int64_t threads = ThreadPool::global().size();
  // Work per row in bytes x tokens: about one multiply-add per weight byte (bf16).
  const int64_t bytes = std::max<int64_t>(1, row_bytes), macs = bytes * std::max<int64_t>(1, tokens);
  int64_t r = std::min({kMaxBytes / bytes, kMaxMacs / macs, (rows + 4 * threads - 1) / (4 * threads)});
  r = std::max(r, std::min(kMinBytes / bytes, kMaxMacs / macs));
  // Several tokens run 4-row tiles (matmul_avx2.cc): keep whole tiles in a chunk.
  if (tokens > 1) r = std::max<int64_t>(16, (r + 3) / 4 * 4);
  return std::max<int64_t>(1, r);
}

}  // namespace ew
