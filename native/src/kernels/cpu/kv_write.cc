// CpuOps::kv_write: each token's latent row into its block-paged cache slot.
#include <cstring>

#include "kernels/cpu/cpu_ops.h"

namespace ew {

void CpuOps::kv_write(const LatentCacheView& c, const float* latent, int64_t T, const int32_t* seq,
                      const int32_t* pos) {
  for (int64_t t = 0; t < T; ++t) {
    const int32_t block = c.block_tables[static_cast<int64_t>(seq[t]) * c.max_blocks + pos[t] / c.block_size];
    float* dst = c.data + block * c.block_stride + static_cast<int64_t>(pos[t] % c.block_size) * c.width;
    std::memcpy(dst, latent + t * c.width, static_cast<size_t>(c.width) * sizeof(float));
  }
}

}  // namespace ew
