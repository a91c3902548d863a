// AVX2/FMA/F16C versions of the CPU inner loops (cpu_kernels.h). Compiled with
// -mavx2 -mfma -mf16c; only reached after cpu_path() saw those features.
//
// Every (row, token) dot product has the same reduction order whatever the batch or
// tile (row_tile below), so tiles only change how often a weight vector is reused
// (once loaded, for TT tokens), never any element's result.
//
// This file is compiled with AVX2 code generation, so it must not instantiate any
// inline or template function that other files also use (the linker could keep
// this file's AVX2 copy for everyone): hence the internal helpers of avx2_helpers.h
// instead of std::min, std::fma and the header's converters.
#include "kernels/cpu/avx2_helpers.h"

namespace ew {
namespace avx2 {
namespace {

// One weight row against TT tokens. Per (row, token) four 8-lane accumulators: the
// 8-wide block b of k goes into accumulator b % 4 (four independent fma chains, enough
// to keep a single row streaming), then (a0 + a1) + (a2 + a3), a fixed horizontal sum
// and the k % 8 tail in ascending k. One row at a time, read front to back with a
// software prefetch ahead, keeps one memory stream per thread: several interleaved row
// streams were markedly slower on a bandwidth-bound GEMV.
constexpr int64_t kPrefetchBytes = 1024;

template <DType DT, int TT>
inline void row_tile(const float* x, int64_t K, const void* W, int64_t n, float* y, int64_t ldy, bool accum) {
  constexpr int64_t esz = DT == DType::F32 ? 4 : 2;
  const int64_t row = n * K;
  const char* wbytes = static_cast<const char*>(W) + row * esz;
  __m256 a0[TT], a1[TT], a2[TT], a3[TT];
  for (int t = 0; t < TT; ++t) a0[t] = a1[t] = a2[t] = a3[t] = _mm256_setzero_ps();
  const int64_t K32 = K & ~int64_t{31}, K8 = K & ~int64_t{7};
  int64_t k = 0;
  for (; k < K32; k += 32) {
    _mm_prefetch(wbytes + k * esz + kPrefetchBytes, _MM_HINT_T0);
    if constexpr (esz == 4) _mm_prefetch(wbytes + k * esz + kPrefetchBytes + 64, _MM_HINT_T0);
    const __m256 w0 = load8<DT>(W, row + k), w1 = load8<DT>(W, row + k + 8);
    const __m256 w2 = load8<DT>(W, row + k + 16), w3 = load8<DT>(W, row + k + 24);
    for (int t = 0; t < TT; ++t) {
      const float* xt = x + t * K + k;
      a0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xt), a0[t]);
      a1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xt + 8), a1[t]);
      a2[t] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xt + 16), a2[t]);
      a3[t] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xt + 24), a3[t]);
    }
  }
  // Up to three more 8-blocks, continuing the block -> accumulator cycle.
  if (k < K8) {
    const __m256 w = load8<DT>(W, row + k);
    for (int t = 0; t < TT; ++t) a0[t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + t * K + k), a0[t]);
    k += 8;
  }
  if (k < K8) {
    const __m256 w = load8<DT>(W, row + k);
    for (int t = 0; t < TT; ++t) a1[t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + t * K + k), a1[t]);
    k += 8;
  }
  if (k < K8) {
    const __m256 w = load8<DT>(W, row + k);
    for (int t = 0; t < TT; ++t) a2[t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + t * K + k), a2[t]);
    k += 8;
  }
  for (int t = 0; t < TT; ++t) {
    float s = hsum(_mm256_add_ps(_mm256_add_ps(a0[t], a1[t]), _mm256_add_ps(a2[t], a3[t])));
    for (int64_t j = K8; j < K; ++j) s = fma1(x[t * K + j], load1<DT>(W, row + j), s);
    y[t * ldy + n] = accum ? y[t * ldy + n] + s : s;
  }
}

// The same sums as row_tile for R rows x TT tokens (several tokens: prefill), where
// four accumulators per element would not fit in registers: accumulator chain j
// (blocks j, j + 4, ..., then the j-th leftover block) of all R*TT elements is run in
// its own pass over a k segment, its partial sums parked in memory in between, and the
// chains combined as row_tile does. A segment's R rows and TT token rows stay in L1
// across the four passes.
template <DType DT, int R, int TT>
inline void chain_tile(const float* x, int64_t K, const void* W, int64_t n0, float* y, int64_t ldy, bool accum) {
  constexpr int64_t kSegment = 1024;  // k per sweep: 4 weight rows + 3 token rows stay in L1
  const int64_t K32 = K & ~int64_t{31}, K8 = K & ~int64_t{7};
  __m256 part[4][R][TT];
  for (int j = 0; j < 4; ++j)
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < TT; ++t) part[j][r][t] = _mm256_setzero_ps();
  for (int64_t ks = 0; ks < K32 || ks == 0; ks += kSegment) {
    const int64_t ke = min64(K32, ks + kSegment);
    const bool last = ke == K32;
    for (int j = 0; j < 4; ++j) {
      __m256 acc[R][TT];
      for (int r = 0; r < R; ++r)
        for (int t = 0; t < TT; ++t) acc[r][t] = part[j][r][t];
      auto block = [&](int64_t k) {
        __m256 xv[TT];
        for (int t = 0; t < TT; ++t) xv[t] = _mm256_loadu_ps(x + t * K + k);
        for (int r = 0; r < R; ++r) {
          const __m256 w = load8<DT>(W, (n0 + r) * K + k);
          for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_fmadd_ps(w, xv[t], acc[r][t]);
        }
      };
      for (int64_t k = ks + 8 * j; k < ke; k += 32) block(k);
      if (last && K32 + 8 * j < K8) block(K32 + 8 * j);
      for (int r = 0; r < R; ++r)
        for (int t = 0; t < TT; ++t) part[j][r][t] = acc[r][t];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) {
      float s = hsum(_mm256_add_ps(_mm256_add_ps(part[0][r][t], part[1][r][t]),
                                   _mm256_add_ps(part[2][r][t], part[3][r][t])));
      for (int64_t j = K8; j < K; ++j) s = fma1(x[t * K + j], load1<DT>(W, (n0 + r) * K + j), s);
      y[t * ldy + n0 + r] = accum ? y[t * ldy + n0 + r] + s : s;
    }
}

// Rows [n0, n1) for all T tokens. One token (decode): row by row. Several: tokens in
// cache-sized blocks, 4-row x 3-token chain tiles, leftovers row by row.
template <DType DT>
void rows_impl(const float* x, int64_t T, const void* W, int64_t K, int64_t n0, int64_t n1, float* y,
               int64_t ldy, bool accum) {
  if (T == 1) {
    for (int64_t n = n0; n < n1; ++n) row_tile<DT, 1>(x, K, W, n, y, ldy, accum);
    return;
  }
  constexpr int64_t kTokenBlock = 64;
  for (int64_t tb = 0; tb < T; tb += kTokenBlock) {
    const int64_t te = min64(T, tb + kTokenBlock);
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) {
      int64_t t = tb;
      for (; te - t >= 3; t += 3) chain_tile<DT, 4, 3>(x + t * K, K, W, n, y + t * ldy, ldy, accum);
      if (te - t == 2) chain_tile<DT, 4, 2>(x + t * K, K, W, n, y + t * ldy, ldy, accum);
      if (te - t == 1) chain_tile<DT, 4, 1>(x + t * K, K, W, n, y + t * ldy, ldy, accum);
    }
    for (; n < n1; ++n) {
      int64_t t = tb;
      for (; te - t >= 3; t += 3) row_tile<DT, 3>(x + t * K, K, W, n, y + t * ldy, ldy, accum);
      if (te - t == 2) row_tile<DT, 2>(x + t * K, K, W, n, y + t * ldy, ldy, accum);
      if (te - t == 1) row_tile<DT, 1>(x + t * K, K, W, n, y + t * ldy, ldy, accum);
    }
  }
}

// Columns [n, n + 8*NV) of TT tokens of y = x . W with W stored [K, N]: one register
// accumulator per 8 columns per token, fma over k ascending, so the order per element
// is the same in every tile shape.
template <DType DT, int NV, int TT>
inline void t_tile(const float* x, int64_t K, const void* W, int64_t N, int64_t n, float* y) {
  __m256 acc[TT][NV];
  for (int t = 0; t < TT; ++t)
    for (int v = 0; v < NV; ++v) acc[t][v] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m256 w[NV];
    for (int v = 0; v < NV; ++v) w[v] = load8<DT>(W, k * N + n + 8 * v);
    for (int t = 0; t < TT; ++t) {
      const __m256 xb = _mm256_broadcast_ss(x + t * K + k);
      for (int v = 0; v < NV; ++v) acc[t][v] = _mm256_fmadd_ps(xb, w[v], acc[t][v]);
    }
  }
  for (int t = 0; t < TT; ++t)
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(y + t * N + n + 8 * v, acc[t][v]);
}

template <DType DT, int NV>
void t_tiles(const float* x, int64_t T, int64_t K, const void* W, int64_t N, int64_t n, float* y) {
  int64_t t = 0;
  for (; t + 4 <= T; t += 4) t_tile<DT, NV, 4>(x + t * K, K, W, N, n, y + t * N);
  switch (T - t) {
    case 3: t_tile<DT, NV, 3>(x + t * K, K, W, N, n, y + t * N); break;
    case 2: t_tile<DT, NV, 2>(x + t * K, K, W, N, n, y + t * N); break;
    case 1: t_tile<DT, NV, 1>(x + t * K, K, W, N, n, y + t * N); break;
    default: break;
  }
}

template <DType DT>
void t_cols_impl(const float* x, int64_t T, const void* W, int64_t K, int64_t N, int64_t n0, int64_t n1,
                 float* y) {
  int64_t n = n0;
  for (; n + 16 <= n1; n += 16) t_tiles<DT, 2>(x, T, K, W, N, n, y);
  for (; n + 8 <= n1; n += 8) t_tiles<DT, 1>(x, T, K, W, N, n, y);
  for (; n < n1; ++n)
    for (int64_t t = 0; t < T; ++t) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) s = fma1(x[t * K + k], load1<DT>(W, k * N + n), s);
      y[t * N + n] = s;
    }
}

}  // namespace

void matmul_rows(const float* x, int64_t T, const void* W, DType dt, int64_t K, int64_t n0, int64_t n1,
                 float* y, int64_t ldy, bool accumulate) {
  switch (dt) {
    case DType::F32: return rows_impl<DType::F32>(x, T, W, K, n0, n1, y, ldy, accumulate);
    case DType::BF16: return rows_impl<DType::BF16>(x, T, W, K, n0, n1, y, ldy, accumulate);
    case DType::F16: return rows_impl<DType::F16>(x, T, W, K, n0, n1, y, ldy, accumulate);
  }
  unknown_dtype("matmul_rows (avx2)", dt);
}

void matmul_t_cols(const float* x, int64_t T, const void* W, DType dt, int64_t K, int64_t N, int64_t n0,
                   int64_t n1, float* y) {
  switch (dt) {
    case DType::F32: return t_cols_impl<DType::F32>(x, T, W, K, N, n0, n1, y);
    case DType::BF16: return t_cols_impl<DType::BF16>(x, T, W, K, N, n0, n1, y);
    case DType::F16: return t_cols_impl<DType::F16>(x, T, W, K, N, n0, n1, y);
  }
  unknown_dtype("matmul_t_cols (avx2)", dt);
}

float dot_f32(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  const int64_t n8 = n & ~int64_t{7};
  for (int64_t k = 0; k < n8; k += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc);
  float s = hsum(acc);
  for (int64_t k = n8; k < n; ++k) s = fma1(a[k], b[k], s);
  return s;
}

void axpy_f32(float a, const float* x, float* y, int64_t n) {
  const __m256 av = _mm256_set1_ps(a);
  const int64_t n8 = n & ~int64_t{7};
  for (int64_t i = 0; i < n8; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (int64_t i = n8; i < n; ++i) y[i] = fma1(a, x[i], y[i]);
}

}  // namespace avx2
}  // namespace ew
