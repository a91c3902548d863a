// The amx path's matmul (cpu_kernels.h): bf16 activations against bf16 weights on AMX tiles
// (TDPBF16PS: a 16 x 16 fp32 tile += 16 x 32 bf16 . 32 x 16 bf16). Compiled with -mamx-tile
// -mamx-bf16 and the avx512 flags; only reached after cpu_paths() saw AMX-TILE, AMX-BF16, the
// OS's tile state in XCR0 and the tile-data permission (arch_prctl).
//
// Run and tested on an Intel Xeon with AMX-BF16 (the C++ suite and the float64-reference
// suites rerun on this path there); the tile logic (packing, tails, row groups,
// accumulation) is also tested on a software model of the tiles that follows the
// instruction's documented semantics (native/tests/kernels_test.cc), so CPUs without AMX
// but with AVX512_BF16 check it too.
//
// Layout: y^T = W . x^T, so the weights are the A operand in their stored layout (a tile
// row = 32 consecutive bf16 of one weight row, stride K) and nothing is repacked at load;
// the activations are the B operand, packed per call into VNNI order (a tile row = one
// k-pair for 16 tokens). Every output element (row, token) is the tiles' sum over k-blocks
// in ascending order, computed the same way whatever the batch: a token's column in a
// B tile does not affect another column, missing tokens and rows are zero padding, and a
// K that is no multiple of 32 is zero-padded too (a row group copied to scratch).
// GCC 12's AVX-512 intrinsics (_mm512_undefined_ps inside casts and extracts) trip a
// false -Wuninitialized (GCC bug 105593, fixed in 13).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/cpu_kernels.h"

namespace ew {
namespace amx {
namespace {

constexpr int64_t kRows = 16, kTokens = 16, kBlock = 32;  // a tile: 16 rows, 32 bf16 of k

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// No inline or template function that other files also use is instantiated here (the
// linker could keep this file's AMX/AVX-512 copy for everyone).

// The real tiles: C00, C01, C10, C11 in tmm0-3 (row group r, token tile t), A0, A1 in tmm4, tmm5,
// B0, B1 in tmm6, tmm7 (GCC's _tile_* macros paste the register number into the instruction,
// so each use names its own).
struct HardwareTiles {
  struct alignas(64) Config {
    uint8_t palette_id = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
  };
  static void configure() {
    Config c;
    for (int i = 0; i < 8; ++i) {
      c.rows[i] = kRows;
      c.colsb[i] = 64;  // 16 fp32 (C), 32 bf16 (A), 16 tokens x 2 bf16 (B)
    }
    _tile_loadconfig(&c);
  }
  static void release() { _tile_release(); }
  static void zero(int c) {
    switch (c) {
      case 0: _tile_zero(0); break;
      case 1: _tile_zero(1); break;
      case 2: _tile_zero(2); break;
      default: _tile_zero(3); break;
    }
  }
  static void load_a(int i, const void* p, int64_t stride) {
    if (i == 0) _tile_loadd(4, p, stride);
    else _tile_loadd(5, p, stride);
  }
  static void load_b(int i, const void* p, int64_t stride) {
    if (i == 0) _tile_loadd(6, p, stride);
    else _tile_loadd(7, p, stride);
  }
  static void dot(int r, int t) {  // C[r][t] += A[r] . B[t]
    switch (2 * r + t) {
      case 0: _tile_dpbf16ps(0, 4, 6); break;
      case 1: _tile_dpbf16ps(1, 4, 7); break;
      case 2: _tile_dpbf16ps(2, 5, 6); break;
      default: _tile_dpbf16ps(3, 5, 7); break;
    }
  }
  static void store(int c, void* p, int64_t stride) {
    switch (c) {
      case 0: _tile_stored(0, p, stride); break;
      case 1: _tile_stored(1, p, stride); break;
      case 2: _tile_stored(2, p, stride); break;
      default: _tile_stored(3, p, stride); break;
    }
  }
};

// A software model of the same tiles (tests): TDPBF16PS as the SDM writes it, per C[m][n]
// over the dword k: += a[m][2k] * b[k][2n], then += a[m][2k+1] * b[k][2n+1], in fp32.
struct ModelTiles {
  static thread_local unsigned char reg[8][16][64];
  static void configure() { std::memset(reg, 0, sizeof reg); }
  static void release() {}
  static void zero(int c) { std::memset(reg[c], 0, sizeof reg[c]); }
  static void load(int t, const void* p, int64_t stride) {
    for (int r = 0; r < 16; ++r) std::memcpy(reg[t][r], static_cast<const char*>(p) + r * stride, 64);
  }
  static void load_a(int i, const void* p, int64_t stride) { load(4 + i, p, stride); }
  static void load_b(int i, const void* p, int64_t stride) { load(6 + i, p, stride); }
  static float bf(const unsigned char* row, int i) {  // bf16 element i of a row, as fp32
    uint16_t h;
    std::memcpy(&h, row + 2 * i, 2);
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  static void dot(int r, int t) {
    const int C = 2 * r + t, A = 4 + r, B = 6 + t;
    for (int m = 0; m < 16; ++m)
      for (int k = 0; k < 16; ++k)
        for (int n = 0; n < 16; ++n) {
          float c;
          std::memcpy(&c, reg[C][m] + 4 * n, 4);
          c += bf(reg[A][m], 2 * k) * bf(reg[B][k], 2 * n);
          c += bf(reg[A][m], 2 * k + 1) * bf(reg[B][k], 2 * n + 1);
          std::memcpy(reg[C][m] + 4 * n, &c, 4);
        }
  }
  static void store(int c, void* p, int64_t stride) {
    for (int r = 0; r < 16; ++r) std::memcpy(static_cast<char*>(p) + r * stride, reg[c][r], 64);
  }
};
thread_local unsigned char ModelTiles::reg[8][16][64];

// Transposes 16 x 16 32-bit lanes in registers (the usual four unpack/shuffle stages):
// afterwards r[j] holds lane j of every input vector.
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 16; i += 8)
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
  }
}

// A C tile (c[row][token], 16 x 16 fp32) into y^T: token t's outputs for the tile's rows are
// contiguous in y (y[t * ldy + r]), so the tile is transposed in registers and each token's
// row stored with a mask for the rows present, not written element by element (that scalar
// transpose cost about as much as the dots for a tile of few tokens). Accumulation adds the
// tile's values to y as before.
inline void store_transposed(const float (*c)[kTokens], int64_t rows, int64_t tokens, float* y, int64_t ldy,
                             bool accum) {
  __m512 r[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_load_ps(c[i]);
  transpose16(r);
  const __mmask16 m = rows >= 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << rows) - 1);
  for (int64_t t = 0; t < tokens; ++t) {
    float* out = y + t * ldy;
    _mm512_mask_storeu_ps(out, m, accum ? _mm512_add_ps(_mm512_maskz_loadu_ps(m, out), r[t]) : r[t]);
  }
}

// A block of one or two 16-row groups (group g: rows[g] rows at a[g], row stride lda[g] bytes;
// rows[1] == 0: one group) against every token tile of xp, two token tiles at a time, so each
// A tile load feeds up to two dots and each B tile load up to two (up to four C tiles in
// flight instead of one dependent chain). K2 = padded K / 2 pairs. Every C element is still
// the sum over k-blocks in ascending order, whichever block it sits in: the results are those
// of one group and one token tile at a time. (Software prefetch of the next block's weights
// was tried: within 1% either way, so the hardware prefetcher is left to it.)
template <typename Tiles>
void row_block(const uint16_t* const a[2], const int64_t lda[2], const int64_t rows[2], const uint16_t* xp,
               int64_t K2, int64_t T, int64_t n, float* y, int64_t ldy, bool accum) {
  alignas(64) float c[kRows][kTokens];
  const int64_t n_blocks = K2 / 16, n_tt = (T + kTokens - 1) / kTokens;
  const int groups = rows[1] > 0 ? 2 : 1;
  auto flush = [&](int g, int64_t tt) {
    const int64_t t0 = tt * kTokens, tn = T - t0 < kTokens ? T - t0 : kTokens;
    store_transposed(c, rows[g], tn, y + t0 * ldy + n + g * kRows, ldy, accum);
  };
  for (int64_t tt = 0; tt < n_tt; tt += 2) {
    const int tiles = tt + 1 < n_tt ? 2 : 1;
    const uint16_t* b = xp + tt * K2 * 2 * kTokens;
    for (int g = 0; g < groups; ++g)
      for (int t = 0; t < tiles; ++t) Tiles::zero(2 * g + t);
    for (int64_t kb = 0; kb < n_blocks; ++kb) {
      for (int t = 0; t < tiles; ++t) Tiles::load_b(t, b + t * K2 * 2 * kTokens + kb * 16 * 2 * kTokens, 64);
      for (int g = 0; g < groups; ++g) {
        Tiles::load_a(g, reinterpret_cast<const char*>(a[g]) + kb * 64, lda[g]);
        for (int t = 0; t < tiles; ++t) Tiles::dot(g, t);
      }
    }
    for (int g = 0; g < groups; ++g)
      for (int t = 0; t < tiles; ++t) {
        Tiles::store(2 * g + t, c, 64);
        flush(g, tt + t);
      }
  }
}

template <typename Tiles>
void rows_impl(const uint16_t* xp, int64_t T, const uint16_t* W, int64_t K, int64_t n0, int64_t n1, float* y,
               int64_t ldy, bool accum, uint16_t* scratch) {
  const int64_t Kp = round_up(K, kBlock), K2 = Kp / 2;
  Tiles::configure();
  // One 16-row group per block for a single token (a batch-1 decode GEMV): 16 weight rows
  // streamed at a time instead of 32 measured 2.5-3% faster per V2-Lite-width decode step;
  // with more tokens the second group's tiles share each B load (one group: 1-4% slower).
  const int ng = T == 1 ? 1 : 2;
  for (int64_t n = n0; n < n1; n += ng * kRows) {
    const uint16_t* a[2] = {nullptr, nullptr};
    int64_t lda[2] = {0, 0}, rows[2] = {0, 0};
    for (int g = 0; g < ng; ++g) {
      const int64_t first = n + g * kRows, left = n1 - first;
      if (left <= 0) break;
      rows[g] = left < kRows ? left : kRows;
      if (rows[g] == kRows && Kp == K) {
        a[g] = W + first * K;
        lda[g] = K * 2;
      } else {  // a partial group or a K tail: a zero-padded copy, the same sums
        uint16_t* s = scratch + g * kRows * Kp;
        std::memset(s, 0, static_cast<size_t>(kRows * Kp) * 2);
        for (int64_t r = 0; r < rows[g]; ++r) std::memcpy(s + r * Kp, W + (first + r) * K, static_cast<size_t>(K) * 2);
        a[g] = s;
        lda[g] = Kp * 2;
      }
    }
    row_block<Tiles>(a, lda, rows, xp, K2, T, n, y, ldy, accum);
  }
  Tiles::release();
}

}  // namespace

int64_t packed_activation_elems(int64_t T, int64_t K) {
  return round_up(T, kTokens) * round_up(K, kBlock);
}

int64_t token_tiles(int64_t T) { return (T + kTokens - 1) / kTokens; }

// xp[token tile][k pair][token in tile][2]: x rounded to bf16 (vcvtne2ps2bf16, as the
// avx512-bf16 path rounds), zero for tokens >= T and k >= K. Per 16 tokens and 32 k: each
// token's 32 values become 16 bf16 pairs (one 32-bit lane each), and a 16 x 16 lane
// transpose turns those into the 16 k-pair rows of the B tile.
void pack_activations(const float* x, int64_t T, int64_t K, uint16_t* xp, int64_t tt0, int64_t tt1) {
  const int64_t K2 = round_up(K, kBlock) / 2, n_kb = K2 / 16;
  if (tt1 < 0) tt1 = token_tiles(T);
  for (int64_t tt = tt0; tt < tt1; ++tt) {
    const int64_t tokens = T - tt * kTokens < kTokens ? T - tt * kTokens : kTokens;
    uint16_t* tile = xp + tt * K2 * 2 * kTokens;
    for (int64_t kb = 0; kb < n_kb; ++kb) {
      const int64_t k = kb * kBlock, left = K - k;
      const __mmask16 lo = left >= 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << left) - 1);
      const __mmask16 hi = left >= 32 ? __mmask16{0xFFFF} : left <= 16 ? __mmask16{0} : static_cast<__mmask16>((1u << (left - 16)) - 1);
      __m512 r[16];
      for (int64_t i = 0; i < 16; ++i) {
        if (i >= tokens) {
          r[i] = _mm512_setzero_ps();
          continue;
        }
        const float* src = x + (tt * kTokens + i) * K + k;
        r[i] = _mm512_castsi512_ps((__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, src + 16), _mm512_maskz_loadu_ps(lo, src)));
      }
      transpose16(r);
      for (int j = 0; j < 16; ++j) _mm512_storeu_ps(tile + (kb * 16 + j) * 2 * kTokens, r[j]);
    }
  }
}

int64_t scratch_elems(int64_t K) { return 2 * kRows * round_up(K, kBlock); }

void matmul_rows_bf16(const uint16_t* xp, int64_t T, const uint16_t* W, int64_t K, int64_t n0, int64_t n1, float* y,
                      int64_t ldy, bool accumulate, uint16_t* scratch) {
  rows_impl<HardwareTiles>(xp, T, W, K, n0, n1, y, ldy, accumulate, scratch);
}

void matmul_rows_bf16_on_tile_model(const uint16_t* xp, int64_t T, const uint16_t* W, int64_t K, int64_t n0,
                                    int64_t n1, float* y, int64_t ldy, bool accumulate, uint16_t* scratch) {
  rows_impl<ModelTiles>(xp, T, W, K, n0, n1, y, ldy, accumulate, scratch);
}

}  // namespace amx
}  // namespace ew
