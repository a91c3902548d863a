// matmul.h on the CPU: picks the AVX2 or portable inner loops once per process and
// shares the output rows (or columns) among the global pool's threads. Sharing only
// decides who computes an element, never how, so results are thread-count independent.
#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "kernels/cpu/cpu_kernels.h"
#include "util/error.h"
#include "util/thread_pool.h"

namespace ew {

CpuPath cpu_path() {
  static const CpuPath path = [] {
    const char* env = std::getenv("EW_CPU_PATH");
    if (env && std::strcmp(env, "portable") == 0) return CpuPath::Portable;
#if defined(EW_HAVE_AVX2_KERNELS) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
      return CpuPath::Avx2;
#endif
    return CpuPath::Portable;
  }();
  return path;
}

#ifdef EW_HAVE_AVX2_KERNELS
#define EW_DISPATCH(path, fn, ...) \
  ((path) == CpuPath::Avx2 ? avx2::fn(__VA_ARGS__) : portable::fn(__VA_ARGS__))
#else
#define EW_DISPATCH(path, fn, ...) portable::fn(__VA_ARGS__)
#endif

void matmul_rows(CpuPath path, const float* x, int64_t T, const void* W, DType dt, int64_t K, int64_t n0,
                 int64_t n1, float* y, int64_t ldy) {
  EW_DISPATCH(path, matmul_rows, x, T, W, dt, K, n0, n1, y, ldy);
}
void matmul_t_cols(CpuPath path, const float* x, int64_t T, const void* W, DType dt, int64_t K, int64_t N,
                   int64_t n0, int64_t n1, float* y) {
  EW_DISPATCH(path, matmul_t_cols, x, T, W, dt, K, N, n0, n1, y);
}
float dot_f32(CpuPath path, const float* a, const float* b, int64_t n) {
  return EW_DISPATCH(path, dot_f32, a, b, n);
}
void axpy_f32(CpuPath path, float a, const float* x, float* y, int64_t n) {
  EW_DISPATCH(path, axpy_f32, a, x, y, n);
}

int64_t rows_per_chunk(int64_t rows, int64_t row_bytes, int64_t tokens) {
  constexpr int64_t kMaxBytes = 128 << 10, kMinBytes = 16 << 10;
  constexpr int64_t kMaxMacs = 2 << 20;  // ~0.1 ms of compute-bound work (prefill)
  const int64_t threads = ThreadPool::global().size();
  // Work per row in bytes x tokens: about one multiply-add per weight byte (bf16).
  const int64_t bytes = std::max<int64_t>(1, row_bytes), macs = bytes * std::max<int64_t>(1, tokens);
  int64_t r = std::min({kMaxBytes / bytes, kMaxMacs / macs, (rows + 4 * threads - 1) / (4 * threads)});
  r = std::max(r, std::min(kMinBytes / bytes, kMaxMacs / macs));
  // Several tokens run 4-row tiles (matmul_avx2.cc): keep whole tiles in a chunk.
  if (tokens > 1) r = std::max<int64_t>(16, (r + 3) / 4 * 4);
  return std::max<int64_t>(1, r);
}

// Enough work per task that waking a thread pays off (about 64K multiply-adds).
static int64_t grain_for(int64_t unit_work) {
  const int64_t g = (int64_t{1} << 16) / (unit_work > 0 ? unit_work : 1);
  return g > 1 ? g : 1;
}

void matmul_cpu_path(CpuPath path, const float* x, int64_t T, const void* W, DType dtype, int64_t N,
                     int64_t K, float* y) {
  if (T <= 0 || N <= 0) return;
  if (K <= 0) {
    std::memset(y, 0, static_cast<size_t>(T * N) * sizeof(float));
    return;
  }
  ThreadPool::global().parallel_chunks(N, rows_per_chunk(N, K * static_cast<int64_t>(dtype_size(dtype)), T),
                                       [&](int64_t b, int64_t e) { matmul_rows(path, x, T, W, dtype, K, b, e, y, N); });
}

void matmul_cpu_raw(const float* x, int64_t T, const void* W, DType dtype, int64_t N, int64_t K, float* y) {
  matmul_cpu_path(cpu_path(), x, T, W, dtype, N, K, y);
}

void matmul_cpu(const float* x, int64_t T, const TensorView& W, float* y) {
  if (W.shape.size() != 2) fail("matmul_cpu: weight must be 2-D, got shape ", shape_str(W.shape));
  matmul_cpu_raw(x, T, W.data, W.dtype, W.shape[0], W.shape[1], y);
}

void matmul_t_cpu_raw(const float* x, int64_t T, const void* W, DType dtype, int64_t K, int64_t N, float* y) {
  if (T <= 0 || N <= 0) return;
  const CpuPath path = cpu_path();
  const int64_t units = (N + 7) / 8;
  ThreadPool::global().parallel_for(
      units,
      [&](int64_t b, int64_t e) { matmul_t_cols(path, x, T, W, dtype, K, N, b * 8, std::min(N, e * 8), y); },
      grain_for(8 * K * T));
}

}  // namespace ew
