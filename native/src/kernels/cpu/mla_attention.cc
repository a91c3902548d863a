// CpuOps::mla_attention: MLA on the latent cache with weight absorption (DeepSeek-V2),
// per token t and head h:
//   q_lat   = W_kvb_k[h]^T q_nope          (kv_rank values)
//   score_s = (q_lat . c_kv_s + q_pe . k_pe_s) * scale,   s = 0 .. pos[t] of t's sequence
//   o_lat   = sum_s softmax(score)_s c_kv_s
//   out_h   = W_kvb_v[h] o_lat             (v_dim values)
// The cache already holds every position 0..pos[t] (this step's tokens included), so a
// prefill chunk and token-by-token decode compute the very same sums.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "util/error.h"
#include "util/thread_pool.h"

namespace ew {

// Per-thread buffers live in the parallel region; no workspace from the caller.
size_t CpuOps::mla_workspace_bytes(int64_t, const MlaShape&, int64_t) const { return 0; }

void CpuOps::mla_attention(const float* q, int64_t T, const LatentCacheView& c, const int32_t* seq,
                           const int32_t* pos, Weight w_kvb, const MlaShape& s, int64_t max_ctx, float* out,
                           void*) {
  const int64_t Hh = s.n_heads, nope = s.nope, rope = s.rope, R = s.kv_rank, V = s.v_dim;
  const int64_t qd = nope + rope, kvb_rows = nope + V;
  if (c.width != R + rope) fail("mla_attention: cache width ", c.width, " != kv_rank + rope ", R + rope);
  if (T <= 0) return;
  for (int64_t t = 0; t < T; ++t)
    if (pos[t] < 0 || pos[t] >= max_ctx) fail("mla_attention: token ", t, " at position ", pos[t], " outside [0, max_ctx ", max_ctx, ")");
  const CpuPath path = path_;
  const DType dt = w_kvb.dtype;
  const size_t esz = dtype_size(dt);
  auto head_rows = [&](int64_t h, int64_t row) {
    return static_cast<const uint8_t*>(w_kvb.data) + static_cast<size_t>((h * kvb_rows + row) * R) * esz;
  };
  auto entry = [&](int32_t sq, int64_t p) -> const float* {
    const int32_t block = c.block_tables[static_cast<int64_t>(sq) * c.max_blocks + p / c.block_size];
    return c.data + block * c.block_stride + (p % c.block_size) * c.width;
  };

  // Every step below is per (head, token), so one parallel region over (head, token
  // block) units runs all three: a decode step's attention is one hand-off to the
  // pool, not three. The matmul kernels give each token the same result in any block.
  constexpr int64_t kTokenBlock = 16;
  const int64_t n_blocks = (T + kTokenBlock - 1) / kTokenBlock;
  ThreadPool::global().parallel_chunks(Hh * n_blocks, 1, [&](int64_t ub, int64_t ue) {
    std::vector<float> qn(static_cast<size_t>(kTokenBlock * nope)), q_lat(static_cast<size_t>(kTokenBlock * R));
    std::vector<float> o_lat(q_lat.size()), vh(static_cast<size_t>(kTokenBlock * V)), score;
    std::vector<const float*> rows;
    for (int64_t u = ub; u < ue; ++u) {
      const int64_t h = u / n_blocks, t0 = (u % n_blocks) * kTokenBlock, tn = std::min(kTokenBlock, T - t0);
      // 1. Absorb W_kvb_k into the queries: q_lat[t] = W_k[h]^T q_nope[t, h].
      for (int64_t i = 0; i < tn; ++i)
        std::memcpy(&qn[i * nope], q + (t0 + i) * Hh * qd + h * qd, static_cast<size_t>(nope) * sizeof(float));
      matmul_t_cols(path, qn.data(), tn, head_rows(h, 0), dt, nope, R, 0, R, q_lat.data());
      // 2. Softmax attention over the latent cache.
      for (int64_t i = 0; i < tn; ++i) {
        const int64_t t = t0 + i, n = pos[t] + 1;
        const float* ql = &q_lat[i * R];
        const float* qp = q + t * Hh * qd + h * qd + nope;
        rows.resize(static_cast<size_t>(n));
        for (int64_t p = 0; p < n; ++p) rows[p] = entry(seq[t], p);
        score.resize(static_cast<size_t>(n));
        float mx = -INFINITY;
        for (int64_t p = 0; p < n; ++p) {
          const float* kv = rows[p];
          score[p] = (dot_f32(path, ql, kv, R) + dot_f32(path, qp, kv + R, rope)) * s.softmax_scale;
          mx = std::max(mx, score[p]);
        }
        float sum = 0.f;
        for (int64_t p = 0; p < n; ++p) {
          score[p] = std::exp(score[p] - mx);
          sum += score[p];
        }
        const float inv = 1.f / sum;
        float* ol = &o_lat[i * R];
        std::memset(ol, 0, static_cast<size_t>(R) * sizeof(float));
        for (int64_t p = 0; p < n; ++p) axpy_f32(path, score[p] * inv, rows[p], ol, R);
      }
      // 3. Expand through W_kvb_v: out[t, h] = W_v[h] o_lat[t].
      matmul_rows(path, o_lat.data(), tn, head_rows(h, nope), dt, R, 0, V, vh.data(), V);
      for (int64_t i = 0; i < tn; ++i)
        std::memcpy(out + (t0 + i) * Hh * V + h * V, &vh[i * V], static_cast<size_t>(V) * sizeof(float));
    }
  });
}

}  // namespace ew
