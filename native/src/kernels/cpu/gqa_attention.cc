// CpuOps::gqa_attention: grouped-query attention over the block-paged cache. One unit of
// work is (KV head g, token t): the G = n_heads / kv_heads query heads that read KV head g
// share each cache row, on the tiled inner loops MLA uses (cpu_kernels.h's attn_scores,
// exp_sum, attn_values: bf16 rows widened in registers, each row read once for all G):
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
namespace {

constexpr int64_t kPositionBlock = 256;  // cache rows per sweep (stay in L2 across the group's heads)

}  // namespace

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
  const int64_t G = heads / kvh;
  const size_t esz = dtype_size(c.dtype);
  const CpuPath path = path_;

  ThreadPool::global().parallel_chunks(kvh * T, 1, [&](int64_t ub, int64_t ue) {
    std::vector<const void*> keys, values;
    std::vector<float> score;
    for (int64_t u = ub; u < ue; ++u) {
      const int64_t g = u % kvh, t = u / kvh, n = pos[t] + 1;
      const float* qt = q + t * heads * D + g * G * D;  // the group's G query heads
      float* ot = out + t * heads * D + g * G * D;
      keys.resize(static_cast<size_t>(n));
      values.resize(static_cast<size_t>(n));
      for (int64_t p = 0; p < n; ++p) {
        const uint8_t* e = cache_entry(c, seq[t], p);
        keys[p] = e + static_cast<size_t>(g * D) * esz;
        values[p] = e + static_cast<size_t>((kvh + g) * D) * esz;
      }
      score.resize(static_cast<size_t>(G * n));
      for (int64_t p0 = 0; p0 < n; p0 += kPositionBlock)
        attn_scores(path, qt, D, G, keys.data() + p0, c.dtype, std::min(kPositionBlock, n - p0), D, score.data() + p0,
                    n);
      for (int64_t h = 0; h < G; ++h) {
        float* sh = score.data() + h * n;
        float mx = -INFINITY;
        for (int64_t p = 0; p < n; ++p) mx = std::max(mx, sh[p] *= s.softmax_scale);
        const float inv = 1.f / exp_sum(path, sh, n, mx);
        for (int64_t p = 0; p < n; ++p) sh[p] *= inv;
      }
      std::memset(ot, 0, static_cast<size_t>(G * D) * sizeof(float));
      for (int64_t p0 = 0; p0 < n; p0 += kPositionBlock)
        attn_values(path, score.data() + p0, n, G, values.data() + p0, c.dtype, std::min(kPositionBlock, n - p0), D, ot,
                    D);
    }
  });
}

}  // namespace ew
