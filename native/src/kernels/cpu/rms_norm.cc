// CpuOps::rms_norm: y = w * (x / sqrt(mean(x^2) + eps)) per row in fp32, the sum of squares
// in double: accurate, and per row, so batch independent. The sum runs in 8 interleaved
// double partial sums (element i into sum i mod 8, then a fixed pairwise combine): one
// sequential chain of double adds made the norms about 3% of a prefill.
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/cpu_ops.h"
#include "util/thread_pool.h"

namespace ew {
namespace {

double sum_squares(const float* x, int64_t n) {
  double s[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) s[j] += static_cast<double>(x[i + j]) * x[i + j];
  for (int j = 0; i < n; ++i, ++j) s[j] += static_cast<double>(x[i]) * x[i];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

void norm_rows(const float* x, int64_t ldx, const float* w, float eps, float* y, int64_t ldy, int64_t T, int64_t n) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * ldx;
    float* yr = y + t * ldy;
    const float inv = static_cast<float>(1.0 / std::sqrt(sum_squares(xr, n) / static_cast<double>(n) + eps));
    for (int64_t i = 0; i < n; ++i) yr[i] = w[i] * (xr[i] * inv);
  }
}

}  // namespace

void CpuOps::rms_norm(const float* x, int64_t ldx, Weight w, float eps, float* y, int64_t ldy, int64_t T,
                      int64_t D) {
  // The weight once in fp32 (a per-element dtype switch cost as much as the norm).
  thread_local std::vector<float> wf;
  if (static_cast<int64_t>(wf.size()) < D) wf.resize(static_cast<size_t>(D));
  convert_to_f32(w.data, w.dtype, 0, D, wf.data());
  const float* wp = wf.data();
  ThreadPool::global().parallel_for(
      T, [&](int64_t b, int64_t e) { norm_rows(x + b * ldx, ldx, wp, eps, y + b * ldy, ldy, e - b, D); }, 16);
}

}  // namespace ew
