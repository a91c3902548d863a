#include "kernels/cpu/norm.h"

#include <cmath>

#include "kernels/cpu/cpu_kernels.h"
#include "util/error.h"

namespace ew {

void rms_norm_cpu(const float* x, int64_t ldx, int64_t T, int64_t n, const TensorView& w, float eps, float* y,
                  int64_t ldy) {
  if (w.numel() != n) fail("rms_norm: weight has ", w.numel(), " elements, rows have ", n);
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * ldx;
    float* yr = y + t * ldy;
    double ss = 0;  // sequential double sum: accurate, and per-row so batch independent
    for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
    for (int64_t i = 0; i < n; ++i) yr[i] = load_as_f32(w.data, w.dtype, i) * (xr[i] * inv);
  }
}

}  // namespace ew
