// CpuOps::rms_norm: y = w * (x / sqrt(mean(x^2) + eps)) per row in fp32, the sum of squares
// in double, sequentially: accurate, and per row, so batch independent.
#include <cmath>

#include "kernels/cpu/cpu_ops.h"
#include "util/thread_pool.h"

namespace ew {
namespace {

void norm_rows(const float* x, int64_t ldx, const Weight& w, float eps, float* y, int64_t ldy, int64_t T,
               int64_t n) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * ldx;
    float* yr = y + t * ldy;
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
    for (int64_t i = 0; i < n; ++i) yr[i] = load_as_f32(w.data, w.dtype, i) * (xr[i] * inv);
  }
}

}  // namespace

void CpuOps::rms_norm(const float* x, int64_t ldx, Weight w, float eps, float* y, int64_t ldy, int64_t T,
                      int64_t D) {
  ThreadPool::global().parallel_for(
      T, [&](int64_t b, int64_t e) { norm_rows(x + b * ldx, ldx, w, eps, y + b * ldy, ldy, e - b, D); }, 16);
}

}  // namespace ew
