#include "kernels/cpu/mlp.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
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
void run_ffn_groups(const std::vector<FfnGroup>& groups, DType dt, int64_t H, int64_t I) {
  if (groups.empty()) return;
  const CpuPath path = cpu_path();
  const int64_t G = static_cast<int64_t>(groups.size()), esz = static_cast<int64_t>(dtype_size(dt));
  int64_t tokens = 0;
  for (const FfnGroup& g : groups) tokens += g.n;
  const int64_t avg_tokens = (tokens + G - 1) / G;
  ThreadPool& threads = ThreadPool::global();

  threads.parallel_chunks(G * I, rows_per_chunk(G * I, 2 * H * esz, avg_tokens), [&](int64_t b, int64_t e) {
    for (int64_t gi = b / I; gi < G && gi * I < e; ++gi) {
      const FfnGroup& g = groups[gi];
      const int64_t r0 = std::max(b, gi * I) - gi * I, r1 = std::min(e, (gi + 1) * I) - gi * I;
      matmul_rows(path, g.x, g.n, g.gate, dt, H, r0, r1, g.h, I);
      matmul_rows(path, g.x, g.n, g.up, dt, H, r0, r1, g.u, I);
      for (int64_t t = 0; t < g.n; ++t) silu_mul_cpu(g.h + t * I + r0, g.u + t * I + r0, r1 - r0);
    }
  });
  threads.parallel_chunks(G * H, rows_per_chunk(G * H, I * esz, avg_tokens), [&](int64_t b, int64_t e) {
    for (int64_t gi = b / H; gi < G && gi * H < e; ++gi) {
      const FfnGroup& g = groups[gi];
      const int64_t r0 = std::max(b, gi * H) - gi * H, r1 = std::min(e, (gi + 1) * H) - gi * H;
      matmul_rows(path, g.h, g.n, g.down, dt, I, r0, r1, g.out, H);
    }
  });
}

}  // namespace

void silu_mul_cpu(float* g, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; ++i) g[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
}

void mlp_cpu(const float* x, int64_t T, const TensorView& gate, const TensorView& up, const TensorView& down,
             float* y) {
  const int64_t I = gate.dim(0), H = gate.dim(1);
  if (T <= 0) return;
  std::vector<float> h(static_cast<size_t>(T * I)), u(h.size());
  run_ffn_groups({FfnGroup{x, T, gate.data, up.data, down.data, h.data(), u.data(), y}}, gate.dtype, H, I);
}

void grouped_experts_cpu(const float* x, int64_t T, const ExpertStore& pool, int layer, const int32_t* slots,
                         const float* weights, int k, float* y) {
  const int64_t H = pool.hidden(), I = pool.width(), P = T * k;
  const DType dt = pool.dtype();
  if (pool.device_memory()) fail("grouped experts: MoE layer ", layer, "'s experts are in device memory");
  for (int64_t i = 0; i < P; ++i)
    if (slots[i] < 0 || slots[i] >= pool.capacity())
      fail("grouped experts: slot ", slots[i], " out of range [0, ", pool.capacity(), ") in MoE layer ", layer);
  if (P == 0) return;

  // Pairs sorted by (slot, pair index): each slot's tokens form one contiguous group of
  // rows in xs / hs / us / os; sorted position i holds pair order[i].
  std::vector<int64_t> order(static_cast<size_t>(P)), pos(static_cast<size_t>(P));
  for (int64_t i = 0; i < P; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return slots[a] < slots[b]; });
  for (int64_t i = 0; i < P; ++i) pos[order[i]] = i;

  std::vector<float> xs(static_cast<size_t>(P * H)), os(xs.size());
  std::vector<float> hs(static_cast<size_t>(P * I)), us(hs.size());
  for (int64_t i = 0; i < P; ++i)
    std::memcpy(&xs[i * H], x + (order[i] / k) * H, static_cast<size_t>(H) * sizeof(float));
  std::vector<FfnGroup> groups;
  for (int64_t b = 0; b < P;) {
    const int slot = slots[order[b]];
    int64_t e = b;
    while (e < P && slots[order[e]] == slot) ++e;
    groups.push_back({&xs[b * H], e - b, pool.slot_data(layer, ExpertMat::Gate, slot),
                      pool.slot_data(layer, ExpertMat::Up, slot), pool.slot_data(layer, ExpertMat::Down, slot),
                      &hs[b * I], &us[b * I], &os[b * H]});
    b = e;
  }
  run_ffn_groups(groups, dt, H, I);

  // y[t] = sum_j weights[t*k+j] * out[t*k+j], in j order.
  const int64_t tokens_per_chunk = std::max<int64_t>(1, (int64_t{1} << 15) / (k * H));
  ThreadPool::global().parallel_chunks(T, tokens_per_chunk, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      float* yt = y + t * H;
      std::memset(yt, 0, static_cast<size_t>(H) * sizeof(float));
      for (int j = 0; j < k; ++j) {
        const float w = weights[t * k + j];
        const float* o = &os[pos[t * k + j] * H];
        for (int64_t h = 0; h < H; ++h) yt[h] += w * o[h];
      }
    }
  });
}

}  // namespace ew
