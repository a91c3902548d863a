// CudaOps' elementwise ops: SiLU * up, residual add, row gather; one grid-stride pass each.
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/device_math.cuh"
#include "util/cuda/cuda_util.h"
#include "util/error.h"

namespace ew {
namespace cuda {
namespace {

__global__ void add_kernel(float* __restrict__ y, const float* __restrict__ x, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] += x[i];
}

// Block rows stride over the gathered rows: y[i, :D] = x[rows[i] * ld + :D], any n.
__global__ void gather_rows_kernel(const float* __restrict__ x, int64_t ld, const int32_t* __restrict__ rows,
                                   int64_t n, int64_t D, float* __restrict__ y) {
  for (int64_t i = blockIdx.y; i < n; i += gridDim.y) {
    const float* src = x + static_cast<int64_t>(rows[i]) * ld;
    for (int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; d < D;
         d += static_cast<int64_t>(gridDim.x) * blockDim.x)
      y[i * D + d] = src[d];
  }
}

__global__ void silu_mul_kernel(const float* g, const float* u, int64_t ld, float* out, int64_t T, int64_t D) {
  const int64_t n = T * D;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = e / D, i = e % D;
    out[e] = silu(g[t * ld + i]) * u[t * ld + i];
  }
}

}  // namespace

void CudaOps::add(float* y, const float* x, int64_t n) {
  if (n <= 0) return;
  add_kernel<<<grid_for(n, 256), 256, 0, static_cast<cudaStream_t>(stream_)>>>(y, x, n);
  EW_CUDA_CHECK_LAUNCH("add_kernel");
}

void CudaOps::gather_rows(const float* x, int64_t ld, const int32_t* rows, int64_t n, int64_t D, float* y) {
  if (n <= 0 || D <= 0) return;
  const dim3 grid(grid_for(D, 256), grid_rows(n));
  gather_rows_kernel<<<grid, 256, 0, static_cast<cudaStream_t>(stream_)>>>(x, ld, rows, n, D, y);
  EW_CUDA_CHECK_LAUNCH("gather_rows_kernel");
}

void CudaOps::silu_mul(const float* g, const float* u, int64_t ld, float* out, int64_t T, int64_t D) {
  if (T <= 0 || D <= 0) return;
  silu_mul_kernel<<<grid_for(T * D, 256), 256, 0, static_cast<cudaStream_t>(stream_)>>>(g, u, ld, out, T, D);
  EW_CUDA_CHECK_LAUNCH("silu_mul_kernel");
}

}  // namespace cuda
}  // namespace ew
