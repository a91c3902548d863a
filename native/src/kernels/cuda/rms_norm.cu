// CudaOps::rms_norm: one block per row, fp32 sum of squares (a warp tree), weight of any dtype.
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/device_math.cuh"
#include "util/cuda/cuda_util.h"
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

}  // namespace

void CudaOps::rms_norm(const float* x, int64_t ldx, Weight w, float eps, float* y, int64_t ldy, int64_t T,
                       int64_t D) {
  if (T <= 0) return;
  if (D <= 0 || ldx < D || ldy < D) fail("cuda::rms_norm: bad shape D=", D, " strides ", ldx, "/", ldy);
  if (T > 2147483647) fail("cuda::rms_norm: ", T, " rows exceed the grid");
  auto s = static_cast<cudaStream_t>(stream_);
  const unsigned grid = static_cast<unsigned>(T);
  switch (w.dtype) {
    case DType::BF16:
      rmsnorm_kernel<<<grid, kNormThreads, 0, s>>>(x, ldx, static_cast<const __nv_bfloat16*>(w.data), y, ldy, D, eps);
      break;
    case DType::F16:
      rmsnorm_kernel<<<grid, kNormThreads, 0, s>>>(x, ldx, static_cast<const __half*>(w.data), y, ldy, D, eps);
      break;
    case DType::F32:
      rmsnorm_kernel<<<grid, kNormThreads, 0, s>>>(x, ldx, static_cast<const float*>(w.data), y, ldy, D, eps);
      break;
    default: fail("cuda::rms_norm: unknown weight dtype ", static_cast<int>(w.dtype));
  }
  EW_CUDA_CHECK_LAUNCH("rmsnorm_kernel");
}

}  // namespace cuda
}  // namespace ew
