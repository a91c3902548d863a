// AVX2/FMA versions of attention's inner loops over cache rows (cpu_kernels.h), bf16 rows
// widened in registers. As attention_avx512.cc, tiles share each loaded cache row among
// several heads (a row is widened once per head group, not once per head) and give the
// fma units independent chains:
//   scores: 2 rows x up to 4 heads, each score in avx2::dot_f32's order (one 8-lane
//           accumulator over 8-wide blocks, the fixed horizontal sum, a scalar tail);
//   values: 16 columns x up to 4 heads, each output element one fma per position in
//           ascending order (avx2::axpy_f32's), whatever the tile;
//   exp:    a vector exp (Cephes' expf polynomial, as avx512's; range reduction by ln 2 in
//           two parts, 2^n built in the exponent bits), summed in 8 lanes then the fixed sum.
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

// exp(x) as attention takes it (x = score - max <= 0, or NaN): below -87.34 (where 2^n would
// leave the normal range) 0, above 88.38 +inf, NaN stays NaN; within 2 ulp of expf between.
inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3365447504f), hi = _mm256_set1_ps(88.3762626647949f);
  const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
  y = _mm256_blendv_ps(y, _mm256_set1_ps(__builtin_inff()), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
  return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
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
  const __m256 m = _mm256_set1_ps(mx);
  __m256 acc = _mm256_setzero_ps();
  const int64_t n8 = n & ~int64_t{7};
  for (int64_t i = 0; i < n8; i += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
    _mm256_storeu_ps(x + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  if (n8 < n) {  // the tail through the same exp, its unused lanes 0
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n - n8)), lane);
    const __m256 e = _mm256_and_ps(_mm256_castsi256_ps(mask),
                                   exp8(_mm256_sub_ps(_mm256_maskload_ps(x + n8, mask), m)));
    _mm256_maskstore_ps(x + n8, mask, e);
    acc = _mm256_add_ps(acc, e);
  }
  return hsum(acc);
}

}  // namespace avx2
}  // namespace ew
