// CudaOps::rope: one thread per (token, vector, pair j): the pair j ((2j, 2j+1)
// interleaved, (j, j + rot_dim/2) rotate_half) rotated in place by the token's cos/sin j,
// as the CPU twin does. Explicit _rn operations keep nvcc
// from fusing them into FMAs, so the result equals the CPU's bit for bit. Tokens stride
// over gridDim.y (at most 65535), so any T works.
#include <algorithm>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/device_math.cuh"
#include "util/cuda/cuda_util.h"
#include "util/error.h"

namespace ew {
namespace cuda {
namespace {

__global__ void rope_kernel(float* x, int64_t T, int64_t n_vec, int64_t ts, int64_t vs, int half, bool interleaved,
                            const float* __restrict__ cos_r, const float* __restrict__ sin_r) {
  const int i = threadIdx.x;
  const int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (v >= n_vec) return;
  const int first = interleaved ? 2 * i : i, other = interleaved ? 1 : half;
  for (int64_t t = blockIdx.y; t < T; t += gridDim.y) {
    float* p = x + t * ts + v * vs + first;
    const float c = cos_r[t * half + i], s = sin_r[t * half + i];
    const float x0 = p[0], x1 = p[other];
    p[0] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    p[other] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
  }
}

}  // namespace

void CudaOps::rope(float* x, int64_t T, int64_t n_vec, int64_t ld, int64_t vec_stride, int64_t rot_dim,
                   const float* cos_rows, const float* sin_rows, RopeLayout layout) {
  if (T <= 0) return;
  if (rot_dim <= 0 || rot_dim % 2 || rot_dim > 1024 || n_vec <= 0)
    fail("cuda::rope: rot_dim ", rot_dim, " must be even and <= 1024, n_vec ", n_vec, " > 0");
  const int half = static_cast<int>(rot_dim / 2);
  const int vpb = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n_vec, 256 / half)));
  const dim3 block(half, vpb);
  const dim3 grid(static_cast<unsigned>((n_vec + vpb - 1) / vpb), grid_rows(T));
  rope_kernel<<<grid, block, 0, static_cast<cudaStream_t>(stream_)>>>(
      x, T, n_vec, ld, vec_stride, half, layout == RopeLayout::Interleaved, cos_rows, sin_rows);
  EW_CUDA_CHECK_LAUNCH("rope_kernel");
}

}  // namespace cuda
}  // namespace ew
