#include "kernels/cpu/mlp.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/matmul.h"
#include "util/error.h"

namespace ew {

void silu_mul_cpu(float* g, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; ++i) g[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
}

void mlp_cpu(const float* x, int64_t T, const TensorView& gate, const TensorView& up, const TensorView& down,
             float* y) {
  const int64_t W = gate.dim(0);
  std::vector<float> g(static_cast<size_t>(T * W)), u(static_cast<size_t>(T * W));
  matmul_cpu(x, T, gate, g.data());
  matmul_cpu(x, T, up, u.data());
  silu_mul_cpu(g.data(), u.data(), T * W);
  matmul_cpu(g.data(), T, down, y);
}

void grouped_experts_cpu(const float* x, int64_t T, const ExpertStore& pool, int layer, const int32_t* slots,
                         const float* weights, int k, float* y) {
  const int64_t H = pool.hidden(), I = pool.width(), P = T * k;
  const DType dt = pool.dtype();
  if (pool.device_memory()) fail("grouped experts: MoE layer ", layer, "'s experts are in device memory");
  for (int64_t i = 0; i < P; ++i)
    if (slots[i] < 0 || slots[i] >= pool.capacity())
      fail("grouped experts: slot ", slots[i], " out of range [0, ", pool.capacity(), ") in MoE layer ", layer);

  // Pairs sorted by (slot, pair index): each slot's tokens form one contiguous group.
  std::vector<int64_t> order(static_cast<size_t>(P));
  for (int64_t i = 0; i < P; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return slots[a] < slots[b]; });

  std::vector<float> out(static_cast<size_t>(P * H));
  std::vector<float> xg, g, u, d;
  for (int64_t b = 0; b < P;) {
    int64_t e = b;
    while (e < P && slots[order[e]] == slots[order[b]]) ++e;
    const int64_t n = e - b;
    const int slot = slots[order[b]];
    xg.resize(static_cast<size_t>(n * H));
    g.resize(static_cast<size_t>(n * I));
    u.resize(static_cast<size_t>(n * I));
    d.resize(static_cast<size_t>(n * H));
    for (int64_t i = 0; i < n; ++i)
      std::memcpy(&xg[i * H], x + (order[b + i] / k) * H, static_cast<size_t>(H) * sizeof(float));
    matmul_cpu_raw(xg.data(), n, pool.slot_data(layer, ExpertMat::Gate, slot), dt, I, H, g.data());
    matmul_cpu_raw(xg.data(), n, pool.slot_data(layer, ExpertMat::Up, slot), dt, I, H, u.data());
    silu_mul_cpu(g.data(), u.data(), n * I);
    matmul_cpu_raw(g.data(), n, pool.slot_data(layer, ExpertMat::Down, slot), dt, H, I, d.data());
    for (int64_t i = 0; i < n; ++i)
      std::memcpy(&out[order[b + i] * H], &d[i * H], static_cast<size_t>(H) * sizeof(float));
    b = e;
  }
  for (int64_t t = 0; t < T; ++t) {
    float* yt = y + t * H;
    std::memset(yt, 0, static_cast<size_t>(H) * sizeof(float));
    for (int j = 0; j < k; ++j) {
      const float w = weights[t * k + j];
      const float* o = &out[(t * k + j) * H];
      for (int64_t h = 0; h < H; ++h) yt[h] += w * o[h];
    }
  }
}

}  // namespace ew
