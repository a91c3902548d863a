#include "kernels/cpu/embedding.h"

#include "kernels/cpu/cpu_kernels.h"
#include "util/error.h"

namespace ew {

void embed_cpu(const TensorView& table, const int32_t* ids, int64_t T, float* y) {
  if (table.shape.size() != 2) fail("embed: table must be 2-D, got ", shape_str(table.shape));
  const int64_t V = table.shape[0], H = table.shape[1];
  for (int64_t t = 0; t < T; ++t) {
    if (ids[t] < 0 || ids[t] >= V) fail("embed: token id ", ids[t], " out of range [0, ", V, ")");
    convert_to_f32(table.data, table.dtype, static_cast<int64_t>(ids[t]) * H, H, y + t * H);
  }
}

}  // namespace ew
