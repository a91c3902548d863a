// The matmuls of CpuOps (kernels/ops.h) and the whole-matrix helpers of matmul.h: output
// rows (or columns) are shared among the global pool's threads; the inner loops run on the
// CpuOps' dispatch path (dispatch.cc).
#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "kernels/cpu/cpu_ops.h"
#include "util/error.h"
#include "util/thread_pool.h"

namespace ew {

// Enough work per task that waking a thread pays off (about 64K multiply-adds).
static int64_t grain_for(int64_t unit_work) {
  const int64_t g = (int64_t{1} << 16) / (unit_work > 0 ? unit_work : 1);
  return g > 1 ? g : 1;
}

namespace {
// The op's activations prepared once, before the loop, for every chunk of it (a large
// packing shared among the pool's threads).
PreparedActivations prepared(CpuPath path, DType dt, const float* x, int64_t T, int64_t K) {
  thread_local std::vector<uint16_t> buf;
  const int64_t n = prepared_activation_elems(path, dt, T, K);
  if (n == 0) return {};
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  return prepare_activations(path, dt, x, T, K, buf.data(), /*may_share=*/true);
}
}  // namespace

void matmul_cpu_path(CpuPath path, const float* x, int64_t T, const void* W, DType dtype, int64_t N, int64_t K,
                     float* y, bool accumulate, int64_t ldy) {
  if (T <= 0 || N <= 0) return;
  if (ldy == 0) ldy = N;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t t = 0; t < T; ++t) std::memset(y + t * ldy, 0, static_cast<size_t>(N) * sizeof(float));
    return;
  }
  const PreparedActivations xb = prepared(path, dtype, x, T, K);
  ThreadPool::global().parallel_chunks(
      N, rows_per_chunk(N, K * static_cast<int64_t>(dtype_size(dtype)), T, path),
      [&](int64_t b, int64_t e) { matmul_rows(path, x, T, W, dtype, K, b, e, y, ldy, accumulate, &xb); });
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

// fp32 activations at every T: on a bf16 path its fp32 twin (avx512).
void CpuOps::matmul_exact(const float* x, int64_t T, Weight W, int64_t N, int64_t K, float* y, bool accumulate) {
  matmul_cpu_path(exact_path(path_), x, T, W.data, W.dtype, N, K, y, accumulate);
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
  const PreparedActivations xb = prepared(path, A.dtype, x, T, K);
  ThreadPool::global().parallel_chunks(
      N, rows_per_chunk(N, K * static_cast<int64_t>(dtype_size(A.dtype)), T, path), [&](int64_t b, int64_t e) {
        if (b < Na) matmul_rows(path, x, T, A.data, A.dtype, K, b, std::min(e, Na), y, N, false, &xb);
        if (e > Na) matmul_rows(path, x, T, B.data, B.dtype, K, std::max(b, Na) - Na, e - Na, y + Na, N, false, &xb);
      });
}

}  // namespace ew
