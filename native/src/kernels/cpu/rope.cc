// CpuOps::rope: pair (2j, 2j+1) of each vector rotated by the token's cos/sin j (the rows
// of kernels/rope_rows.h, computed in double and rounded once), in the checkpoint's
// interleaved layout: the same map as the reference's de-interleave + rotate_half up to a
// permutation that q and k share, so every q.k product is unchanged.
#include "kernels/cpu/cpu_ops.h"

namespace ew {

void CpuOps::rope(float* x, int64_t T, int64_t n_vec, int64_t ld, int64_t vec_stride, int64_t rot_dim,
                  const float* cos_rows, const float* sin_rows) {
  const int64_t half = rot_dim / 2;
  for (int64_t t = 0; t < T; ++t) {
    const float* cs = cos_rows + t * half;
    const float* sn = sin_rows + t * half;
    for (int64_t i = 0; i < half; ++i) {
      const float c = cs[i], s = sn[i];
      for (int64_t j = 0; j < n_vec; ++j) {
        float* p = x + t * ld + j * vec_stride + 2 * i;
        const float x0 = p[0], x1 = p[1];
        p[0] = x0 * c - x1 * s;
        p[1] = x1 * c + x0 * s;
      }
    }
  }
}

}  // namespace ew
