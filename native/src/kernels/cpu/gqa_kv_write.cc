// CpuOps::gqa_kv_write: each token's key | value row into its block-paged GQA cache slot,
// copied (F32) or rounded to nearest even (BF16).
#include <cstring>

#include "kernels/cpu/cpu_ops.h"
#include "util/error.h"

namespace ew {

void CpuOps::gqa_kv_write(const GqaCacheView& c, const float* kv, int64_t T, const int32_t* seq, const int32_t* pos) {
  if (c.dtype != DType::F32 && c.dtype != DType::BF16)
    fail("gqa_kv_write: cache dtype ", dtype_name(c.dtype), " unsupported (F32 or BF16)");
  const int64_t n = c.entry();
  for (int64_t t = 0; t < T; ++t) {
    const int32_t block = c.block_tables[static_cast<int64_t>(seq[t]) * c.max_blocks + pos[t] / c.block_size];
    const int64_t at = block * c.block_stride + static_cast<int64_t>(pos[t] % c.block_size) * n;
    const float* src = kv + t * n;
    if (c.dtype == DType::F32) {
      std::memcpy(static_cast<float*>(c.data) + at, src, static_cast<size_t>(n) * sizeof(float));
    } else {
      uint16_t* dst = static_cast<uint16_t*>(c.data) + at;
      for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
    }
  }
}

}  // namespace ew
