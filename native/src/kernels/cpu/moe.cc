// CpuOps::moe: the routed experts of one MoE layer, grouped by expert slot so each slot's
// weights are read once per step, with two passes over the pool for all slots together.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "util/error.h"
#include "util/thread_pool.h"

namespace ew {
namespace {

// One SiLU-gated MLP applied to n tokens: h = silu(x . gate^T) * u with u = x . up^T
// ([n, I] each), out = h . down^T [n, H]. Row-major with row strides H, I, I, H.
struct FfnGroup {
  const float* x;
  int64_t n;
  const void* gate;
  const void* up;
  const void* down;
  float* h;
  float* u;
  float* out;
};

// Runs every group's MLP with two passes over the pool: gate/up rows (with the SiLU
// product fused in) of all groups, then down rows of all groups. Chunks are cut from
// the groups' rows laid end to end, so many small matrices (the routed experts of a
// decode step) share one hand-off instead of paying one per matrix. Each output
// element is one matmul_rows dot product, whatever the grouping or chunking.
// Where the path prepares activations (cpu_kernels.h), each group's inputs are prepared once,
// before the pass that reads them.
std::vector<PreparedActivations> prepare_groups(CpuPath path, DType dt, const std::vector<FfnGroup>& groups,
                                                bool hidden, int64_t K, std::vector<uint16_t>& buf) {
  const int64_t G = static_cast<int64_t>(groups.size());
  std::vector<PreparedActivations> out(groups.size());
  std::vector<int64_t> off(groups.size() + 1, 0);  // each group's place in buf
  for (int64_t i = 0; i < G; ++i) off[i + 1] = off[i] + prepared_activation_elems(path, dt, groups[i].n, K);
  const int64_t total = off[G];
  if (total == 0) return out;
  if (static_cast<int64_t>(buf.size()) < total) buf.resize(static_cast<size_t>(total));
  // Each group on its own, so the pool's threads share them (prefill); a few tokens' worth
  // (decode) stays on this thread rather than paying a hand-off.
  const int64_t grain = total < (int64_t{1} << 16) ? G : 1;
  ThreadPool::global().parallel_for(G, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const FfnGroup& g = groups[i];
      out[i] = prepare_activations(path, dt, hidden ? g.h : g.x, g.n, K, buf.data() + off[i]);
    }
  }, grain);
  return out;
}

// Rows per chunk of a pass over the groups' matrices laid end to end (each group `rows`
// long): a whole group's matrix once there are enough groups for every thread to take
// several (prefill, large batches), so each thread streams its own experts front to back.
// Cut finer there, the threads took turns on short stretches of the same matrices, which
// measured 4-10% slower on every path (Xeon with AMX, pp128 of the V2-shaped model). With few
// groups (decode) the finer cut keeps the threads' shares even.
int64_t ffn_chunk_rows(int64_t G, int64_t rows, int64_t fine) {
  return G >= 8 * ThreadPool::global().size() ? std::max(fine, rows) : fine;
}

void run_ffn_groups(CpuPath path, const std::vector<FfnGroup>& groups, DType dt, int64_t H, int64_t I) {
  if (groups.empty()) return;
  const int64_t G = static_cast<int64_t>(groups.size()), esz = static_cast<int64_t>(dtype_size(dt));
  int64_t tokens = 0;
  for (const FfnGroup& g : groups) tokens += g.n;
  const int64_t avg_tokens = (tokens + G - 1) / G;
  ThreadPool& threads = ThreadPool::global();
  thread_local std::vector<uint16_t> buf;

  const std::vector<PreparedActivations> xb = prepare_groups(path, dt, groups, false, H, buf);
  threads.parallel_chunks(G * I, ffn_chunk_rows(G, I, rows_per_chunk(G * I, 2 * H * esz, avg_tokens, path)), [&](int64_t b, int64_t e) {
    for (int64_t gi = b / I; gi < G && gi * I < e; ++gi) {
      const FfnGroup& g = groups[gi];
      const int64_t r0 = std::max(b, gi * I) - gi * I, r1 = std::min(e, (gi + 1) * I) - gi * I;
      matmul_rows(path, g.x, g.n, g.gate, dt, H, r0, r1, g.h, I, false, &xb[gi]);
      matmul_rows(path, g.x, g.n, g.up, dt, H, r0, r1, g.u, I, false, &xb[gi]);
      for (int64_t t = 0; t < g.n; ++t) silu_mul_rows(path, g.h + t * I + r0, g.u + t * I + r0, r1 - r0, g.h + t * I + r0);
    }
  });
  const std::vector<PreparedActivations> hb = prepare_groups(path, dt, groups, true, I, buf);
  threads.parallel_chunks(G * H, ffn_chunk_rows(G, H, rows_per_chunk(G * H, I * esz, avg_tokens, path)), [&](int64_t b, int64_t e) {
    for (int64_t gi = b / H; gi < G && gi * H < e; ++gi) {
      const FfnGroup& g = groups[gi];
      const int64_t r0 = std::max(b, gi * H) - gi * H, r1 = std::min(e, (gi + 1) * H) - gi * H;
      matmul_rows(path, g.h, g.n, g.down, dt, I, r0, r1, g.out, H, false, &hb[gi]);
    }
  });
}

// Workspace: the (token, choice) pairs' order and positions, then their inputs, outputs
// and hidden rows, each 256-byte aligned.
struct MoeScratch {
  int64_t *order, *pos;
  float *xs, *os, *hs, *us;
};
size_t align_up(size_t n) { return (n + 255) & ~size_t{255}; }
size_t carve(void* base, int64_t P, int64_t H, int64_t I, MoeScratch* m) {
  size_t off = 0;
  auto take = [&](size_t bytes) {
    void* p = base ? static_cast<char*>(base) + off : nullptr;
    off += align_up(bytes);
    return p;
  };
  MoeScratch s;
  s.order = static_cast<int64_t*>(take(P * 8));
  s.pos = static_cast<int64_t*>(take(P * 8));
  s.xs = static_cast<float*>(take(P * H * 4));
  s.os = static_cast<float*>(take(P * H * 4));
  s.hs = static_cast<float*>(take(P * I * 4));
  s.us = static_cast<float*>(take(P * I * 4));
  if (m) *m = s;
  return off;
}

}  // namespace

size_t CpuOps::moe_workspace_bytes(int64_t T, int64_t k, const MoeWeights& w) const {
  return carve(nullptr, T * k, w.H, w.I, nullptr);
}

// The (token, choice) pairs are grouped by slot and each slot runs once over all its
// tokens; every pair's output lands in its own row, then y[t] = sum_j weights[t*k+j] *
// out[t*k+j] in j order. A token's result therefore depends only on its own inputs, never
// on which tokens share the step.
void CpuOps::moe(const float* x, int64_t T, int64_t k, const int32_t* slots, const float* weights,
                 const MoeWeights& w, float* y, bool accumulate, void* workspace) {
  const int64_t H = w.H, I = w.I, P = T * k;
  const DType dt = w.dtype;
  for (int64_t i = 0; i < P; ++i)
    if (slots[i] < 0 || slots[i] >= w.n_slots)
      fail("moe: slot ", slots[i], " out of range [0, ", w.n_slots, ")");
  if (P == 0) return;
  MoeScratch m;
  carve(workspace, P, H, I, &m);
  const size_t gate_bytes = static_cast<size_t>(I * H) * dtype_size(dt), down_bytes = gate_bytes;
  auto slot_of = [](const void* base, size_t bytes, int slot) {
    return static_cast<const uint8_t*>(base) + static_cast<size_t>(slot) * bytes;
  };

  // Pairs sorted by (slot, pair index): each slot's tokens form one contiguous group of
  // rows in xs / hs / us / os; sorted position i holds pair order[i].
  int64_t *order = m.order, *pos = m.pos;
  for (int64_t i = 0; i < P; ++i) order[i] = i;
  std::stable_sort(order, order + P, [&](int64_t a, int64_t b) { return slots[a] < slots[b]; });
  for (int64_t i = 0; i < P; ++i) pos[order[i]] = i;

  for (int64_t i = 0; i < P; ++i)
    std::memcpy(&m.xs[i * H], x + (order[i] / k) * H, static_cast<size_t>(H) * sizeof(float));
  std::vector<FfnGroup> groups;
  for (int64_t b = 0; b < P;) {
    const int slot = slots[order[b]];
    int64_t e = b;
    while (e < P && slots[order[e]] == slot) ++e;
    groups.push_back({&m.xs[b * H], e - b, slot_of(w.gate, gate_bytes, slot), slot_of(w.up, gate_bytes, slot),
                      slot_of(w.down, down_bytes, slot), &m.hs[b * I], &m.us[b * I], &m.os[b * H]});
    b = e;
  }
  run_ffn_groups(path_, groups, dt, H, I);

  // y[t] (+)= sum_j weights[t*k+j] * out[t*k+j], in j order.
  const int64_t tokens_per_chunk = std::max<int64_t>(1, (int64_t{1} << 15) / (k * H));
  const float* os = m.os;
  ThreadPool::global().parallel_chunks(T, tokens_per_chunk, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      float* yt = y + t * H;
      if (!accumulate) std::memset(yt, 0, static_cast<size_t>(H) * sizeof(float));
      for (int64_t j = 0; j < k; ++j) {
        const float wt = weights[t * k + j];
        const float* o = &os[pos[t * k + j] * H];
        for (int64_t h = 0; h < H; ++h) yt[h] += wt * o[h];
      }
    }
  });
}

}  // namespace ew
