// Dynamic work sharing for the CPU kernels. [0, n) is cut into fixed chunks that the
// global pool's threads claim one at a time, so a thread that starts late (a core
// busy with something else) just takes fewer chunks instead of holding up the loop
// with a fixed half. Timing decides only who computes a chunk, never what it
// computes, so results stay independent of threads and timing.
#pragma once
#include <cstdint>
#include <functional>

namespace ew {

// Runs fn(b, e) over consecutive chunks [b, e) of `chunk` items covering [0, n).
void parallel_chunks(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t)>& fn);

// Rows per chunk for a loop over `rows` weight rows of `row_bytes` each, applied to
// `tokens` tokens: large enough to amortise claiming a chunk, small enough that the
// threads finish together (a few chunks per thread, at most ~128 KB of weights).
int64_t rows_per_chunk(int64_t rows, int64_t row_bytes, int64_t tokens);

}  // namespace ew
