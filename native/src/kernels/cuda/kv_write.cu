// CudaOps::kv_write: one block per token copies its latent row into its cache slot.
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/device_math.cuh"
#include "util/cuda/cuda_util.h"
#include "util/error.h"

namespace ew {
namespace cuda {
namespace {

__global__ void kv_write_kernel(LatentCacheView c, const float* __restrict__ latent, const int32_t* __restrict__ seq,
                                const int32_t* __restrict__ pos) {
  const int64_t t = blockIdx.x;
  float* dst = const_cast<float*>(latent_entry(c, seq[t], pos[t]));
  for (int i = threadIdx.x; i < c.width; i += blockDim.x) dst[i] = latent[t * c.width + i];
}

}  // namespace

void CudaOps::kv_write(const LatentCacheView& cache, const float* latent, int64_t T, const int32_t* seq,
                       const int32_t* pos) {
  if (T <= 0) return;
  if (cache.dtype != DType::F32) fail("cuda::kv_write: the CUDA latent cache is fp32, not ", dtype_name(cache.dtype));
  if (T > 2147483647) fail("cuda::kv_write: ", T, " tokens exceed the grid");
  kv_write_kernel<<<static_cast<unsigned>(T), 128, 0, static_cast<cudaStream_t>(stream_)>>>(cache, latent, seq, pos);
  EW_CUDA_CHECK_LAUNCH("kv_write_kernel");
}

}  // namespace cuda
}  // namespace ew
