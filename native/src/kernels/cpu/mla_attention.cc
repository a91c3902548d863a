#include "kernels/cpu/mla_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "util/error.h"
#include "util/thread_pool.h"

namespace ew {

void mla_attention_cpu(const MlaAttentionArgs& a) {
  const int64_t T = a.T, Hh = a.n_heads, nope = a.nope, rope = a.rope, R = a.rank, V = a.v_dim;
  const int64_t qd = nope + rope, kvb_rows = nope + V;
  if (a.kv_b.shape != std::vector<int64_t>{Hh * kvb_rows, R})
    fail("mla_attention: kv_b_proj has shape ", shape_str(a.kv_b.shape), ", expected [", Hh * kvb_rows, ", ", R,
         "]");
  if (a.cache->width() != R + rope)
    fail("mla_attention: cache width ", a.cache->width(), " != kv_lora_rank + rope ", R + rope);
  if (T <= 0) return;
  const CpuPath path = cpu_path();
  const DType dt = a.kv_b.dtype;
  const size_t esz = dtype_size(dt);
  auto head_rows = [&](int64_t h, int64_t row) {
    return static_cast<const uint8_t*>(a.kv_b.data) + static_cast<size_t>((h * kvb_rows + row) * R) * esz;
  };

  // Cache rows of every sequence in the step, looked up once (not per head and position).
  std::vector<std::vector<const float*>> rows_of;  // per distinct sequence
  std::vector<int64_t> seq_index(static_cast<size_t>(T));
  {
    std::vector<int64_t> ids;
    for (int64_t t = 0; t < T; ++t) {
      auto it = std::find(ids.begin(), ids.end(), a.seq[t]);
      seq_index[t] = it - ids.begin();
      if (it == ids.end()) {
        ids.push_back(a.seq[t]);
        rows_of.emplace_back();
      }
      auto& rows = rows_of[seq_index[t]];
      for (int64_t s = static_cast<int64_t>(rows.size()); s <= a.pos[t]; ++s)
        rows.push_back(a.cache->entry(a.layer, a.seq[t], s));
    }
  }

  // Every step below is per (head, token), so one parallel region over (head, token
  // block) units runs all three: a decode step's attention is one hand-off to the
  // pool, not three. The matmul kernels give each token the same result in any block.
  constexpr int64_t kTokenBlock = 16;
  const int64_t n_blocks = (T + kTokenBlock - 1) / kTokenBlock;
  ThreadPool::global().parallel_chunks(Hh * n_blocks, 1, [&](int64_t ub, int64_t ue) {
    std::vector<float> qn(static_cast<size_t>(kTokenBlock * nope)), q_lat(static_cast<size_t>(kTokenBlock * R));
    std::vector<float> o_lat(q_lat.size()), vh(static_cast<size_t>(kTokenBlock * V)), score;
    for (int64_t u = ub; u < ue; ++u) {
      const int64_t h = u / n_blocks, t0 = (u % n_blocks) * kTokenBlock, tn = std::min(kTokenBlock, T - t0);
      // 1. Absorb W_kvb_k into the queries: q_lat[t] = W_k[h]^T q_nope[t, h].
      for (int64_t i = 0; i < tn; ++i)
        std::memcpy(&qn[i * nope], a.q + (t0 + i) * Hh * qd + h * qd, static_cast<size_t>(nope) * sizeof(float));
      matmul_t_cols(path, qn.data(), tn, head_rows(h, 0), dt, nope, R, 0, R, q_lat.data());
      // 2. Softmax attention over the latent cache.
      for (int64_t i = 0; i < tn; ++i) {
        const int64_t t = t0 + i, n = a.pos[t] + 1;
        const float* ql = &q_lat[i * R];
        const float* qp = a.q + t * Hh * qd + h * qd + nope;
        const std::vector<const float*>& rows = rows_of[seq_index[t]];
        score.resize(static_cast<size_t>(n));
        float mx = -INFINITY;
        for (int64_t s = 0; s < n; ++s) {
          const float* kv = rows[s];
          score[s] = (dot_f32(path, ql, kv, R) + dot_f32(path, qp, kv + R, rope)) * a.scale;
          mx = std::max(mx, score[s]);
        }
        float sum = 0.f;
        for (int64_t s = 0; s < n; ++s) {
          score[s] = std::exp(score[s] - mx);
          sum += score[s];
        }
        const float inv = 1.f / sum;
        float* ol = &o_lat[i * R];
        std::memset(ol, 0, static_cast<size_t>(R) * sizeof(float));
        for (int64_t s = 0; s < n; ++s) axpy_f32(path, score[s] * inv, rows[s], ol, R);
      }
      // 3. Expand through W_kvb_v: out[t, h] = W_v[h] o_lat[t].
      matmul_rows(path, o_lat.data(), tn, head_rows(h, nope), dt, R, 0, V, vh.data(), V);
      for (int64_t i = 0; i < tn; ++i)
        std::memcpy(a.out + (t0 + i) * Hh * V + h * V, &vh[i * V], static_cast<size_t>(V) * sizeof(float));
    }
  });
}

}  // namespace ew
