// Helpers shared by the files compiled with the avx2 flags (*_avx2.cc): loads of 8 weights or
// cache elements widened to fp32, a scalar fma, the fixed horizontal sum. Everything here has
// internal linkage (an anonymous namespace), so each including file keeps its own AVX2 copy
// and the linker can never hand one to a file built without AVX2; the #error keeps the header
// out of such files.
#pragma once
#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "avx2_helpers.h is only for the files compiled with -mavx2 -mfma -mf16c"
#endif
#include <immintrin.h>

#include "kernels/cpu/cpu_kernels.h"

namespace ew {
namespace avx2 {
namespace {

template <DType DT>
inline __m256 load8(const void* W, int64_t i) {
  if constexpr (DT == DType::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(W) + i);
  } else if constexpr (DT == DType::BF16) {
    // The 8 bf16 in both 128-bit lanes (a load-port broadcast), then one in-lane byte shuffle
    // puts elements 0-3 (low lane) and 4-7 (high lane) in the high halves of the fp32 lanes.
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(W) + i));
    const __m256i h = _mm256_broadcastsi128_si256(raw);
    const __m256i m = _mm256_setr_epi8(-128, -128, 0, 1, -128, -128, 2, 3, -128, -128, 4, 5, -128, -128, 6, 7,
                                       -128, -128, 8, 9, -128, -128, 10, 11, -128, -128, 12, 13, -128, -128, 14, 15);
    return _mm256_castsi256_ps(_mm256_shuffle_epi8(h, m));
  } else {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(W) + i)));
  }
}

template <DType DT>
inline float load1(const void* W, int64_t i) {
  if constexpr (DT == DType::F32) {
    return static_cast<const float*>(W)[i];
  } else if constexpr (DT == DType::BF16) {
    const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(W)[i]) << 16;
    return _mm_cvtss_f32(_mm_castsi128_ps(_mm_cvtsi32_si128(static_cast<int>(bits))));
  } else {
    return _cvtsh_ss(static_cast<const uint16_t*>(W)[i]);
  }
}

inline float fma1(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

}  // namespace
}  // namespace avx2
}  // namespace ew
