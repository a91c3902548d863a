// CpuOps::rope: pair j of each vector rotated by the token's cos/sin j (the rows of
// kernels/rope_rows.h, computed in double and rounded once). Interleaved: the pair is
// (2j, 2j+1), DeepSeek's checkpoint layout, the same map as the reference's de-interleave
// + rotate_half up to a permutation that q and k share, so every q.k product is
// unchanged. RotateHalf: the pair is (j, j + rot_dim/2), HF's apply_rotary_pos_emb.
#include "kernels/cpu/cpu_ops.h"

namespace ew {

void CpuOps::rope(float* x, int64_t T, int64_t n_vec, int64_t ld, int64_t vec_stride, int64_t rot_dim,
                  const float* cos_rows, const float* sin_rows, RopeLayout layout) {
  const int64_t half = rot_dim / 2;
  // Offsets of pair j's two dims: (2j, 2j+1) or (j, j + half).
  const int64_t step = layout == RopeLayout::Interleaved ? 2 : 1, other = layout == RopeLayout::Interleaved ? 1 : half;
  for (int64_t t = 0; t < T; ++t) {
    const float* cs = cos_rows + t * half;
    const float* sn = sin_rows + t * half;
    for (int64_t i = 0; i < half; ++i) {
      const float c = cs[i], s = sn[i];
      for (int64_t j = 0; j < n_vec; ++j) {
        float* p = x + t * ld + j * vec_stride + step * i;
        const float x0 = p[0], x1 = p[other];
        p[0] = x0 * c - x1 * s;
        p[other] = x1 * c + x0 * s;
      }
    }
  }
}

}  // namespace ew
