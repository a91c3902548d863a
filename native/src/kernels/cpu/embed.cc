// CpuOps::embed: rows of a [vocab, D] table of any dtype, as fp32.
#include "kernels/cpu/cpu_ops.h"
#include "util/error.h"

namespace ew {

void CpuOps::embed(const int32_t* ids, int64_t T, Weight table, int64_t vocab, int64_t D, float* y) {
  for (int64_t t = 0; t < T; ++t) {
    if (ids[t] < 0 || ids[t] >= vocab) fail("embed: token id ", ids[t], " out of range [0, ", vocab, ")");
    convert_to_f32(table.data, table.dtype, static_cast<int64_t>(ids[t]) * D, D, y + t * D);
  }
}

}  // namespace ew
