// The avx2 path's multi-token matmul as a broadcast GEMM with the sums of row_tile
// (matmul_avx2.cc), bit for bit. row_tile gives each (row, token) element 32 partial sums,
// accumulator j in 0..3 times lane l in 0..7: "class" (j, l) sums the terms
// k = 32m + 8j + l in ascending m, and the element is a fixed tree over the 32 classes
// plus the k % 8 tail. Here the activations are permuted once per op into class order
// (pack_by_class) and each 8-row group of weights is widened and transposed into the same
// order (a panel, [K][rows]); a tile then runs class by class as a plain outer product,
// 8 rows per register and one broadcast activation per token, and combines the classes in
// row_tile's tree. Every element's operations are row_tile's, in its order, so the result
// does not depend on which kernel ran (dispatch picks this one from kByClassMinTokens
// tokens up, where the packing pays off). Compiled with the avx2 flags (see matmul_avx2.cc
// on what such a file must not share).
#include <cstdlib>
#include <new>

#include "kernels/cpu/avx2_helpers.h"

namespace ew {
namespace avx2 {
namespace {

// Where the classes lie in the permuted order: accumulator j's 8 classes from off[j], class
// (j, l) at off[j] + l * M[j], M[j] terms each; then the tail k in [K8, K) in ascending k.
struct ClassLayout {
  int64_t K8, M[4], off[4];
  explicit ClassLayout(int64_t K) {
    K8 = K & ~int64_t{7};
    const int64_t K32 = K & ~int64_t{31}, leftover_blocks = (K8 - K32) / 8;
    int64_t o = 0;
    for (int j = 0; j < 4; ++j) {
      M[j] = K32 / 32 + (j < leftover_blocks ? 1 : 0);
      off[j] = o;
      o += 8 * M[j];
    }
  }
  int64_t at(int j, int l) const { return off[j] + l * M[j]; }
};

// r[i] lane l <- r[l] lane i.
inline void transpose8(__m256 r[8]) {
  __m256 t[8], s[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    s[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    s[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
    s[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    s[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(s[i], s[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(s[i], s[i + 4], 0x31);
  }
}

// The 8-row groups' panel: P[p * NR + r] = W[n + r, k] for k at permuted position p.
// m outermost: the rows' cache lines (32 k each in bf16) are used up before the next ones,
// and each panel row is written whole.
template <DType DT, int NR>
void pack_panel(const void* W, int64_t K, int64_t n, const ClassLayout& L, float* P) {
  for (int64_t m = 0; m < L.M[0]; ++m)
    for (int j = 0; j < 4 && m < L.M[j]; ++j)
      for (int r0 = 0; r0 < NR; r0 += 8) {
        __m256 v[8];
        for (int i = 0; i < 8; ++i) v[i] = load8<DT>(W, (n + r0 + i) * K + 32 * m + 8 * j);
        transpose8(v);  // v[l] = rows r0..r0+7 at k = 32m + 8j + l
        for (int l = 0; l < 8; ++l) _mm256_storeu_ps(P + (L.at(j, l) + m) * NR + r0, v[l]);
      }
  for (int64_t k = L.K8; k < K; ++k)
    for (int r = 0; r < NR; ++r) P[k * NR + r] = load1<DT>(W, (n + r) * K + k);
}

// One class's sums for TT tokens x 8*NV rows: an outer product over its M terms (xc, p:
// the class's first activation and panel row), into out [TT][8*NV].
template <int NV, int TT>
inline void class_pass(const float* xc, int64_t K, int64_t M, const float* p, float* out) {
  constexpr int NR = 8 * NV;
  __m256 acc[TT][NV];
  for (int t = 0; t < TT; ++t)
    for (int v = 0; v < NV; ++v) acc[t][v] = _mm256_setzero_ps();
  for (int64_t m = 0; m < M; ++m) {
    __m256 w[NV];
    for (int v = 0; v < NV; ++v) w[v] = _mm256_loadu_ps(p + m * NR + 8 * v);
    for (int t = 0; t < TT; ++t) {
      const __m256 b = _mm256_broadcast_ss(xc + t * K + m);
      for (int v = 0; v < NV; ++v) acc[t][v] = _mm256_fmadd_ps(w[v], b, acc[t][v]);
    }
  }
  for (int t = 0; t < TT; ++t)
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(out + t * NR + 8 * v, acc[t][v]);
}

// Tb tokens x 8*NV rows, class by class (the class's panel rows stay in L1 while every token
// of the block passes over them), the 32 class sums parked in part [32][Tb][8*NV]; then
// row_tile's tree per element, ((a0 + a1) + (a2 + a3)) per lane and
// ((u0 + u4) + (u2 + u6)) + ((u1 + u5) + (u3 + u7)) over the lanes (its hsum), and the
// tail in ascending k.
template <int NV>
void class_block(const float* xp, int64_t Tb, int64_t K, const ClassLayout& L, const float* P, float* part,
                 float* y, int64_t ldy, bool accum) {
  constexpr int NR = 8 * NV, TT = 12 / NV;  // TT x NV accumulators + NV weights + 1 broadcast <= 16 registers
  for (int j = 0; j < 4; ++j)
    for (int l = 0; l < 8; ++l) {
      const int64_t base = L.at(j, l), M = L.M[j];
      const float* p = P + base * NR;
      float* out = part + (8 * j + l) * Tb * NR;
      int64_t t = 0;
      for (; t + TT <= Tb; t += TT) class_pass<NV, TT>(xp + t * K + base, K, M, p, out + t * NR);
      for (; t < Tb; ++t) class_pass<NV, 1>(xp + t * K + base, K, M, p, out + t * NR);
    }
  for (int64_t t = 0; t < Tb; ++t)
    for (int v = 0; v < NV; ++v) {
      auto a = [&](int j, int l) { return _mm256_loadu_ps(part + ((8 * j + l) * Tb + t) * NR + 8 * v); };
      __m256 u[8];
      for (int l = 0; l < 8; ++l) u[l] = _mm256_add_ps(_mm256_add_ps(a(0, l), a(1, l)), _mm256_add_ps(a(2, l), a(3, l)));
      __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(u[0], u[4]), _mm256_add_ps(u[2], u[6])),
                               _mm256_add_ps(_mm256_add_ps(u[1], u[5]), _mm256_add_ps(u[3], u[7])));
      for (int64_t k = L.K8; k < K; ++k)
        s = _mm256_fmadd_ps(_mm256_broadcast_ss(xp + t * K + k), _mm256_loadu_ps(P + k * NR + 8 * v), s);
      float* yt = y + t * ldy + 8 * v;
      _mm256_storeu_ps(yt, accum ? _mm256_add_ps(_mm256_loadu_ps(yt), s) : s);
    }
}

constexpr int64_t kTokenBlock = 32;

template <int NV>
void class_blocks(const float* xp, int64_t T, int64_t K, const ClassLayout& L, const float* P, float* part,
                  float* y, int64_t ldy, bool accum) {
  for (int64_t t = 0; t < T; t += kTokenBlock) {
    const int64_t Tb = T - t < kTokenBlock ? T - t : kTokenBlock;
    class_block<NV>(xp + t * K, Tb, K, L, P, part, y + t * ldy, ldy, accum);
  }
}

// A thread's scratch. Plain malloc rather than std::vector (no shared template instances).
struct Buffer {
  float* p = nullptr;
  int64_t cap = 0;
  ~Buffer() { std::free(p); }
  float* get(int64_t n) {
    if (n > cap) {
      std::free(p);
      p = static_cast<float*>(std::malloc(static_cast<size_t>(n) * sizeof(float)));
      if (!p) throw std::bad_alloc();
      cap = n;
    }
    return p;
  }
};

// One group of 8*NV rows from n: its panel, then every token block over it.
template <DType DT, int NV>
void row_group(const float* xp, int64_t T, const void* W, int64_t K, int64_t n, const ClassLayout& L, float* P,
               float* part, float* y, int64_t ldy, bool accum) {
  pack_panel<DT, 8 * NV>(W, K, n, L, P);
  class_blocks<NV>(xp, T, K, L, P, part, y + n, ldy, accum);
}

// Groups of 24 rows, then one of 16 (6 tokens per pass rather than two 8-row groups at 12 x 1)
// and one of 8 where they fit.
template <DType DT>
int64_t rows_by_class(const float* xp, int64_t T, const void* W, int64_t K, int64_t n0, int64_t n1, float* y,
                      int64_t ldy, bool accum) {
  const ClassLayout L(K);
  thread_local Buffer panel, parts;
  float* P = panel.get(24 * K);
  float* part = parts.get(32 * kTokenBlock * 24);
  int64_t n = n0;
  for (; n + 24 <= n1; n += 24) row_group<DT, 3>(xp, T, W, K, n, L, P, part, y, ldy, accum);
  if (n + 16 <= n1) row_group<DT, 2>(xp, T, W, K, n, L, P, part, y, ldy, accum), n += 16;
  if (n + 8 <= n1) row_group<DT, 1>(xp, T, W, K, n, L, P, part, y, ldy, accum), n += 8;
  return n;
}

}  // namespace

void pack_by_class(const float* x, int64_t T, int64_t K, float* xp) {
  const ClassLayout L(K);
  for (int64_t t = 0; t < T; ++t) {
    const float* xt = x + t * K;
    float* out = xp + t * K;
    for (int j = 0; j < 4; ++j) {
      int64_t m = 0;
      for (; m + 8 <= L.M[j]; m += 8) {
        __m256 v[8];
        for (int i = 0; i < 8; ++i) v[i] = _mm256_loadu_ps(xt + 32 * (m + i) + 8 * j);
        transpose8(v);  // v[l] = terms m..m+7 of class (j, l)
        for (int l = 0; l < 8; ++l) _mm256_storeu_ps(out + L.at(j, l) + m, v[l]);
      }
      for (; m < L.M[j]; ++m)
        for (int l = 0; l < 8; ++l) out[L.at(j, l) + m] = xt[32 * m + 8 * j + l];
    }
    for (int64_t k = L.K8; k < K; ++k) out[k] = xt[k];
  }
}

int64_t matmul_rows_by_class(const float* xp, int64_t T, const void* W, DType dt, int64_t K, int64_t n0,
                             int64_t n1, float* y, int64_t ldy, bool accumulate) {
  switch (dt) {
    case DType::F32: return rows_by_class<DType::F32>(xp, T, W, K, n0, n1, y, ldy, accumulate);
    case DType::BF16: return rows_by_class<DType::BF16>(xp, T, W, K, n0, n1, y, ldy, accumulate);
    case DType::F16: return rows_by_class<DType::F16>(xp, T, W, K, n0, n1, y, ldy, accumulate);
  }
  unknown_dtype("matmul_rows_by_class (avx2)", dt);
}

}  // namespace avx2
}  // namespace ew
