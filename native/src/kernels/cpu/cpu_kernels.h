// The CPU inner loops behind matmul.h and the other CPU kernels, one build per dispatch
// path, chosen at run time (cpu_paths.cc detects what the CPU and OS allow):
//   portable     C++ (any CPU)
//   avx2         AVX2/FMA/F16C (*_avx2.cc)
//   avx512       AVX-512 F/BW/VL/DQ, fp32 activations (*_avx512.cc)
//   avx512-bf16  avx512, but matmuls over bf16 weights round their activations to bf16 and
//                use AVX512_BF16 dot products (*_avx512bf16.cc)
//   amx          avx512-bf16 with the bf16 matmuls on AMX tiles (*_amx.cc)
// The default is the best path with fp32 activations (avx512 where the CPU has it);
// the two bf16 paths are an explicit choice (EW_CPU_PATH), because rounding activations
// changes the numbers (see README, "CPU kernels"). Within one path every output element's
// reduction order depends only on the reduction length, never on the batch, tiling or
// threads, so a token's results are bitwise the same alone or in any batch. Paths may
// differ from each other in the last bits (bf16 paths by the activation rounding).
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "util/tensor.h"

namespace ew {

enum class CpuPath : uint8_t { Portable, Avx2, Avx512, Avx512Bf16, Amx };

const char* cpu_path_name(CpuPath path);
// Every path this build has and this CPU (and OS) can run, Portable first (the tests run each).
const std::vector<CpuPath>& cpu_paths();
// The best of cpu_paths() with fp32 activations, unless EW_CPU_PATH names another one
// ("portable", "avx2", "avx512", "avx512-bf16", "amx"): then that one, or an ew::Error
// when this CPU or build cannot run it.
CpuPath cpu_path();
// The path parsed from a name (cpu_path_name), or an ew::Error naming what this CPU runs.
CpuPath cpu_path_named(const char* name);
// Whether the path's matmuls over bf16 weights round their activations to bf16.
inline bool rounds_activations(CpuPath p) { return p == CpuPath::Avx512Bf16 || p == CpuPath::Amx; }
// The path's fp32-activation twin: what matmul_exact (router logits) and every kernel that
// is not a bf16-weight matmul run on.
inline CpuPath exact_path(CpuPath p) { return rounds_activations(p) ? CpuPath::Avx512 : p; }
// Why amx is missing from cpu_paths() (no AMX, the OS refused the tile permission, not built),
// or "" when it is there: the tests say it when they skip.
const char* amx_unavailable_reason();
// A few-token matmul (decode) streams its weights one row at a time (one forward stream);
// this is what row n of rows [.., n1) of W (row_bytes each) prefetches as it goes: the same
// stream a fixed distance on, on Intel while that stays within row n1, else null (AMD, whose
// prefetchers do better alone). cpu_paths.cc has the figures. Results are the same either way.
const void* gemv_prefetch_ahead(const void* W, int64_t row_bytes, int64_t n, int64_t n1);
// Whether amx::matmul_rows_bf16_on_tile_model can run here (AMX kernels built, AVX512_BF16 CPU).
bool amx_tile_model_runs();

// The activations of one op as a path's multi-token matmul reads them, prepared once per op
// by prepare_activations: x rounded to bf16 [T, K] (avx512-bf16, bf16 weights), rounded and
// packed into tiles (amx, bf16 weights; packed only), or fp32 permuted into the order of
// the avx2 sums (avx2, from avx2::kByClassMinTokens tokens; see matmul_classes_avx2.cc).
// Empty elsewhere (the kernels read x as it is).
struct PreparedActivations {
  const uint16_t* rows = nullptr;
  const uint16_t* packed = nullptr;
  const float* by_class = nullptr;
};
// uint16_t elements of buffer prepare_activations needs for T rows of K (0 where the path
// reads x as it is); a multiple of 32, so buffers laid end to end stay 64-byte multiples.
int64_t prepared_activation_elems(CpuPath path, DType weights, int64_t T, int64_t K);
// may_share: the caller is not inside a pool loop, so a large packing may be shared among
// the pool's threads (token rows or tiles are packed independently).
PreparedActivations prepare_activations(CpuPath path, DType weights, const float* x, int64_t T, int64_t K,
                                        uint16_t* buffer, bool may_share = false);

// y[t, n] (+)= x[t, :] . W[n, :] for n in [n0, n1), t in [0, T); x row stride K, y row stride ldy.
// Where the path prepares activations (above), xb, when given, holds them prepared for these
// T tokens; without it the call prepares its own.
void matmul_rows(CpuPath path, const float* x, int64_t T, const void* W, DType dt, int64_t K,
                 int64_t n0, int64_t n1, float* y, int64_t ldy, bool accumulate = false,
                 const PreparedActivations* xb = nullptr);
// y[t, n] = sum_k x[t, k] * W[k, n] for n in [n0, n1) (W is [K, N] row-major, y row stride N),
// summed from 0 in ascending k one term at a time.
void matmul_t_cols(CpuPath path, const float* x, int64_t T, const void* W, DType dt, int64_t K,
                   int64_t N, int64_t n0, int64_t n1, float* y);
// Fixed-order dot product of two fp32 vectors.
float dot_f32(CpuPath path, const float* a, const float* b, int64_t n);
// y[i] += a * x[i]
void axpy_f32(CpuPath path, float a, const float* x, float* y, int64_t n);

// Attention's inner loops over block-paged cache rows (mla_attention.cc): rows[p] is a
// cache row of `dt` (F32 or BF16), read into fp32 arithmetic.
//   attn_scores: s[h * lds + p] = q[h * ldq : + width] . rows[p][:width] for h < nq, p < n,
//                each in dot_f32's order.
//   attn_values: o[h * ldo + i] += w[h * ldw + p] * rows[p][i] for h < nq, i < R, summed over
//                p ascending (axpy_f32's order per element).
//   exp_sum:     x[i] = exp(x[i] - mx) for i < n; returns their sum in a fixed order.
void attn_scores(CpuPath path, const float* q, int64_t ldq, int64_t nq, const void* const* rows, DType dt,
                 int64_t n, int64_t width, float* s, int64_t lds);
void attn_values(CpuPath path, const float* w, int64_t ldw, int64_t nq, const void* const* rows, DType dt,
                 int64_t n, int64_t R, float* o, int64_t ldo);
float exp_sum(CpuPath path, float* x, int64_t n, float mx);
// out[i] = silu(g[i]) * u[i] (out may be g): the scalar silu below on the fp32 paths, a vector
// exp on the bf16 paths (elementwise_avx512bf16.cc).
void silu_mul_rows(CpuPath path, const float* g, const float* u, int64_t n, float* out);

// Rows per ThreadPool::parallel_chunks chunk for a loop over `rows` weight rows of
// `row_bytes` each, applied to `tokens` tokens: large enough to amortise claiming a
// chunk, small enough that the threads finish together (a few chunks per thread, at
// most ~128 KB of weights), in whole register tiles of the path.
int64_t rows_per_chunk(int64_t rows, int64_t row_bytes, int64_t tokens, CpuPath path = CpuPath::Portable);

// The builds of the loops above; every fp32 path has the whole set (the bf16 paths reuse
// avx512's, plus their own bf16 matmul).
#define EW_CPU_KERNEL_SET                                                                                  \
  void matmul_rows(const float* x, int64_t T, const void* W, DType dt, int64_t K, int64_t n0, int64_t n1, \
                   float* y, int64_t ldy, bool accumulate);                                                \
  void matmul_t_cols(const float* x, int64_t T, const void* W, DType dt, int64_t K, int64_t N, int64_t n0, \
                     int64_t n1, float* y);                                                                \
  float dot_f32(const float* a, const float* b, int64_t n);                                                \
  void axpy_f32(float a, const float* x, float* y, int64_t n);                                             \
  void attn_scores(const float* q, int64_t ldq, int64_t nq, const void* const* rows, DType dt, int64_t n,  \
                   int64_t width, float* s, int64_t lds);                                                  \
  void attn_values(const float* w, int64_t ldw, int64_t nq, const void* const* rows, DType dt, int64_t n,  \
                   int64_t R, float* o, int64_t ldo);                                                      \
  float exp_sum(float* x, int64_t n, float mx);
namespace portable {
EW_CPU_KERNEL_SET
}
namespace avx2 {
EW_CPU_KERNEL_SET
// The multi-token matmul as a broadcast GEMM with matmul_rows' sums bit for bit
// (matmul_classes_avx2.cc), from this many tokens (below, widening each weight panel
// costs more than the faster tiles save).
constexpr int64_t kByClassMinTokens = 32;
// x [T, K] permuted into the order of the sums (xp [T, K]).
void pack_by_class(const float* x, int64_t T, int64_t K, float* xp);
// Rows from n0 in whole groups of 24, then one of 16 and one of 8 where they fit, from
// pack_by_class's xp; returns the first row it left (fewer than 8 before n1) for matmul_rows.
int64_t matmul_rows_by_class(const float* xp, int64_t T, const void* W, DType dt, int64_t K, int64_t n0,
                             int64_t n1, float* y, int64_t ldy, bool accumulate);
}
namespace avx512 {
EW_CPU_KERNEL_SET
}
#undef EW_CPU_KERNEL_SET
namespace avx512bf16 {
// y[t, n] (+)= xb[t, :] . W[n, :] over bf16 xb [T, K] and bf16 W, fp32 accumulation.
void matmul_rows_bf16(const uint16_t* xb, int64_t T, const uint16_t* W, int64_t K, int64_t n0, int64_t n1,
                      float* y, int64_t ldy, bool accumulate);
void round_to_bf16(const float* x, int64_t n, uint16_t* out);
void silu_mul(const float* g, const float* u, int64_t n, float* out);
}  // namespace avx512bf16
namespace amx {
// Requests the tile-data permission from the OS (Linux arch_prctl); true when granted.
bool request_tile_permission();
// The same product on AMX tiles. xp: the activations rounded and packed by pack_activations
// (tiles of 16 tokens in the VNNI layout); scratch: scratch_elems(K) bf16 for partial row tiles.
int64_t packed_activation_elems(int64_t T, int64_t K);
// Token tiles [tt0, tt1) of the T tokens (tt1 < 0: through the last), each packed on its own.
int64_t token_tiles(int64_t T);
void pack_activations(const float* x, int64_t T, int64_t K, uint16_t* xp, int64_t tt0 = 0, int64_t tt1 = -1);
int64_t scratch_elems(int64_t K);
void matmul_rows_bf16(const uint16_t* xp, int64_t T, const uint16_t* W, int64_t K, int64_t n0, int64_t n1,
                      float* y, int64_t ldy, bool accumulate, uint16_t* scratch);
// Tests: the same kernel on a software model of the tiles (runs on any CPU with AVX-512:
// the file is built for it), so the tile logic is checked where no AMX exists.
void matmul_rows_bf16_on_tile_model(const uint16_t* xp, int64_t T, const uint16_t* W, int64_t K, int64_t n0,
                                    int64_t n1, float* y, int64_t ldy, bool accumulate, uint16_t* scratch);
}  // namespace amx

// Scalar conversions used by the portable path and by the non-matmul kernels.
inline float bf16_to_f32(uint16_t h) {
  union {
    uint32_t u;
    float f;
  } v{static_cast<uint32_t>(h) << 16};
  return v.f;
}
float f16_to_f32(uint16_t h);
// fp32 -> bf16 rounded to nearest even (NaN stays a quiet NaN), as CUDA's __float2bfloat16_rn
// and as vcvtneps2bf16 for normal inputs (that instruction, and so avx512bf16::round_to_bf16,
// flushes fp32 denormals to zero; this keeps them).
inline uint16_t f32_to_bf16(float f) {
  union {
    float f;
    uint32_t u;
  } v{f};
  if ((v.u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((v.u >> 16) | 0x40u);
  return static_cast<uint16_t>((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}
// Throws ew::Error: a DType value no kernel knows (a switch over DType fell through).
[[noreturn]] void unknown_dtype(const char* where, DType dt);
// Element i of a stored tensor as fp32.
inline float load_as_f32(const void* data, DType dt, int64_t i) {
  switch (dt) {
    case DType::F32: return static_cast<const float*>(data)[i];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(data)[i]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(data)[i]);
  }
  unknown_dtype("load_as_f32", dt);
}
// x * sigmoid(x), as every CPU kernel computes it.
inline float silu(float x) { return x / (1.f + std::exp(-x)); }

// Converts n elements starting at element `first` into out.
void convert_to_f32(const void* data, DType dt, int64_t first, int64_t n, float* out);

}  // namespace ew
