// The amx path's matmul (cpu_kernels.h): bf16 activations against bf16 weights on AMX tiles
// (TDPBF16PS: a 16 x 16 fp32 tile += 16 x 32 bf16 . 32 x 16 bf16). Compiled with -mamx-tile
// -mamx-bf16 and the avx512 flags; only reached after cpu_paths() saw AMX-TILE, AMX-BF16, the
// OS's tile state in XCR0 and the tile-data permission (arch_prctl).
//
// NEVER RUN: no machine this was written on has AMX. The tile logic (packing, tails, row
// groups, accumulation) is tested here on a software model of the tiles that follows the
// instruction's documented semantics (native/tests/kernels_test.cc); the real instructions,
// the tile configuration and the permission request are untested until a Sapphire Rapids
// (or later) host runs the suite, where EW_CPU_PATH=amx reruns it.
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

// The real tiles: C0, C1 in tmm0, tmm1, A in tmm4, B0, B1 in tmm6, tmm7 (GCC's _tile_*
// macros paste the register number into the instruction, so each use names its own).
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
  static void zero_c0() { _tile_zero(0); }
  static void zero_c1() { _tile_zero(1); }
  static void load_a(const void* p, int64_t stride) { _tile_loadd(4, p, stride); }
  static void load_b0(const void* p, int64_t stride) { _tile_loadd(6, p, stride); }
  static void load_b1(const void* p, int64_t stride) { _tile_loadd(7, p, stride); }
  static void dot_c0() { _tile_dpbf16ps(0, 4, 6); }
  static void dot_c1() { _tile_dpbf16ps(1, 4, 7); }
  static void store_c0(void* p, int64_t stride) { _tile_stored(0, p, stride); }
  static void store_c1(void* p, int64_t stride) { _tile_stored(1, p, stride); }
};

// A software model of the same tiles (tests): TDPBF16PS as the SDM writes it, per C[m][n]
// over the dword k: += a[m][2k] * b[k][2n], then += a[m][2k+1] * b[k][2n+1], in fp32.
struct ModelTiles {
  static thread_local unsigned char reg[8][16][64];
  static void configure() { std::memset(reg, 0, sizeof reg); }
  static void release() {}
  static void zero_c0() { std::memset(reg[0], 0, sizeof reg[0]); }
  static void zero_c1() { std::memset(reg[1], 0, sizeof reg[1]); }
  static void load(int t, const void* p, int64_t stride) {
    for (int r = 0; r < 16; ++r) std::memcpy(reg[t][r], static_cast<const char*>(p) + r * stride, 64);
  }
  static void load_a(const void* p, int64_t stride) { load(4, p, stride); }
  static void load_b0(const void* p, int64_t stride) { load(6, p, stride); }
  static void load_b1(const void* p, int64_t stride) { load(7, p, stride); }
  static float bf(const unsigned char* row, int i) {  // bf16 element i of a row, as fp32
    uint16_t h;
    std::memcpy(&h, row + 2 * i, 2);
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  static void dot(int C, int A, int B) {
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
  static void dot_c0() { dot(0, 4, 6); }
  static void dot_c1() { dot(1, 4, 7); }
  static void store(int t, void* p, int64_t stride) {
    for (int r = 0; r < 16; ++r) std::memcpy(static_cast<char*>(p) + r * stride, reg[t][r], 64);
  }
  static void store_c0(void* p, int64_t stride) { store(0, p, stride); }
  static void store_c1(void* p, int64_t stride) { store(1, p, stride); }
};
thread_local unsigned char ModelTiles::reg[8][16][64];

// One 16-row group (A rows at `a`, row stride lda bytes, K2 = padded K / 2 pairs) against
// the token tiles [tt0, tt1) of xp; C tiles hold 16 rows x 16 tokens, stored to y^T.
template <typename Tiles>
void row_group(const uint16_t* a, int64_t lda, const uint16_t* xp, int64_t K2, int64_t T, int64_t n,
               int64_t rows, float* y, int64_t ldy, bool accum) {
  alignas(64) float c[2][kRows][kTokens];
  const int64_t n_blocks = K2 / 16, n_tt = (T + kTokens - 1) / kTokens;
  auto flush = [&](int which, int64_t tt) {
    const int64_t t0 = tt * kTokens, tn = T - t0 < kTokens ? T - t0 : kTokens;
    for (int64_t t = 0; t < tn; ++t)
      for (int64_t r = 0; r < rows; ++r) {
        float* out = y + (t0 + t) * ldy + n + r;
        *out = accum ? *out + c[which][r][t] : c[which][r][t];
      }
  };
  for (int64_t tt = 0; tt < n_tt; tt += 2) {
    const bool two = tt + 1 < n_tt;
    const uint16_t* b0 = xp + tt * K2 * 2 * kTokens;
    const uint16_t* b1 = b0 + K2 * 2 * kTokens;
    Tiles::zero_c0();
    if (two) Tiles::zero_c1();
    for (int64_t kb = 0; kb < n_blocks; ++kb) {
      Tiles::load_a(reinterpret_cast<const char*>(a) + kb * 64, lda);
      Tiles::load_b0(b0 + kb * 16 * 2 * kTokens, 64);
      Tiles::dot_c0();
      if (two) {
        Tiles::load_b1(b1 + kb * 16 * 2 * kTokens, 64);
        Tiles::dot_c1();
      }
    }
    Tiles::store_c0(c[0], 64);
    flush(0, tt);
    if (two) {
      Tiles::store_c1(c[1], 64);
      flush(1, tt + 1);
    }
  }
}

template <typename Tiles>
void rows_impl(const uint16_t* xp, int64_t T, const uint16_t* W, int64_t K, int64_t n0, int64_t n1, float* y,
               int64_t ldy, bool accum, uint16_t* scratch) {
  const int64_t Kp = round_up(K, kBlock), K2 = Kp / 2;
  Tiles::configure();
  for (int64_t n = n0; n < n1; n += kRows) {
    const int64_t rows = n1 - n < kRows ? n1 - n : kRows;
    if (rows == kRows && Kp == K) {
      row_group<Tiles>(W + n * K, K * 2, xp, K2, T, n, rows, y, ldy, accum);
    } else {  // a partial group or a K tail: zero-padded copy, the same sums
      std::memset(scratch, 0, static_cast<size_t>(kRows * Kp) * 2);
      for (int64_t r = 0; r < rows; ++r) std::memcpy(scratch + r * Kp, W + (n + r) * K, static_cast<size_t>(K) * 2);
      row_group<Tiles>(scratch, Kp * 2, xp, K2, T, n, rows, y, ldy, accum);
    }
  }
  Tiles::release();
}

}  // namespace

int64_t packed_activation_elems(int64_t T, int64_t K) {
  return round_up(T, kTokens) * round_up(K, kBlock);
}

// xp[token tile][k pair][token in tile][2]: zero for tokens >= T and k >= K.
void pack_activations(const uint16_t* xb, int64_t T, int64_t K, uint16_t* xp) {
  const int64_t K2 = round_up(K, kBlock) / 2, n_tt = (T + kTokens - 1) / kTokens;
  std::memset(xp, 0, static_cast<size_t>(packed_activation_elems(T, K)) * 2);
  for (int64_t tt = 0; tt < n_tt; ++tt)
    for (int64_t i = 0; i < kTokens && tt * kTokens + i < T; ++i) {
      const uint16_t* src = xb + (tt * kTokens + i) * K;
      uint16_t* dst = xp + tt * K2 * 2 * kTokens + 2 * i;
      for (int64_t k = 0; k < K; ++k) dst[(k / 2) * 2 * kTokens + (k & 1)] = src[k];
    }
}

int64_t scratch_elems(int64_t K) { return kRows * round_up(K, kBlock); }

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
