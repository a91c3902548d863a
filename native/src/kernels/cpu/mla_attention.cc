// CpuOps::mla_attention: MLA on the latent cache with weight absorption (DeepSeek-V2),
// per token t and head h:
//   q_lat   = W_kvb_k[h]^T q_nope                     (kv_rank values)
//   score_s = [q_lat | q_pe] . [c_kv_s | k_pe_s] * scale,   s = 0 .. pos[t] of t's sequence
//   o_lat   = sum_s softmax(score)_s c_kv_s
//   out_h   = W_kvb_v[h] o_lat                        (v_dim values)
// The cache already holds every position 0..pos[t] (this step's tokens included), so a
// prefill chunk and token-by-token decode compute the very same sums.
//
// Three passes over the pool: (1) the absorption, per head over blocks of tokens (each head's
// W_kvb rows read once per block); (2) attention, per token over groups of heads, so each cache
// row is read once per head group, not once per head (MLA's heads all share the one latent);
// (3) the expansion through W_kvb_v, per head over token blocks. Every result is computed per
// (token, head) in an order that depends only on the token's context length, so the token
// blocks and head groups (chosen by T and the thread count) never change a number.
// Cache rows may be F32 or BF16 (read into fp32 arithmetic).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "util/error.h"
#include "util/thread_pool.h"

namespace ew {
namespace {

constexpr int64_t kTokenBlock = 16;     // tokens per absorption / expansion unit
constexpr int64_t kPositionBlock = 256;  // cache rows per sweep in pass 2 (stay in L2 across heads)

size_t align_up(size_t n) { return (n + 255) & ~size_t{255}; }

// Workspace: the queries [T][heads][kv_rank + rope] and the latent outputs [heads][T][kv_rank].
struct MlaScratch {
  float* q;
  float* o_lat;
};
size_t carve(void* base, int64_t T, const MlaShape& s, MlaScratch* m) {
  const size_t qb = align_up(static_cast<size_t>(T * s.n_heads * (s.kv_rank + s.rope)) * sizeof(float));
  const size_t ob = align_up(static_cast<size_t>(T * s.n_heads * s.kv_rank) * sizeof(float));
  if (m) {
    m->q = static_cast<float*>(base);
    m->o_lat = reinterpret_cast<float*>(static_cast<char*>(base) + qb);
  }
  return qb + ob;
}

}  // namespace

size_t CpuOps::mla_workspace_bytes(int64_t T, const MlaShape& s, int64_t) const { return carve(nullptr, T, s, nullptr); }

void CpuOps::mla_attention(const float* q, int64_t T, const KvLayerView& c, const int32_t* seq,
                           const int32_t* pos, Weight w_kvb, const MlaShape& s, int64_t max_ctx, float* out,
                           void* workspace) {
  const int64_t Hh = s.n_heads, nope = s.nope, rope = s.rope, R = s.kv_rank, V = s.v_dim;
  const int64_t qd = nope + rope, kvb_rows = nope + V, width = R + rope;
  if (c.width != width) fail("mla_attention: cache width ", c.width, " != kv_rank + rope ", width);
  if (c.dtype != DType::F32 && c.dtype != DType::BF16)
    fail("mla_attention: cache element type ", dtype_name(c.dtype), " (F32 and BF16 are supported)");
  if (T <= 0) return;
  for (int64_t t = 0; t < T; ++t)
    if (pos[t] < 0 || pos[t] >= max_ctx) fail("mla_attention: token ", t, " at position ", pos[t], " outside [0, max_ctx ", max_ctx, ")");
  if (!workspace) fail("mla_attention: no workspace (mla_workspace_bytes)");
  const CpuPath path = path_;
  const DType dt = w_kvb.dtype;
  const size_t esz = dtype_size(dt);
  MlaScratch m;
  carve(workspace, T, s, &m);
  auto head_rows = [&](int64_t h, int64_t row) {
    return static_cast<const uint8_t*>(w_kvb.data) + static_cast<size_t>((h * kvb_rows + row) * R) * esz;
  };
  ThreadPool& pool = ThreadPool::global();
  const int64_t n_blocks = (T + kTokenBlock - 1) / kTokenBlock;

  // 1. q[t, h] = [W_k[h]^T q_nope[t, h] | q_pe[t, h]].
  pool.parallel_chunks(Hh * n_blocks, 1, [&](int64_t ub, int64_t ue) {
    std::vector<float> qn(static_cast<size_t>(kTokenBlock * nope)), ql(static_cast<size_t>(kTokenBlock * R));
    for (int64_t u = ub; u < ue; ++u) {
      const int64_t h = u / n_blocks, t0 = (u % n_blocks) * kTokenBlock, tn = std::min(kTokenBlock, T - t0);
      for (int64_t i = 0; i < tn; ++i)
        std::memcpy(&qn[i * nope], q + (t0 + i) * Hh * qd + h * qd, static_cast<size_t>(nope) * sizeof(float));
      matmul_t_cols(path, qn.data(), tn, head_rows(h, 0), dt, nope, R, 0, R, ql.data());
      for (int64_t i = 0; i < tn; ++i) {
        float* dst = m.q + ((t0 + i) * Hh + h) * width;
        std::memcpy(dst, &ql[i * R], static_cast<size_t>(R) * sizeof(float));
        std::memcpy(dst + R, q + (t0 + i) * Hh * qd + h * qd + nope, static_cast<size_t>(rope) * sizeof(float));
      }
    }
  });

  // 2. Softmax attention over the cache: per token, heads in groups that each read every
  // cache row of the token's context once. Just enough groups per token to feed the threads.
  const int64_t threads = pool.size();
  const int64_t groups = std::min<int64_t>(Hh, std::max<int64_t>(1, (threads + T - 1) / T));
  const int64_t G = (Hh + groups - 1) / groups, n_groups = (Hh + G - 1) / G;
  pool.parallel_chunks(T * n_groups, 1, [&](int64_t ub, int64_t ue) {
    std::vector<const void*> rows;
    std::vector<float> score;
    for (int64_t u = ub; u < ue; ++u) {
      const int64_t t = u / n_groups, h0 = (u % n_groups) * G, hn = std::min(G, Hh - h0), n = pos[t] + 1;
      rows.resize(static_cast<size_t>(n));
      for (int64_t p = 0; p < n; ++p) rows[p] = cache_entry(c, seq[t], p);
      score.resize(static_cast<size_t>(hn * n));
      const float* qt = m.q + (t * Hh + h0) * width;
      for (int64_t p0 = 0; p0 < n; p0 += kPositionBlock)
        attn_scores(path, qt, width, hn, rows.data() + p0, c.dtype, std::min(kPositionBlock, n - p0), width,
                    score.data() + p0, n);
      for (int64_t h = 0; h < hn; ++h) {
        float* sh = score.data() + h * n;
        float mx = -INFINITY;
        for (int64_t p = 0; p < n; ++p) mx = std::max(mx, sh[p] *= s.softmax_scale);
        const float inv = 1.f / exp_sum(path, sh, n, mx);
        for (int64_t p = 0; p < n; ++p) sh[p] *= inv;
        std::memset(m.o_lat + ((h0 + h) * T + t) * R, 0, static_cast<size_t>(R) * sizeof(float));
      }
      for (int64_t p0 = 0; p0 < n; p0 += kPositionBlock)
        attn_values(path, score.data() + p0, n, hn, rows.data() + p0, c.dtype, std::min(kPositionBlock, n - p0), R,
                    m.o_lat + (h0 * T + t) * R, T * R);
    }
  });

  // 3. out[t, h] = W_v[h] o_lat[t, h].
  pool.parallel_chunks(Hh * n_blocks, 1, [&](int64_t ub, int64_t ue) {
    std::vector<float> vh(static_cast<size_t>(kTokenBlock * V));
    for (int64_t u = ub; u < ue; ++u) {
      const int64_t h = u / n_blocks, t0 = (u % n_blocks) * kTokenBlock, tn = std::min(kTokenBlock, T - t0);
      matmul_rows(path, m.o_lat + (h * T + t0) * R, tn, head_rows(h, nope), dt, R, 0, V, vh.data(), V);
      for (int64_t i = 0; i < tn; ++i)
        std::memcpy(out + (t0 + i) * Hh * V + h * V, &vh[i * V], static_cast<size_t>(V) * sizeof(float));
    }
  });
}

}  // namespace ew
