// Helpers shared by the files compiled with the avx512 flags (*_avx512.cc, *_avx512bf16.cc):
// loads of 16 weights or cache elements widened to fp32 (whole, or masked: nothing outside
// the mask is read), the tail masks, the one fixed horizontal sum of a 16-lane accumulator.
// Everything here has internal linkage (an anonymous namespace), so each including file
// keeps its own AVX-512 copy and the linker can never hand one to a file built without
// AVX-512; the #error keeps the header out of such files.
// GCC 12's AVX-512 intrinsics (_mm512_undefined_ps inside casts and extracts) trip a
// false -Wuninitialized (GCC bug 105593, fixed in 13).
#pragma once
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VL__) || !defined(__AVX512DQ__)
#error "avx512_helpers.h is only for the files compiled with the avx512 flags"
#endif
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "kernels/cpu/cpu_kernels.h"

namespace ew {
namespace avx512 {
namespace {

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline float fma1(float a, float b, float c) { return __builtin_fmaf(a, b, c); }

template <DType DT>
inline __m512 load16(const void* W, int64_t i) {
  if constexpr (DT == DType::F32) {
    return _mm512_loadu_ps(static_cast<const float*>(W) + i);
  } else {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(W) + i));
    if constexpr (DT == DType::BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    else return _mm512_cvtph_ps(h);
  }
}

// Elements i .. i + 15 where mask bit j is set, zero elsewhere (nothing outside is read).
template <DType DT>
inline __m512 load16_masked(const void* W, int64_t i, __mmask16 m) {
  if constexpr (DT == DType::F32) {
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(W) + i);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(W) + i);
    if constexpr (DT == DType::BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    else return _mm512_cvtph_ps(h);
  }
}

inline __mmask16 first_n(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : n <= 0 ? 0 : static_cast<__mmask16>((1u << n) - 1);
}

// The one horizontal sum of every 16-lane accumulator: halves, quarters, pairs, lanes.
inline float hsum(__m512 v) {
  const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  b = _mm_add_ps(b, _mm_movehl_ps(b, b));
  b = _mm_add_ss(b, _mm_movehdup_ps(b));
  return _mm_cvtss_f32(b);
}

// hsum() of v[i + 4m] in lane 4i + m, for 16 vectors at once: each sum is made of exactly the
// additions hsum() makes (so bitwise equal to it), but 45 instructions serve 16 sums instead of
// about 130 (a matmul tile's epilogue, up to a sixth of its time at K = 352).
inline __m512 hsum_4x4(const __m512* v) {
  __m512 s[8], t[4], u[2];
#pragma GCC unroll 8
  for (int k = 0; k < 8; ++k)  // halves (lanes j + 8 onto j), two vectors side by side
    s[k] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0xee));
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k)  // quarters (j + 4 onto j), four vectors side by side
    t[k] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * k], s[2 * k + 1], 0x88),
                         _mm512_shuffle_f32x4(s[2 * k], s[2 * k + 1], 0xdd));
#pragma GCC unroll 2
  for (int k = 0; k < 2; ++k) {  // pairs (j + 2 onto j)
    const __m512d a = _mm512_castps_pd(t[2 * k]), b = _mm512_castps_pd(t[2 * k + 1]);
    u[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));  // lanes
}

// A tile's sums: y[t * ldy + n + r] (+)= hsum(acc[r][t]) for its R rows and TT tokens; with
// 4 rows, four tokens at a time through hsum_4x4 (each token's 4 rows one 128-bit store).
template <int R, int TT>
inline void store_tile_sums(const __m512 (&acc)[R][TT], float* y, int64_t ldy, int64_t n, bool accum) {
  int t = 0;
  if constexpr (R == 4) {
    for (; t + 4 <= TT; t += 4) {
      __m512 v[16];
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r)
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) v[4 * r + j] = acc[r][t + j];
      const __m512 sums = hsum_4x4(v);  // token t + j's rows in lanes 4j .. 4j + 3
      const __m128 q[4] = {_mm512_extractf32x4_ps(sums, 0), _mm512_extractf32x4_ps(sums, 1),
                           _mm512_extractf32x4_ps(sums, 2), _mm512_extractf32x4_ps(sums, 3)};
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        float* out = y + (t + j) * ldy + n;
        _mm_storeu_ps(out, accum ? _mm_add_ps(_mm_loadu_ps(out), q[j]) : q[j]);
      }
    }
  }
  for (; t < TT; ++t)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float s = hsum(acc[r][t]);
      float* out = y + t * ldy + n + r;
      *out = accum ? *out + s : s;
    }
}

// exp(x): attention takes it of scores minus their maximum (x <= 0), SiLU of any x; -inf and
// underflow give 0, overflow +inf (vscalefps), NaN stays NaN (vmaxps returns its second
// operand when either is NaN).
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-104.f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

}  // namespace
}  // namespace avx512
}  // namespace ew
