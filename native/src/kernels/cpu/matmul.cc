// The matmuls of CpuOps (kernels/ops.h) and the whole-matrix helpers of matmul.h: the
// dispatch path is chosen once per process (or per CpuOps), and output rows (or columns)
// are shared among the global pool's threads.
#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "kernels/cpu/cpu_ops.h"
#include "util/error.h"
#include "util/thread_pool.h"

namespace ew {

const char* cpu_path_name(CpuPath path) {
  switch (path) {
    case CpuPath::Portable: return "portable";
    case CpuPath::Avx2: return "avx2";
  }
  return "?";
}

const std::vector<CpuPath>& cpu_paths() {
  static const std::vector<CpuPath> paths = [] {
    std::vector<CpuPath> p{CpuPath::Portable};
#if defined(EW_HAVE_AVX2_KERNELS) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
      p.push_back(CpuPath::Avx2);
#endif
    return p;
  }();
  return paths;
}

CpuPath cpu_path() {
  static const CpuPath path = [] {
    const std::vector<CpuPath>& have = cpu_paths();
    const char* env = std::getenv("EW_CPU_PATH");
    if (!env || !*env) return have.back();
    std::string names;
    for (CpuPath p : have) {
      if (std::strcmp(env, cpu_path_name(p)) == 0) return p;
      names += std::string(names.empty() ? "" : ", ") + cpu_path_name(p);
    }
    fail("EW_CPU_PATH=", env, ": this CPU and build run only ", names);
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
                 int64_t n1, float* y, int64_t ldy, bool accumulate) {
  EW_DISPATCH(path, matmul_rows, x, T, W, dt, K, n0, n1, y, ldy, accumulate);
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

void matmul_cpu_path(CpuPath path, const float* x, int64_t T, const void* W, DType dtype, int64_t N, int64_t K,
                     float* y, bool accumulate, int64_t ldy) {
  if (T <= 0 || N <= 0) return;
  if (ldy == 0) ldy = N;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t t = 0; t < T; ++t) std::memset(y + t * ldy, 0, static_cast<size_t>(N) * sizeof(float));
    return;
  }
  ThreadPool::global().parallel_chunks(
      N, rows_per_chunk(N, K * static_cast<int64_t>(dtype_size(dtype)), T),
      [&](int64_t b, int64_t e) { matmul_rows(path, x, T, W, dtype, K, b, e, y, ldy, accumulate); });
}

void matmul_cpu_raw(const float* x, int64_t T, const void* W, DType dtype, int64_t N, int64_t K, float* y) {
  matmul_cpu_path(cpu_path(), x, T, W, dtype, N, K, y);
}

void matmul_t_cpu_path(CpuPath path, const float* x, int64_t T, const void* W, DType dtype, int64_t K, int64_t N,
                       float* y) {
  if (T <= 0 || N <= 0) return;
  const int64_t units = (N + 7) / 8;
  ThreadPool::global().parallel_for(
      units,
      [&](int64_t b, int64_t e) { matmul_t_cols(path, x, T, W, dtype, K, N, b * 8, std::min(N, e * 8), y); },
      grain_for(8 * K * T));
}

void matmul_t_cpu_raw(const float* x, int64_t T, const void* W, DType dtype, int64_t K, int64_t N, float* y) {
  matmul_t_cpu_path(cpu_path(), x, T, W, dtype, K, N, y);
}

void CpuOps::matmul(const float* x, int64_t T, Weight W, int64_t N, int64_t K, float* y, bool accumulate) {
  matmul_cpu_path(path_, x, T, W.data, W.dtype, N, K, y, accumulate);
}

// fp32 activations at every T already: the same as matmul.
void CpuOps::matmul_exact(const float* x, int64_t T, Weight W, int64_t N, int64_t K, float* y, bool accumulate) {
  matmul_cpu_path(path_, x, T, W.data, W.dtype, N, K, y, accumulate);
}

// The rows of A and B laid end to end as one loop, so both share one hand-off to the pool.
void CpuOps::matmul_pair(const float* x, int64_t T, Weight A, int64_t Na, Weight B, int64_t Nb, int64_t K,
                         float* y) {
  if (T <= 0 || Na + Nb <= 0) return;
  if (A.dtype != B.dtype) fail("matmul_pair: the two matrices differ in dtype (", dtype_name(A.dtype), ", ",
                               dtype_name(B.dtype), ")");
  const int64_t N = Na + Nb;
  if (K <= 0) {
    std::memset(y, 0, static_cast<size_t>(T * N) * sizeof(float));
    return;
  }
  const CpuPath path = path_;
  ThreadPool::global().parallel_chunks(
      N, rows_per_chunk(N, K * static_cast<int64_t>(dtype_size(A.dtype)), T), [&](int64_t b, int64_t e) {
        if (b < Na) matmul_rows(path, x, T, A.data, A.dtype, K, b, std::min(e, Na), y, N);
        if (e > Na) matmul_rows(path, x, T, B.data, B.dtype, K, std::max(b, Na) - Na, e - Na, y + Na, N);
      });
}

}  // namespace ew
