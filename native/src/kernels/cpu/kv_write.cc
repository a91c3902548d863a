// CpuOps::kv_write: each token's cache entry (MLA's latent, GQA's keys | values) into its
// block-paged cache slot, in the cache's element type (bf16: rounded to nearest even).
#include <cstring>

#include "kernels/cpu/cpu_ops.h"
#include "util/error.h"

namespace ew {

void CpuOps::kv_write(const KvLayerView& c, const float* rows, int64_t T, const int32_t* seq, const int32_t* pos) {
  if (c.dtype != DType::F32 && c.dtype != DType::BF16) fail("kv_write: cache element type ", dtype_name(c.dtype));
  const size_t esz = dtype_size(c.dtype);
  for (int64_t t = 0; t < T; ++t) {
    const int32_t block = c.block_tables[static_cast<int64_t>(seq[t]) * c.max_blocks + pos[t] / c.block_size];
    const int64_t at = block * c.block_stride + static_cast<int64_t>(pos[t] % c.block_size) * c.width;
    void* dst = static_cast<uint8_t*>(c.data) + static_cast<size_t>(at) * esz;
    const float* src = rows + t * c.width;
    if (c.dtype == DType::F32) {
      std::memcpy(dst, src, static_cast<size_t>(c.width) * sizeof(float));
    } else {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int32_t i = 0; i < c.width; ++i) d[i] = f32_to_bf16(src[i]);
    }
  }
}

}  // namespace ew
