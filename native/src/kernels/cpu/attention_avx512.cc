// AVX-512 versions of attention's inner loops over cache rows (cpu_kernels.h), fp32
// arithmetic over F32 or BF16 rows (widened in registers). Tiles share each loaded cache row
// among several heads, so a row is read once per head group instead of once per head:
//   scores: 4 rows x up to 4 heads, each score in avx512::dot_f32's order (one 16-lane
//           accumulator over 16-wide blocks, a masked tail, the fixed horizontal sum);
//   values: 64 columns x up to 4 heads, each output element one fma per position in
//           ascending order (avx512::axpy_f32's order), whatever the tile;
//   exp:    a vector exp (Cephes' expf polynomial, range reduction by ln 2 in two parts,
//           2^n by scalef; within 2 ulp of expf), summed in 16 lanes then the fixed sum.
// Compiled with the avx512 flags; no inline or template function that other files also use
// is instantiated here (the loads, masks and horizontal sum are avx512_helpers.h's, the same
// as matmul_avx512.cc's dot_f32).
#include "kernels/cpu/avx512_helpers.h"

namespace ew {
namespace avx512 {
namespace {

// Scores of P rows x HQ heads: per block the P rows are loaded once, each head's query once.
template <DType DT, int P, int HQ>
inline void score_tile(const float* q, int64_t ldq, const void* const* rows, int64_t width, float* s, int64_t lds) {
  __m512 acc[P][HQ];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 8
    for (int h = 0; h < HQ; ++h) acc[p][h] = _mm512_setzero_ps();
  const int64_t w16 = width & ~int64_t{15};
  for (int64_t k = 0; k < w16; k += 16) {
    __m512 r[P];
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) r[p] = load16<DT>(rows[p], k);
#pragma GCC unroll 8
    for (int h = 0; h < HQ; ++h) {
      const __m512 qh = _mm512_loadu_ps(q + h * ldq + k);
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) acc[p][h] = _mm512_fmadd_ps(qh, r[p], acc[p][h]);
    }
  }
  if (w16 < width) {
    const __mmask16 m = first_n(width - w16);
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      const __m512 r = load16_masked<DT>(rows[p], w16, m);
#pragma GCC unroll 8
      for (int h = 0; h < HQ; ++h)
        acc[p][h] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + h * ldq + w16), r, acc[p][h]);
    }
  }
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 8
    for (int h = 0; h < HQ; ++h) s[h * lds + p] = hsum(acc[p][h]);
}

template <DType DT, int P>
inline void score_heads(const float* q, int64_t ldq, int64_t nq, const void* const* rows, int64_t width, float* s,
                        int64_t lds) {
  int64_t h = 0;
  for (; h + 4 <= nq; h += 4) score_tile<DT, P, 4>(q + h * ldq, ldq, rows, width, s + h * lds, lds);
  if (h + 2 <= nq) score_tile<DT, P, 2>(q + h * ldq, ldq, rows, width, s + h * lds, lds), h += 2;
  if (h < nq) score_tile<DT, P, 1>(q + h * ldq, ldq, rows, width, s + h * lds, lds);
}

// Tiles of 4 rows x 4 heads: per 16-wide block 4 row loads and 4 query loads feed 16 FMAs.
template <DType DT>
void scores_impl(const float* q, int64_t ldq, int64_t nq, const void* const* rows, int64_t n, int64_t width, float* s,
                 int64_t lds) {
  int64_t p = 0;
  for (; p + 4 <= n; p += 4) score_heads<DT, 4>(q, ldq, nq, rows + p, width, s + p, lds);
  for (; p < n; ++p) score_heads<DT, 1>(q, ldq, nq, rows + p, width, s + p, lds);
}

// o[h][i0 .. i0 + 16 * RV) (+)= sum_p w[h][p] * rows[p][...] for HV heads; the last vector
// masked by `last`.
template <DType DT, int RV, int HV>
inline void value_tile(const float* w, int64_t ldw, const void* const* rows, int64_t n, int64_t i0, __mmask16 last,
                       float* o, int64_t ldo) {
  __m512 acc[HV][RV];
#pragma GCC unroll 8
  for (int h = 0; h < HV; ++h)
#pragma GCC unroll 8
    for (int v = 0; v < RV; ++v)
      acc[h][v] = v + 1 < RV ? _mm512_loadu_ps(o + h * ldo + i0 + 16 * v)
                             : _mm512_maskz_loadu_ps(last, o + h * ldo + i0 + 16 * v);
  for (int64_t p = 0; p < n; ++p) {
    __m512 r[RV];
#pragma GCC unroll 8
    for (int v = 0; v < RV; ++v)
      r[v] = v + 1 < RV ? load16<DT>(rows[p], i0 + 16 * v) : load16_masked<DT>(rows[p], i0 + 16 * v, last);
#pragma GCC unroll 8
    for (int h = 0; h < HV; ++h) {
      const __m512 a = _mm512_set1_ps(w[h * ldw + p]);
#pragma GCC unroll 8
      for (int v = 0; v < RV; ++v) acc[h][v] = _mm512_fmadd_ps(a, r[v], acc[h][v]);
    }
  }
#pragma GCC unroll 8
  for (int h = 0; h < HV; ++h)
#pragma GCC unroll 8
    for (int v = 0; v < RV; ++v) {
      if (v + 1 < RV) _mm512_storeu_ps(o + h * ldo + i0 + 16 * v, acc[h][v]);
      else _mm512_mask_storeu_ps(o + h * ldo + i0 + 16 * v, last, acc[h][v]);
    }
}

template <DType DT, int HV>
inline void value_cols(const float* w, int64_t ldw, const void* const* rows, int64_t n, int64_t R, float* o,
                       int64_t ldo) {
  int64_t i = 0;
  for (; i + 64 <= R; i += 64) value_tile<DT, 4, HV>(w, ldw, rows, n, i, 0xffff, o, ldo);
  for (; i + 16 <= R; i += 16) value_tile<DT, 1, HV>(w, ldw, rows, n, i, 0xffff, o, ldo);
  if (i < R) value_tile<DT, 1, HV>(w, ldw, rows, n, i, first_n(R - i), o, ldo);
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
  const __m512 m = _mm512_set1_ps(mx);
  __m512 acc = _mm512_setzero_ps();
  const int64_t n16 = n & ~int64_t{15};
  for (int64_t i = 0; i < n16; i += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), m));
    _mm512_storeu_ps(x + i, e);
    acc = _mm512_add_ps(acc, e);
  }
  if (n16 < n) {
    const __mmask16 k = first_n(n - n16);
    const __m512 e = _mm512_maskz_mov_ps(k, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + n16), m)));
    _mm512_mask_storeu_ps(x + n16, k, e);
    acc = _mm512_add_ps(acc, e);
  }
  return hsum(acc);
}

}  // namespace avx512
}  // namespace ew
