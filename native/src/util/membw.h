// Measures the machine's memory read bandwidth: all pool threads stream-read a
// buffer much larger than the caches. The decode benchmark reports its weight
// traffic as a fraction of this number.
#pragma once
#include <cstddef>

namespace ew {

// Best of `reps` timed passes over a `bytes` buffer (0: four times the L3, 512 MiB to
// 2 GiB), in GB/s (1e9 bytes/s).
double measure_read_bandwidth_gbs(size_t bytes = 0, int reps = 8);

}  // namespace ew
