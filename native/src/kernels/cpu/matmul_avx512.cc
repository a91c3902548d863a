// AVX-512 (F/BW/VL/DQ) versions of the CPU inner loops (cpu_kernels.h), fp32 activations.
// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c; only reached
// after cpu_paths() saw those features and the OS's ZMM state.
//
// matmul_rows: per (row n, token t) one 16-lane accumulator; each 32-wide block of k adds
// its low 16 products, then its high 16 (a K tail is a zero-filled masked block), then a
// fixed horizontal sum. Every element has that order in every tile shape, so tiles
// (R rows x TT tokens, up to 4 x 5 = 20 accumulators in the 32 ZMM registers) only decide
// how often a loaded weight vector is reused, never a result. Weights stay in their
// stored layout (bf16 widened in registers by a shift), so nothing is repacked at load.
// Decode (T = 1) is the same kernel, one row at a time: a single forward stream, prefetched
// ahead in software on Intel and left to the hardware on AMD (gemv_prefetch_ahead()).
//
// As in matmul_avx2.cc: no inline or template function that other files also use is
// instantiated here (the linker could keep this file's AVX-512 copy for everyone).
// The loads, masks and horizontal sum are avx512_helpers.h's.
#include "kernels/cpu/avx512_helpers.h"

namespace ew {
namespace avx512 {
namespace {

template <DType DT>
constexpr int64_t dtype_bytes() {
  return DT == DType::F32 ? 4 : 2;
}

// Rows n .. n + R - 1 against tokens x[0 .. TT) (row stride K). Per 32-wide block the R rows'
// weight vectors are loaded (widened) once and each token's two activation vectors once, then
// reused across the tile: 2R + 2 registers beside the R*TT accumulators.
template <DType DT, int R, int TT>
inline void tile(const float* x, int64_t K, const void* W, int64_t n, float* y, int64_t ldy, bool accum,
                 const char* next = nullptr) {
  constexpr int64_t esz = DT == DType::F32 ? 4 : 2;
  __m512 acc[R][TT];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();
  const int64_t K32 = K & ~int64_t{31};
  for (int64_t k = 0; k < K32; k += 32) {
    __m512 w0[R], w1[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      w0[r] = load16<DT>(W, (n + r) * K + k);
      w1[r] = load16<DT>(W, (n + r) * K + k + 16);
      if (next) {  // the next row group, one cache line (or two) per row per block, into L2
        _mm_prefetch(next + (r * K + k) * esz, _MM_HINT_T1);
        if constexpr (esz == 4) _mm_prefetch(next + (r * K + k) * esz + 64, _MM_HINT_T1);
      }
    }
#pragma GCC unroll 8
    for (int t = 0; t < TT; ++t) {
      const __m512 x0 = _mm512_loadu_ps(x + t * K + k), x1 = _mm512_loadu_ps(x + t * K + k + 16);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        acc[r][t] = _mm512_fmadd_ps(w0[r], x0, acc[r][t]);
        acc[r][t] = _mm512_fmadd_ps(w1[r], x1, acc[r][t]);
      }
    }
  }
  if (K32 < K) {
    const __mmask16 m0 = first_n(K - K32), m1 = first_n(K - K32 - 16);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 w0 = load16_masked<DT>(W, (n + r) * K + K32, m0);
#pragma GCC unroll 8
      for (int t = 0; t < TT; ++t)
        acc[r][t] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(m0, x + t * K + K32), acc[r][t]);
      if (m1) {
        const __m512 w1 = load16_masked<DT>(W, (n + r) * K + K32 + 16, m1);
#pragma GCC unroll 8
        for (int t = 0; t < TT; ++t)
          acc[r][t] = _mm512_fmadd_ps(w1, _mm512_maskz_loadu_ps(m1, x + t * K + K32 + 16), acc[r][t]);
      }
    }
  }
  store_tile_sums(acc, y, ldy, n, accum);
}

// Register tiles: 4 rows x 4 tokens for several tokens (prefill), whose 16 sums take one
// hsum_4x4 (4 x 5 measured 5-10% slower at 12 tokens on AMD Zen 4); for fewer than kFewTokens
// one row at a time, a single forward stream through the weights (interleaving 4 rows'
// streams measured 11 GB/s against 27-35 for one on AMD Zen 4, 29-30 against 33-34 with the
// stream prefetched ahead on Intel). The tile decides only loads and reuse, never a result.
constexpr int kTileRows = 4, kTileTokens = 4, kFewTokens = 4;
static_assert(kTileTokens == 4, "token_tiles' switches cover remainders of 1 to 3 tokens");

// Every token tile of rows n .. n + R - 1; the first also prefetches `next` (the next row
// group's weights, or null) so that its DRAM traffic overlaps this group's arithmetic:
// without it the 4 rows' interleaved streams ran at a third of the read bandwidth.
template <DType DT, int R>
inline void token_tiles(const float* x, int64_t T, int64_t K, const void* W, int64_t n, float* y, int64_t ldy,
                        bool accum, const char* next = nullptr) {
  int64_t t = 0;
  if (T >= kTileTokens) {
    tile<DT, R, kTileTokens>(x, K, W, n, y, ldy, accum, next);
    t = kTileTokens;
    next = nullptr;
  }
  for (; t + kTileTokens <= T; t += kTileTokens) tile<DT, R, kTileTokens>(x + t * K, K, W, n, y + t * ldy, ldy, accum);
  if (next && T - t > 0) {  // the group's only (short) tile prefetches
    switch (T - t) {
      case 3: return tile<DT, R, 3>(x + t * K, K, W, n, y + t * ldy, ldy, accum, next);
      case 2: return tile<DT, R, 2>(x + t * K, K, W, n, y + t * ldy, ldy, accum, next);
      case 1: return tile<DT, R, 1>(x + t * K, K, W, n, y + t * ldy, ldy, accum, next);
      default: break;
    }
  }
  switch (T - t) {
    case 3: tile<DT, R, 3>(x + t * K, K, W, n, y + t * ldy, ldy, accum); break;
    case 2: tile<DT, R, 2>(x + t * K, K, W, n, y + t * ldy, ldy, accum); break;
    case 1: tile<DT, R, 1>(x + t * K, K, W, n, y + t * ldy, ldy, accum); break;
    default: break;
  }
}

// Rows [n0, n1) for all T tokens: tokens in blocks that stay in L2 (64 rows of K fp32),
// and within a block 4-row groups against the token tiles, the 4 rows staying in L1.
template <DType DT>
void rows_impl(const float* x, int64_t T, const void* W, int64_t K, int64_t n0, int64_t n1, float* y,
               int64_t ldy, bool accum) {
  if (T < kFewTokens) {
    for (int64_t n = n0; n < n1; ++n)
      token_tiles<DT, 1>(x, T, K, W, n, y, ldy, accum,
                         static_cast<const char*>(gemv_prefetch_ahead(W, K * dtype_bytes<DT>(), n, n1)));
    return;
  }
  constexpr int64_t kTokenBlock = 64;
  for (int64_t tb = 0; tb < T; tb += kTokenBlock) {
    const int64_t tn = min64(kTokenBlock, T - tb);
    const float* xb = x + tb * K;
    float* yb = y + tb * ldy;
    int64_t n = n0;
    for (; n + kTileRows <= n1; n += kTileRows) {
      const char* next = n + 2 * kTileRows <= n1 ? static_cast<const char*>(W) + (n + kTileRows) * K * dtype_bytes<DT>() : nullptr;
      token_tiles<DT, kTileRows>(xb, tn, K, W, n, yb, ldy, accum, next);
    }
    for (; n < n1; ++n) token_tiles<DT, 1>(xb, tn, K, W, n, yb, ldy, accum);
  }
}

// Columns [n, n + 16 * NV) (the last vector masked by `last`) of TT tokens of y = x . W,
// W stored [K, N]: one accumulator per 16 columns per token, fma over k ascending from
// zero, the same per element in every tile shape.
template <DType DT, int NV, int TT>
inline void t_tile(const float* x, int64_t K, const void* W, int64_t N, int64_t n, __mmask16 last, float* y) {
  __m512 acc[TT][NV];
  #pragma GCC unroll 8
  for (int t = 0; t < TT; ++t)
    #pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[t][v] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 w[NV];
    #pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      w[v] = v + 1 < NV ? load16<DT>(W, k * N + n + 16 * v) : load16_masked<DT>(W, k * N + n + 16 * v, last);
    #pragma GCC unroll 8
    for (int t = 0; t < TT; ++t) {
      const __m512 xb = _mm512_set1_ps(x[t * K + k]);
      #pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[t][v] = _mm512_fmadd_ps(xb, w[v], acc[t][v]);
    }
  }
  #pragma GCC unroll 8
  for (int t = 0; t < TT; ++t)
    #pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      if (v + 1 < NV) _mm512_storeu_ps(y + t * N + n + 16 * v, acc[t][v]);
      else _mm512_mask_storeu_ps(y + t * N + n + 16 * v, last, acc[t][v]);
    }
}

template <DType DT, int NV>
void t_tiles(const float* x, int64_t T, int64_t K, const void* W, int64_t N, int64_t n, __mmask16 last, float* y) {
  int64_t t = 0;
  for (; t + 4 <= T; t += 4) t_tile<DT, NV, 4>(x + t * K, K, W, N, n, last, y + t * N);
  switch (T - t) {
    case 3: t_tile<DT, NV, 3>(x + t * K, K, W, N, n, last, y + t * N); break;
    case 2: t_tile<DT, NV, 2>(x + t * K, K, W, N, n, last, y + t * N); break;
    case 1: t_tile<DT, NV, 1>(x + t * K, K, W, N, n, last, y + t * N); break;
    default: break;
  }
}

template <DType DT>
void t_cols_impl(const float* x, int64_t T, const void* W, int64_t K, int64_t N, int64_t n0, int64_t n1, float* y) {
  const __mmask16 full = 0xffff;
  int64_t n = n0;
  for (; n + 64 <= n1; n += 64) t_tiles<DT, 4>(x, T, K, W, N, n, full, y);
  for (; n + 16 <= n1; n += 16) t_tiles<DT, 1>(x, T, K, W, N, n, full, y);
  if (n < n1) t_tiles<DT, 1>(x, T, K, W, N, n, first_n(n1 - n), y);
}

}  // namespace

void matmul_rows(const float* x, int64_t T, const void* W, DType dt, int64_t K, int64_t n0, int64_t n1,
                 float* y, int64_t ldy, bool accumulate) {
  switch (dt) {
    case DType::F32: return rows_impl<DType::F32>(x, T, W, K, n0, n1, y, ldy, accumulate);
    case DType::BF16: return rows_impl<DType::BF16>(x, T, W, K, n0, n1, y, ldy, accumulate);
    case DType::F16: return rows_impl<DType::F16>(x, T, W, K, n0, n1, y, ldy, accumulate);
  }
  unknown_dtype("matmul_rows (avx512)", dt);
}

void matmul_t_cols(const float* x, int64_t T, const void* W, DType dt, int64_t K, int64_t N, int64_t n0,
                   int64_t n1, float* y) {
  switch (dt) {
    case DType::F32: return t_cols_impl<DType::F32>(x, T, W, K, N, n0, n1, y);
    case DType::BF16: return t_cols_impl<DType::BF16>(x, T, W, K, N, n0, n1, y);
    case DType::F16: return t_cols_impl<DType::F16>(x, T, W, K, N, n0, n1, y);
  }
  unknown_dtype("matmul_t_cols (avx512)", dt);
}

float dot_f32(const float* a, const float* b, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  const int64_t n16 = n & ~int64_t{15};
  for (int64_t k = 0; k < n16; k += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), _mm512_loadu_ps(b + k), acc);
  if (n16 < n) {
    const __mmask16 m = first_n(n - n16);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + n16), _mm512_maskz_loadu_ps(m, b + n16), acc);
  }
  return hsum(acc);
}

void axpy_f32(float a, const float* x, float* y, int64_t n) {
  const __m512 av = _mm512_set1_ps(a);
  const int64_t n16 = n & ~int64_t{15};
  for (int64_t i = 0; i < n16; i += 16)
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
  for (int64_t i = n16; i < n; ++i) y[i] = fma1(a, x[i], y[i]);
}

}  // namespace avx512
}  // namespace ew
