// The dispatch of the CPU inner loops (cpu_kernels.h) to a path's build, the bf16 paths'
// activation rounding and packing, and the row-chunk sizes of the loops over the pool.
#include <algorithm>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "util/error.h"
#include "util/thread_pool.h"

namespace ew {

namespace {

[[noreturn]] void not_built(CpuPath path) { fail("CPU path ", cpu_path_name(path), " is not in this build"); }

// The fp32 loops of a path (the bf16 paths' fp32 twin is avx512).
#define EW_DISPATCH(path, fn, ...)                                        \
  do {                                                                    \
    switch (exact_path(path)) {                                           \
      case CpuPath::Portable: return portable::fn(__VA_ARGS__);           \
      case CpuPath::Avx2: EW_IF_AVX2(return avx2::fn(__VA_ARGS__));       \
      case CpuPath::Avx512: EW_IF_AVX512(return avx512::fn(__VA_ARGS__)); \
      default: break;                                                     \
    }                                                                     \
    not_built(path);                                                      \
  } while (0)
#ifdef EW_HAVE_AVX2_KERNELS
#define EW_IF_AVX2(stmt) stmt
#else
#define EW_IF_AVX2(stmt) break
#endif
#ifdef EW_HAVE_AVX512_KERNELS
#define EW_IF_AVX512(stmt) stmt
#else
#define EW_IF_AVX512(stmt) break
#endif

uint16_t* grow(std::vector<uint16_t>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// avx2 from kByClassMinTokens tokens: activations permuted for the by-class kernel.
bool prepares_by_class(CpuPath path, int64_t T, int64_t K) {
  return path == CpuPath::Avx2 && T >= avx2::kByClassMinTokens && K > 0;
}

}  // namespace

int64_t prepared_activation_elems(CpuPath path, DType weights, int64_t T, int64_t K) {
  if (prepares_by_class(path, T, K)) return round_up(2 * T * K, 32);  // fp32
  if (!rounds_activations(path) || weights != DType::BF16 || T <= 0 || K <= 0) return 0;
#ifdef EW_HAVE_AMX_KERNELS
  if (path == CpuPath::Amx) return round_up(amx::packed_activation_elems(T, K), 32);  // packed only: the tiles read nothing else
#endif
  return round_up(T * K, 32);
}

PreparedActivations prepare_activations(CpuPath path, DType weights, const float* x, int64_t T, int64_t K,
                                        uint16_t* buffer, bool may_share) {
  PreparedActivations a;
  if (prepared_activation_elems(path, weights, T, K) == 0) return a;
  if (prepares_by_class(path, T, K)) {
#ifdef EW_HAVE_AVX2_KERNELS
    float* xp = reinterpret_cast<float*>(buffer);
    if (may_share)
      ThreadPool::global().parallel_for(T, [&](int64_t b, int64_t e) { avx2::pack_by_class(x + b * K, e - b, K, xp + b * K); });
    else
      avx2::pack_by_class(x, T, K, xp);
    a.by_class = xp;
    return a;
#else
    not_built(path);
#endif
  }
#ifdef EW_HAVE_AVX512_KERNELS
#ifdef EW_HAVE_AMX_KERNELS
  if (path == CpuPath::Amx) {
    const int64_t tiles = amx::token_tiles(T);
    if (may_share && tiles >= 4)
      ThreadPool::global().parallel_for(tiles, [&](int64_t b, int64_t e) { amx::pack_activations(x, T, K, buffer, b, e); });
    else
      amx::pack_activations(x, T, K, buffer);
    a.packed = buffer;
    return a;
  }
#endif
  avx512bf16::round_to_bf16(x, T * K, buffer);
  a.rows = buffer;
  return a;
#else
  (void)x;
  (void)buffer;
  (void)may_share;
  not_built(path);
#endif
}

namespace {
// The activations of xb, or prepared here in this thread's buffer (own) when the caller has none.
const PreparedActivations* prepared_or_own(CpuPath path, DType dt, const float* x, int64_t T, int64_t K,
                                           const PreparedActivations* xb, PreparedActivations& own) {
  if (xb) return xb;
  thread_local std::vector<uint16_t> buf;
  own = prepare_activations(path, dt, x, T, K, grow(buf, prepared_activation_elems(path, dt, T, K)));
  return &own;
}
}  // namespace

void matmul_rows(CpuPath path, const float* x, int64_t T, const void* W, DType dt, int64_t K, int64_t n0,
                 int64_t n1, float* y, int64_t ldy, bool accumulate, const PreparedActivations* xb) {
  PreparedActivations own;
#ifdef EW_HAVE_AVX2_KERNELS
  if (prepares_by_class(path, T, K) && n1 - n0 >= 8) {
    xb = prepared_or_own(path, dt, x, T, K, xb, own);
    if (xb->by_class) n0 = avx2::matmul_rows_by_class(xb->by_class, T, W, dt, K, n0, n1, y, ldy, accumulate);
    if (n0 == n1) return;
  }
#endif
  if (rounds_activations(path) && dt == DType::BF16 && T > 0 && n1 > n0) {
#ifdef EW_HAVE_AVX512_KERNELS
    xb = prepared_or_own(path, dt, x, T, K, xb, own);
    const uint16_t* w = static_cast<const uint16_t*>(W);
#ifdef EW_HAVE_AMX_KERNELS
    if (path == CpuPath::Amx) {
      thread_local std::vector<uint16_t> scratch;
      return amx::matmul_rows_bf16(xb->packed, T, w, K, n0, n1, y, ldy, accumulate,
                                   grow(scratch, amx::scratch_elems(K)));
    }
#endif
    return avx512bf16::matmul_rows_bf16(xb->rows, T, w, K, n0, n1, y, ldy, accumulate);
#else
    not_built(path);
#endif
  }
  EW_DISPATCH(path, matmul_rows, x, T, W, dt, K, n0, n1, y, ldy, accumulate);
}
void matmul_t_cols(CpuPath path, const float* x, int64_t T, const void* W, DType dt, int64_t K, int64_t N,
                   int64_t n0, int64_t n1, float* y) {
  EW_DISPATCH(path, matmul_t_cols, x, T, W, dt, K, N, n0, n1, y);
}
float dot_f32(CpuPath path, const float* a, const float* b, int64_t n) { EW_DISPATCH(path, dot_f32, a, b, n); }
void axpy_f32(CpuPath path, float a, const float* x, float* y, int64_t n) {
  EW_DISPATCH(path, axpy_f32, a, x, y, n);
}
void attn_scores(CpuPath path, const float* q, int64_t ldq, int64_t nq, const void* const* rows, DType dt,
                 int64_t n, int64_t width, float* s, int64_t lds) {
  if (dt != DType::F32 && dt != DType::BF16) unknown_dtype("attn_scores (cache rows)", dt);
  EW_DISPATCH(path, attn_scores, q, ldq, nq, rows, dt, n, width, s, lds);
}
void attn_values(CpuPath path, const float* w, int64_t ldw, int64_t nq, const void* const* rows, DType dt,
                 int64_t n, int64_t R, float* o, int64_t ldo) {
  if (dt != DType::F32 && dt != DType::BF16) unknown_dtype("attn_values (cache rows)", dt);
  EW_DISPATCH(path, attn_values, w, ldw, nq, rows, dt, n, R, o, ldo);
}
float exp_sum(CpuPath path, float* x, int64_t n, float mx) { EW_DISPATCH(path, exp_sum, x, n, mx); }
void silu_mul_rows(CpuPath path, const float* g, const float* u, int64_t n, float* out) {
#ifdef EW_HAVE_AVX512_KERNELS
  if (rounds_activations(path)) return avx512bf16::silu_mul(g, u, n, out);
#endif
  for (int64_t i = 0; i < n; ++i) out[i] = silu(g[i]) * u[i];
}

int64_t rows_per_chunk(int64_t rows, int64_t row_bytes, int64_t tokens, CpuPath path) {
  // Prefetchers pay a ramp-up at every jump to another stretch of weights, so a decode chunk
  // is a long stretch: 512 KB instead of 128 KB made a V2-Lite-width decode step 1.06x faster
  // on avx512 and 1.2x on avx512-bf16 on the Xeon with AMX (amx unchanged); on AMD Zen 4 the
  // routed experts of a decode step 1.05-1.3x faster (a 104 MB MoE pass, both sizes
  // interleaved in one process) and the step 1.01-1.11x; on Zen 3 it measured no better.
  constexpr int64_t kMaxBytes = 512 << 10, kMinBytes = 16 << 10;
  constexpr int64_t kMaxMacs = 2 << 20;  // ~0.1 ms of compute-bound work (prefill)
  const int64_t threads = ThreadPool::global().size();
  // Work per row in bytes x tokens: about one multiply-add per weight byte (bf16).
  const int64_t bytes = std::max<int64_t>(1, row_bytes), macs = bytes * std::max<int64_t>(1, tokens);
  int64_t r = std::min({kMaxBytes / bytes, kMaxMacs / macs, (rows + 4 * threads - 1) / (4 * threads)});
  r = std::max(r, std::min(kMinBytes / bytes, kMaxMacs / macs));
  // Whole register tiles of rows in a chunk: 4 (avx2's chain tiles, avx512), 16 (amx); avx2's
  // by-class tiles of 24 rows (a chunk's weights are widened into a panel each) at least one.
  if (prepares_by_class(path, tokens, 1)) return std::max<int64_t>(24, round_up(r, 24));
  const int64_t tile = path == CpuPath::Amx ? 16 : 4;
  if (tokens > 1 || path == CpuPath::Amx) r = std::max<int64_t>(4 * tile, round_up(r, tile));
  else if (path == CpuPath::Avx512 || path == CpuPath::Avx512Bf16) r = round_up(r, tile);
  return std::max<int64_t>(1, r);
}

}  // namespace ew
