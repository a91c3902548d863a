// Measures the machine's memory read bandwidth: all pool threads stream-read a
// buffer much larger than the caches. The decode benchmark reports its weight
// traffic as a fraction of this number.
#pragma once
#include <cstddef>

namespace ew {

// Best of `reps` timed passes over a `bytes` buffer (default 512 MiB), in GB/s (1e9 bytes/s).
double measure_read_bandwidth_gbs(size_t bytes = size_t{512} << 20, int reps = 8);

}  // namespace ew
