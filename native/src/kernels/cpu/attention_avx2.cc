// AVX2/FMA versions of attention's inner loops over cache rows (cpu_kernels.h), bf16 rows
// widened in registers. As attention_avx512.cc, tiles share each loaded cache row among
// several heads (a row is widened once per head group, not once per head) and give the
// fma units independent chains:
//   scores: 2 rows x up to 4 heads, each score in avx2::dot_f32's order (one 8-lane
//           accumulator over 8-wide blocks, the fixed horizontal sum, a scalar tail);
//   values: 16 columns x up to 4 heads, each output element one fma per position in
//           ascending order (avx2::axpy_f32's), whatever the tile.
// Compiled with -mavx2 -mfma -mf16c, like matmul_avx2.cc, and under its rule: no inline or
// template function that other files also use is instantiated here (the loads and sums are
// avx2_helpers.h's).
#include "kernels/cpu/avx2_helpers.h"

namespace ew {
namespace avx2 {
namespace {

// Scores of P rows x HQ heads: per 8-wide block the P rows are widened once, each query loaded once.
template <DType DT, int P, int HQ>
inline void score_tile(const float* q, int64_t ldq, const void* const* rows, int64_t width, float* s, int64_t lds) {
  __m256 acc[P][HQ];
  for (int p = 0; p < P; ++p)
    for (int h = 0; h < HQ; ++h) acc[p][h] = _mm256_setzero_ps();
  const int64_t w8 = width & ~int64_t{7};
  for (int64_t k = 0; k < w8; k += 8) {
    __m256 r[P];
    for (int p = 0; p < P; ++p) r[p] = load8<DT>(rows[p], k);
    for (int h = 0; h < HQ; ++h) {
      const __m256 qh = _mm256_loadu_ps(q + h * ldq + k);
      for (int p = 0; p < P; ++p) acc[p][h] = _mm256_fmadd_ps(qh, r[p], acc[p][h]);
    }
  }
  for (int p = 0; p < P; ++p)
    for (int h = 0; h < HQ; ++h) {
      float v = hsum(acc[p][h]);
      for (int64_t k = w8; k < width; ++k) v = fma1(q[h * ldq + k], load1<DT>(rows[p], k), v);
      s[h * lds + p] = v;
    }
}

template <DType DT, int P>
inline void score_heads(const float* q, int64_t ldq, int64_t nq, const void* const* rows, int64_t width, float* s,
                        int64_t lds) {
  int64_t h = 0;
  for (; h + 4 <= nq; h += 4) score_tile<DT, P, 4>(q + h * ldq, ldq, rows, width, s + h * lds, lds);
  if (h + 2 <= nq) score_tile<DT, P, 2>(q + h * ldq, ldq, rows, width, s + h * lds, lds), h += 2;
  if (h < nq) score_tile<DT, P, 1>(q + h * ldq, ldq, rows, width, s + h * lds, lds);
}

template <DType DT>
void scores_impl(const float* q, int64_t ldq, int64_t nq, const void* const* rows, int64_t n, int64_t width, float* s,
                 int64_t lds) {
  int64_t p = 0;
  for (; p + 2 <= n; p += 2) score_heads<DT, 2>(q, ldq, nq, rows + p, width, s + p, lds);
  if (p < n) score_heads<DT, 1>(q, ldq, nq, rows + p, width, s + p, lds);
}

// o[h][i0 .. i0 + 8 * RV) += sum_p w[h][p] * rows[p][...] for HV heads, p ascending.
template <DType DT, int RV, int HV>
inline void value_tile(const float* w, int64_t ldw, const void* const* rows, int64_t n, int64_t i0, float* o,
                       int64_t ldo) {
  __m256 acc[HV][RV];
  for (int h = 0; h < HV; ++h)
    for (int v = 0; v < RV; ++v) acc[h][v] = _mm256_loadu_ps(o + h * ldo + i0 + 8 * v);
  for (int64_t p = 0; p < n; ++p) {
    __m256 r[RV];
    for (int v = 0; v < RV; ++v) r[v] = load8<DT>(rows[p], i0 + 8 * v);
    for (int h = 0; h < HV; ++h) {
      const __m256 a = _mm256_set1_ps(w[h * ldw + p]);
      for (int v = 0; v < RV; ++v) acc[h][v] = _mm256_fmadd_ps(a, r[v], acc[h][v]);
    }
  }
  for (int h = 0; h < HV; ++h)
    for (int v = 0; v < RV; ++v) _mm256_storeu_ps(o + h * ldo + i0 + 8 * v, acc[h][v]);
}

template <DType DT, int HV>
inline void value_cols(const float* w, int64_t ldw, const void* const* rows, int64_t n, int64_t R, float* o,
                       int64_t ldo) {
  int64_t i = 0;
  for (; i + 16 <= R; i += 16) value_tile<DT, 2, HV>(w, ldw, rows, n, i, o, ldo);
  if (i + 8 <= R) value_tile<DT, 1, HV>(w, ldw, rows, n, i, o, ldo), i += 8;
  for (; i < R; ++i)
    for (int64_t p = 0; p < n; ++p)
      for (int h = 0; h < HV; ++h) o[h * ldo + i] = fma1(w[h * ldw + p], load1<DT>(rows[p], i), o[h * ldo + i]);
}

template <DType DT>
void values_impl(const float* w, int64_t ldw, int64_t nq, const void* const* rows, int64_t n, int64_t R, float* o,
                 int64_t ldo) {
  int64_t h = 0;
  for (; h + 4 <= nq; h += 4) value_cols<DT, 4>(w + h * ldw, ldw, rows, n, R, o + h * ldo, ldo);
  if (h + 2 <= nq) value_cols<DT, 2>(w + h * ldw, ldw, rows, n, R, o + h * ldo, ldo), h += 2;
  if (h < nq) value_cols<DT, 1>(w + h * ldw, ldw, rows, n, R, o + h * ldo, ldo);
}

}  // namespace

void attn_scores(const float* q, int64_t ldq, int64_t nq, const void* const* rows, DType dt, int64_t n, int64_t width,
                 float* s, int64_t lds) {
  if (dt == DType::BF16) return scores_impl<DType::BF16>(q, ldq, nq, rows, n, width, s, lds);
  scores_impl<DType::F32>(q, ldq, nq, rows, n, width, s, lds);
}

void attn_values(const float* w, int64_t ldw, int64_t nq, const void* const* rows, DType dt, int64_t n, int64_t R,
                 float* o, int64_t ldo) {
  if (dt == DType::BF16) return values_impl<DType::BF16>(w, ldw, nq, rows, n, R, o, ldo);
  values_impl<DType::F32>(w, ldw, nq, rows, n, R, o, ldo);
}

float exp_sum(float* x, int64_t n, float mx) {
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = __builtin_expf(x[i] - mx);
    sum += x[i];
  }
  return sum;
}

}  // namespace avx2
}  // namespace ew
