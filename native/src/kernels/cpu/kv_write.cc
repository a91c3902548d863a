// CpuOps::kv_write: each token's cache entry (MLA's latent, GQA's keys | values) into its
// block-paged cache slot, in the cache's element type (bf16: rounded to nearest even).
#include <cstring>

#include "kernels/cpu/cpu_ops.h"
#include "util/error.h"

namespace ew {

void CpuOps::kv_write(const KvLayerView& c, const float* rows, int64_t T, const int32_t* seq, const int32_t* pos) {
  if (c.dtype != DType::F32 && c.dtype != DType::BF16) fail("kv_write: cache element type ", dtype_name(c.dtype));
  for (int64_t t = 0; t < T; ++t) {
    void* dst = cache_entry(c, seq[t], pos[t]);
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
