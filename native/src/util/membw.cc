#include "util/membw.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

#include "util/thread_pool.h"

namespace ew {

double measure_read_bandwidth_gbs(size_t bytes, int reps) {
  const size_t n = bytes / sizeof(uint64_t);
  std::vector<uint64_t> buf(n);
  ThreadPool& pool = ThreadPool::global();
  // First touch from the pool, so pages are committed before timing.
  pool.parallel_for(static_cast<int64_t>(n), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) buf[i] = static_cast<uint64_t>(i);
  });
  const int parts = pool.size();
  std::vector<uint64_t> sinks(parts * 8);
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    pool.parallel_for(parts, [&](int64_t pb, int64_t pe) {
      for (int64_t p = pb; p < pe; ++p) {
        const size_t b = n * p / parts, e = n * (p + 1) / parts;
        // Four independent xor chains: cheap enough that memory, not the ALU, limits.
        uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        size_t i = b;
        for (; i + 4 <= e; i += 4) {
          a0 ^= buf[i];
          a1 ^= buf[i + 1];
          a2 ^= buf[i + 2];
          a3 ^= buf[i + 3];
        }
        for (; i < e; ++i) a0 ^= buf[i];
        sinks[p * 8] = a0 ^ a1 ^ a2 ^ a3;
      }
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, static_cast<double>(n * sizeof(uint64_t)) / s / 1e9);
  }
  volatile uint64_t keep = 0;
  for (uint64_t v : sinks) keep = keep ^ v;
  (void)keep;
  return best;
}

}  // namespace ew
