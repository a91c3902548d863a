// The avx512-bf16 path's matmul (cpu_kernels.h): bf16 activations against bf16 weights with
// AVX512_BF16 dot products (vdpbf16ps: 32 products per instruction, twice avx512's fp32 FMA),
// fp32 accumulation. Compiled with the avx512 flags plus -mavx512bf16; only reached after
// cpu_paths() saw AVX512_BF16.
//
// Per (row n, token t) one 16-lane accumulator: lane j adds the pair (32b + 2j, 32b + 2j + 1)
// of every 32-wide block b in ascending b (a K tail is a zero-filled masked block), then the
// fixed horizontal sum; the same in every tile shape and batch, as in matmul_avx512.cc.
// Weights are read in their stored layout: a bf16 row already is the pair layout.
//
// No inline or template function that other files also use is instantiated here (the
// tile sums are avx512_helpers.h's store_tile_sums, the ones matmul_avx512.cc uses).
#include "kernels/cpu/avx512_helpers.h"

namespace ew {
namespace avx512bf16 {
namespace {

inline __mmask32 first_n32(int64_t n) {
  return n >= 32 ? static_cast<__mmask32>(0xffffffffu) : n <= 0 ? 0 : static_cast<__mmask32>((1u << n) - 1);
}

inline __m512bh load32(const uint16_t* p) { return (__m512bh)_mm512_loadu_si512(p); }
inline __m512bh load32_masked(const uint16_t* p, __mmask32 m) { return (__m512bh)_mm512_maskz_loadu_epi16(m, p); }

using avx512::store_tile_sums;
using avx512::min64;

template <int R, int TT>
inline void tile(const uint16_t* x, int64_t K, const uint16_t* W, int64_t n, float* y, int64_t ldy, bool accum,
                 const uint16_t* next = nullptr) {
  __m512 acc[R][TT];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();
  const int64_t K32 = K & ~int64_t{31};
  for (int64_t k = 0; k < K32; k += 32) {
    __m512bh w[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      w[r] = load32(W + (n + r) * K + k);
      if (next) _mm_prefetch(reinterpret_cast<const char*>(next + r * K + k), _MM_HINT_T1);  // next row group -> L2
    }
#pragma GCC unroll 8
    for (int t = 0; t < TT; ++t) {
      const __m512bh xv = load32(x + t * K + k);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], w[r], xv);
    }
  }
  if (K32 < K) {
    const __mmask32 m = first_n32(K - K32);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512bh w = load32_masked(W + (n + r) * K + K32, m);
#pragma GCC unroll 8
      for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], w, load32_masked(x + t * K + K32, m));
    }
  }
  store_tile_sums(acc, y, ldy, n, accum);
}

// As in matmul_avx512.cc: 4-row x 4-token tiles for several tokens (on AMD Zen 4 205-220
// GFLOP/s a core with the weights in cache, 90-97% of its vdpbf16ps peak, against 175-204 for
// 4 x 6 tiles summed one accumulator at a time); for fewer than
// kFewTokens one row at a time (one forward stream through the weights), prefetched ahead
// where gemv_prefetch_ahead() gives an address (Intel).
constexpr int kTileRows = 4, kTileTokens = 4, kFewTokens = 4;
static_assert(kTileTokens == 4, "token_tiles' switches cover remainders of 1 to 3 tokens");

// The first token tile of a group also prefetches the next group's weights (matmul_avx512.cc).
template <int R>
inline void token_tiles(const uint16_t* x, int64_t T, int64_t K, const uint16_t* W, int64_t n, float* y,
                        int64_t ldy, bool accum, const uint16_t* next = nullptr) {
  int64_t t = 0;
  if (T >= kTileTokens) {
    tile<R, kTileTokens>(x, K, W, n, y, ldy, accum, next);
    t = kTileTokens;
    next = nullptr;
  }
  for (; t + kTileTokens <= T; t += kTileTokens) tile<R, kTileTokens>(x + t * K, K, W, n, y + t * ldy, ldy, accum);
  if (next && T - t > 0) {
    switch (T - t) {
      case 3: return tile<R, 3>(x + t * K, K, W, n, y + t * ldy, ldy, accum, next);
      case 2: return tile<R, 2>(x + t * K, K, W, n, y + t * ldy, ldy, accum, next);
      case 1: return tile<R, 1>(x + t * K, K, W, n, y + t * ldy, ldy, accum, next);
      default: break;
    }
  }
  switch (T - t) {
    case 3: tile<R, 3>(x + t * K, K, W, n, y + t * ldy, ldy, accum); break;
    case 2: tile<R, 2>(x + t * K, K, W, n, y + t * ldy, ldy, accum); break;
    case 1: tile<R, 1>(x + t * K, K, W, n, y + t * ldy, ldy, accum); break;
    default: break;
  }
}

}  // namespace

void matmul_rows_bf16(const uint16_t* x, int64_t T, const uint16_t* W, int64_t K, int64_t n0, int64_t n1, float* y,
                      int64_t ldy, bool accumulate) {
  if (T < kFewTokens) {
    for (int64_t n = n0; n < n1; ++n)
      token_tiles<1>(x, T, K, W, n, y, ldy, accumulate,
                     static_cast<const uint16_t*>(gemv_prefetch_ahead(W, K * 2, n, n1)));
    return;
  }
  constexpr int64_t kTokenBlock = 128;  // 128 bf16 rows of K stay in L2
  for (int64_t tb = 0; tb < T; tb += kTokenBlock) {
    const int64_t tn = min64(kTokenBlock, T - tb);
    const uint16_t* xb = x + tb * K;
    float* yb = y + tb * ldy;
    int64_t n = n0;
    for (; n + kTileRows <= n1; n += kTileRows)
      token_tiles<kTileRows>(xb, tn, K, W, n, yb, ldy, accumulate,
                             n + 2 * kTileRows <= n1 ? W + (n + kTileRows) * K : nullptr);
    for (; n < n1; ++n) token_tiles<1>(xb, tn, K, W, n, yb, ldy, accumulate);
  }
}

void round_to_bf16(const float* x, int64_t n, uint16_t* out) {
  const int64_t n32 = n & ~int64_t{31};
  for (int64_t i = 0; i < n32; i += 32) {
    const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
    _mm512_storeu_si512(out + i, (__m512i)v);
  }
  if (n32 < n) {
    const int64_t r = n - n32;
    const __mmask16 lo = r >= 16 ? 0xffff : static_cast<__mmask16>((1u << r) - 1);
    const __mmask16 hi = r <= 16 ? 0 : static_cast<__mmask16>((1u << (r - 16)) - 1);
    const __m512bh v =
        _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, x + n32 + 16), _mm512_maskz_loadu_ps(lo, x + n32));
    _mm512_mask_storeu_epi16(out + n32, first_n32(r), (__m512i)v);
  }
}

}  // namespace avx512bf16
}  // namespace ew
