// AVX2/FMA versions of attention's inner loops over cache rows (cpu_kernels.h): every score
// in avx2::dot_f32's order (one 8-lane accumulator, a fixed horizontal sum, a scalar tail),
// every value sum in axpy_f32's (one fma per position, ascending), bf16 rows widened in
// registers. Compiled with -mavx2 -mfma -mf16c, like matmul_avx2.cc, and under its rule: no
// inline or template function that other files also use is instantiated here (the loads and
// sums are avx2_helpers.h's).
#include "kernels/cpu/avx2_helpers.h"

namespace ew {
namespace avx2 {
namespace {

template <DType DT>
void scores_impl(const float* q, int64_t ldq, int64_t nq, const void* const* rows, int64_t n, int64_t width, float* s,
                 int64_t lds) {
  const int64_t w8 = width & ~int64_t{7};
  for (int64_t p = 0; p < n; ++p)
    for (int64_t h = 0; h < nq; ++h) {
      const float* qh = q + h * ldq;
      __m256 acc = _mm256_setzero_ps();
      for (int64_t k = 0; k < w8; k += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(qh + k), load8<DT>(rows[p], k), acc);
      float v = hsum(acc);
      for (int64_t k = w8; k < width; ++k) v = fma1(qh[k], load1<DT>(rows[p], k), v);
      s[h * lds + p] = v;
    }
}

template <DType DT>
void values_impl(const float* w, int64_t ldw, int64_t nq, const void* const* rows, int64_t n, int64_t R, float* o,
                 int64_t ldo) {
  const int64_t r8 = R & ~int64_t{7};
  for (int64_t p = 0; p < n; ++p)
    for (int64_t h = 0; h < nq; ++h) {
      const float a = w[h * ldw + p];
      const __m256 av = _mm256_set1_ps(a);
      float* oh = o + h * ldo;
      for (int64_t i = 0; i < r8; i += 8)
        _mm256_storeu_ps(oh + i, _mm256_fmadd_ps(av, load8<DT>(rows[p], i), _mm256_loadu_ps(oh + i)));
      for (int64_t i = r8; i < R; ++i) oh[i] = fma1(a, load1<DT>(rows[p], i), oh[i]);
    }
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
