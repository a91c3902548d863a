// CudaOps::gqa_kv_write: one block per token copies its key | value row into its cache
// slot, as fp32 or rounded to nearest even bf16 (the CPU twin's f32_to_bf16).
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/device_math.cuh"
#include "util/cuda/cuda_util.h"
#include "util/error.h"

namespace ew {
namespace cuda {
namespace {

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

template <typename E>
__global__ void gqa_kv_write_kernel(GqaCacheView c, const float* __restrict__ kv, const int32_t* __restrict__ seq,
                                    const int32_t* __restrict__ pos) {
  const int64_t t = blockIdx.x, n = gqa_entry(c);
  const int32_t block = c.block_tables[static_cast<int64_t>(seq[t]) * c.max_blocks + pos[t] / c.block_size];
  E* dst = static_cast<E*>(c.data) + block * c.block_stride + static_cast<int64_t>(pos[t] % c.block_size) * n;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) store(dst + i, kv[t * n + i]);
}

}  // namespace

void CudaOps::gqa_kv_write(const GqaCacheView& cache, const float* kv, int64_t T, const int32_t* seq,
                           const int32_t* pos) {
  if (T <= 0) return;
  if (T > 2147483647) fail("cuda::gqa_kv_write: ", T, " tokens exceed the grid");
  auto s = static_cast<cudaStream_t>(stream_);
  const unsigned grid = static_cast<unsigned>(T);
  switch (cache.dtype) {
    case DType::F32: gqa_kv_write_kernel<float><<<grid, 128, 0, s>>>(cache, kv, seq, pos); break;
    case DType::BF16: gqa_kv_write_kernel<__nv_bfloat16><<<grid, 128, 0, s>>>(cache, kv, seq, pos); break;
    default: fail("cuda::gqa_kv_write: cache dtype ", dtype_name(cache.dtype), " unsupported (F32 or BF16)");
  }
  EW_CUDA_CHECK_LAUNCH("gqa_kv_write_kernel");
}

}  // namespace cuda
}  // namespace ew
