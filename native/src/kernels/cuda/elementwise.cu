// Row-wise and elementwise kernels: RMSNorm, DeepSeek RoPE, embedding gather, residual
// add, SiLU*up. Each is one pass over its data; RMSNorm uses one block per row.
#include <algorithm>

#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "util/error.h"

namespace ew {
namespace cuda {
namespace {

constexpr int kNormThreads = 256;

template <typename W>
__global__ void rmsnorm_kernel(const float* x, int64_t xs, const W* __restrict__ w, float* y, int64_t ys,
                               int64_t D, float eps) {
  __shared__ float partial[kNormThreads / 32];
  const float* xr = x + blockIdx.x * xs;
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
  ss = warp_sum(ss);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int i = 0; i < kNormThreads / 32; ++i) total += partial[i];
  const float inv = rsqrtf(total / static_cast<float>(D) + eps);
  float* yr = y + blockIdx.x * ys;  // may alias xr: each element is read before it is written
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) yr[i] = to_f32(w[i]) * (xr[i] * inv);
}

// One thread per (token, vector, pair i): the pair (2i, 2i+1) is rotated in place by
// frequency i, as the CPU kernel (kernels/cpu/rope.h) does: the same map as the
// reference's de-interleave + rotate_half up to a permutation q and k share. Explicit
// _rn operations keep nvcc from fusing them into FMAs, so results match the CPU bit for bit.
// Tokens stride over gridDim.y (at most 65535), so any T works.
__global__ void rope_kernel(float* x, int64_t T, int64_t n_vec, int64_t ts, int64_t vs, int half,
                            const float* __restrict__ cos_r, const float* __restrict__ sin_r) {
  const int i = threadIdx.x;
  const int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (v >= n_vec) return;
  for (int64_t t = blockIdx.y; t < T; t += gridDim.y) {
    float* p = x + t * ts + v * vs + 2 * i;
    const float c = cos_r[t * half + i], s = sin_r[t * half + i];
    const float x0 = p[0], x1 = p[1];
    p[0] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    p[1] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
  }
}

// Rows stride over gridDim.y (at most 65535), so any T works.
template <typename W>
__global__ void embed_kernel(const int32_t* __restrict__ ids, int64_t T, const W* __restrict__ table, int64_t vocab,
                             int64_t D, float* __restrict__ y) {
  for (int64_t t = blockIdx.y; t < T; t += gridDim.y) {
    const int64_t id = ids[t];
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < D;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x)
      y[t * D + i] = (id >= 0 && id < vocab) ? to_f32(table[id * D + i]) : 0.f;
  }
}

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

__global__ void silu_mul_kernel(const float* g, const float* u, int64_t in_stride, float* out, int64_t T, int64_t D) {
  const int64_t n = T * D;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = e / D, i = e % D;
    out[e] = silu(g[t * in_stride + i]) * u[t * in_stride + i];
  }
}

unsigned grid_for(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}
// gridDim.y for a kernel that strides rows over it (the limit is 65535).
unsigned grid_rows(int64_t n) { return static_cast<unsigned>(std::min<int64_t>(n, 65535)); }

}  // namespace

void rmsnorm(const float* x, int64_t x_stride, const void* w, DType wtype, float* y, int64_t y_stride, int64_t T,
             int64_t D, float eps, void* stream) {
  if (T <= 0) return;
  if (D <= 0 || x_stride < D || y_stride < D) fail("cuda::rmsnorm: bad shape D=", D, " strides ", x_stride, "/", y_stride);
  auto s = static_cast<cudaStream_t>(stream);
  const unsigned grid = static_cast<unsigned>(T);
  switch (wtype) {
    case DType::BF16:
      rmsnorm_kernel<<<grid, kNormThreads, 0, s>>>(x, x_stride, static_cast<const __nv_bfloat16*>(w), y, y_stride, D, eps);
      break;
    case DType::F16:
      rmsnorm_kernel<<<grid, kNormThreads, 0, s>>>(x, x_stride, static_cast<const __half*>(w), y, y_stride, D, eps);
      break;
    case DType::F32:
      rmsnorm_kernel<<<grid, kNormThreads, 0, s>>>(x, x_stride, static_cast<const float*>(w), y, y_stride, D, eps);
      break;
  }
  EW_CUDA_CHECK_LAUNCH("rmsnorm_kernel");
}

void rope(float* x, int64_t T, int64_t n_vec, int64_t token_stride, int64_t vec_stride, int64_t rot_dim,
          const float* cos_rows, const float* sin_rows, void* stream) {
  if (T <= 0) return;
  if (rot_dim <= 0 || rot_dim % 2 || rot_dim > 1024 || n_vec <= 0)
    fail("cuda::rope: rot_dim ", rot_dim, " must be even and <= 1024, n_vec ", n_vec, " > 0");
  const int half = static_cast<int>(rot_dim / 2);
  const int vpb = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n_vec, 256 / half)));
  const dim3 block(half, vpb);
  const dim3 grid(static_cast<unsigned>((n_vec + vpb - 1) / vpb), grid_rows(T));
  rope_kernel<<<grid, block, 0, static_cast<cudaStream_t>(stream)>>>(x, T, n_vec, token_stride, vec_stride, half,
                                                                     cos_rows, sin_rows);
  EW_CUDA_CHECK_LAUNCH("rope_kernel");
}

void embed(const int32_t* ids, int64_t T, const void* table, DType wtype, int64_t vocab, int64_t D, float* y,
           void* stream) {
  if (T <= 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const dim3 grid(grid_for(D, 256), grid_rows(T));
  switch (wtype) {
    case DType::BF16:
      embed_kernel<<<grid, 256, 0, s>>>(ids, T, static_cast<const __nv_bfloat16*>(table), vocab, D, y);
      break;
    case DType::F16:
      embed_kernel<<<grid, 256, 0, s>>>(ids, T, static_cast<const __half*>(table), vocab, D, y);
      break;
    case DType::F32:
      embed_kernel<<<grid, 256, 0, s>>>(ids, T, static_cast<const float*>(table), vocab, D, y);
      break;
  }
  EW_CUDA_CHECK_LAUNCH("embed_kernel");
}

void add_inplace(float* y, const float* x, int64_t n, void* stream) {
  if (n <= 0) return;
  add_kernel<<<grid_for(n, 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(y, x, n);
  EW_CUDA_CHECK_LAUNCH("add_kernel");
}

void gather_rows(const float* x, int64_t ld, const int32_t* rows, int64_t n, int64_t D, float* y, void* stream) {
  if (n <= 0 || D <= 0) return;
  const dim3 grid(grid_for(D, 256), grid_rows(n));
  gather_rows_kernel<<<grid, 256, 0, static_cast<cudaStream_t>(stream)>>>(x, ld, rows, n, D, y);
  EW_CUDA_CHECK_LAUNCH("gather_rows_kernel");
}

void silu_mul(const float* g, const float* u, int64_t in_stride, float* out, int64_t T, int64_t D, void* stream) {
  if (T <= 0 || D <= 0) return;
  silu_mul_kernel<<<grid_for(T * D, 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(g, u, in_stride, out, T, D);
  EW_CUDA_CHECK_LAUNCH("silu_mul_kernel");
}

}  // namespace cuda
}  // namespace ew
