#include "util/membw.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

#include <unistd.h>

#include "util/thread_pool.h"

namespace ew {

namespace {
// Four times the last-level cache, at least 512 MiB and at most 2 GiB: on a CPU whose L3
// reports 480 MB a 512 MiB buffer would be partly cache-assisted.
size_t default_bytes() {
  const long l3 = ::sysconf(_SC_LEVEL3_CACHE_SIZE);
  const size_t want = l3 > 0 ? 4 * static_cast<size_t>(l3) : 0;
  return std::clamp(want, size_t{512} << 20, size_t{2} << 30);
}
}  // namespace

double measure_read_bandwidth_gbs(size_t bytes, int reps) {
  if (bytes == 0) bytes = default_bytes();
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
        // Four independent xor chains over one cache line per iteration, cheap enough that
        // memory, not the ALU, limits, and each line prefetched 16 KB ahead, as the GEMVs
        // prefetch their next rows: without it the loop read 27 GB/s where a decode step's
        // GEMVs streamed 28-29 and this one reads 31-32 (Xeon with AMX), so decode shares
        // of this figure ran above 100%.
        constexpr size_t kAhead = (16 << 10) / sizeof(uint64_t);
        uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        size_t i = b;
        for (; i + 8 <= e; i += 8) {
          if (i + kAhead < e) __builtin_prefetch(&buf[i + kAhead], 0, 2);
          a0 ^= buf[i] ^ buf[i + 4];
          a1 ^= buf[i + 1] ^ buf[i + 5];
          a2 ^= buf[i + 2] ^ buf[i + 6];
          a3 ^= buf[i + 3] ^ buf[i + 7];
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
