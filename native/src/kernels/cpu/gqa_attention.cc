// CpuOps::gqa_attention: grouped-query attention over the block-paged cache. One unit of
// work is (KV head g, token t): the G = n_heads / kv_heads query heads that read KV head g
// share each cache row, converted to fp32 once (bf16 caches) and applied to all G:
//   score_h,p = (q_h . K_p) * scale          p = 0 .. pos[t] of t's sequence
//   out_h     = sum_p softmax(score_h)_p V_p (in p order, exact max-then-sum softmax)
// The cache already holds every position 0..pos[t] (this step's tokens included), so a
// prefill chunk and token-by-token decode compute the very same sums, and a token's result
// never depends on the other tokens of the call.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "util/error.h"
#include "util/thread_pool.h"

namespace ew {

// Per-thread buffers live in the parallel region; no workspace from the caller.
size_t CpuOps::gqa_workspace_bytes(int64_t, const GqaShape&, int64_t) const { return 0; }

void CpuOps::gqa_attention(const float* q, int64_t T, const KvLayerView& c, const int32_t* seq, const int32_t* pos,
                           const GqaShape& s, int64_t max_ctx, float* out, void*) {
  const int64_t heads = s.n_heads, kvh = s.kv_heads, D = s.head_dim;
  if (heads <= 0 || kvh <= 0 || D <= 0 || heads % kvh != 0 || c.width != 2 * kvh * D)
    fail("gqa_attention: ", heads, " query heads over ", kvh, " KV heads of ", D, " (cache entries of ", c.width, ")");
  if (c.dtype != DType::F32 && c.dtype != DType::BF16)
    fail("gqa_attention: cache dtype ", dtype_name(c.dtype), " unsupported (F32 or BF16)");
  if (T <= 0) return;
  for (int64_t t = 0; t < T; ++t)
    if (pos[t] < 0 || pos[t] >= max_ctx)
      fail("gqa_attention: token ", t, " at position ", pos[t], " outside [0, max_ctx ", max_ctx, ")");
  const int64_t G = heads / kvh, entry = c.width;
  const size_t esz = dtype_size(c.dtype);
  const CpuPath path = path_;
  // Row `off` (keys: g * D, values: (kvh + g) * D) of position p of step-local sequence sq.
  auto row = [&](int32_t sq, int64_t p, int64_t off, float* buf) -> const float* {
    const int32_t block = c.block_tables[static_cast<int64_t>(sq) * c.max_blocks + p / c.block_size];
    const int64_t at = block * c.block_stride + (p % c.block_size) * entry + off;
    if (c.dtype == DType::F32) return static_cast<const float*>(c.data) + at;
    convert_to_f32(static_cast<const uint8_t*>(c.data) + at * esz, DType::BF16, 0, D, buf);
    return buf;
  };

  ThreadPool::global().parallel_chunks(kvh * T, 1, [&](int64_t ub, int64_t ue) {
    std::vector<float> score, buf(static_cast<size_t>(D));
    for (int64_t u = ub; u < ue; ++u) {
      const int64_t g = u % kvh, t = u / kvh, n = pos[t] + 1;
      const float* qt = q + t * heads * D + g * G * D;  // the group's G query heads
      score.resize(static_cast<size_t>(G * n));
      for (int64_t p = 0; p < n; ++p) {
        const float* k = row(seq[t], p, g * D, buf.data());
        for (int64_t h = 0; h < G; ++h) score[h * n + p] = dot_f32(path, qt + h * D, k, D) * s.softmax_scale;
      }
      for (int64_t h = 0; h < G; ++h) {
        float* sc = &score[h * n];
        float mx = -INFINITY;
        for (int64_t p = 0; p < n; ++p) mx = std::max(mx, sc[p]);
        float sum = 0.f;
        for (int64_t p = 0; p < n; ++p) {
          sc[p] = std::exp(sc[p] - mx);
          sum += sc[p];
        }
        const float inv = 1.f / sum;
        for (int64_t p = 0; p < n; ++p) sc[p] *= inv;
        std::memset(out + t * heads * D + (g * G + h) * D, 0, static_cast<size_t>(D) * sizeof(float));
      }
      for (int64_t p = 0; p < n; ++p) {
        const float* v = row(seq[t], p, (kvh + g) * D, buf.data());
        for (int64_t h = 0; h < G; ++h) axpy_f32(path, score[h * n + p], v, out + t * heads * D + (g * G + h) * D, D);
      }
    }
  });
}

}  // namespace ew
