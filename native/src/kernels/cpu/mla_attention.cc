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
  ThreadPool& pool = ThreadPool::global();

  // 1. Absorb W_kvb_k into the queries: q_lat[h][t] = W_k[h]^T q_nope[t, h]; heads in parallel.
  std::vector<float> q_lat(static_cast<size_t>(Hh * T * R));
  pool.parallel_for(Hh, [&](int64_t hb, int64_t he) {
    std::vector<float> qn(static_cast<size_t>(T * nope));
    for (int64_t h = hb; h < he; ++h) {
      for (int64_t t = 0; t < T; ++t)
        std::memcpy(&qn[t * nope], a.q + t * Hh * qd + h * qd, static_cast<size_t>(nope) * sizeof(float));
      matmul_t_cols(path, qn.data(), T, head_rows(h, 0), dt, nope, R, 0, R, &q_lat[h * T * R]);
    }
  });

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

  // 2. Softmax attention over the latent cache, one (head, token) per task unit.
  std::vector<float> o_lat(static_cast<size_t>(Hh * T * R));
  pool.parallel_for(Hh * T, [&](int64_t ub, int64_t ue) {
    std::vector<float> score;
    for (int64_t u = ub; u < ue; ++u) {
      const int64_t h = u / T, t = u % T, n = a.pos[t] + 1;
      const float* ql = &q_lat[(h * T + t) * R];
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
      float* ol = &o_lat[(h * T + t) * R];
      std::memset(ol, 0, static_cast<size_t>(R) * sizeof(float));
      for (int64_t s = 0; s < n; ++s) axpy_f32(path, score[s] * inv, rows[s], ol, R);
    }
  });

  // 3. Expand through W_kvb_v: out[t, h] = W_v[h] o_lat[h][t]; heads in parallel.
  pool.parallel_for(Hh, [&](int64_t hb, int64_t he) {
    std::vector<float> vh(static_cast<size_t>(T * V));
    for (int64_t h = hb; h < he; ++h) {
      matmul_rows(path, &o_lat[h * T * R], T, head_rows(h, nope), dt, R, 0, V, vh.data(), V);
      for (int64_t t = 0; t < T; ++t)
        std::memcpy(a.out + t * Hh * V + h * V, &vh[t * V], static_cast<size_t>(V) * sizeof(float));
    }
  });
}

}  // namespace ew
