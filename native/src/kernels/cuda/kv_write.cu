// CudaOps::kv_write: one block per token copies its cache entry (MLA's latent, GQA's
// keys | values) into its slot, as fp32 or rounded to nearest even bf16 (the CPU twin's
// f32_to_bf16).
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
__global__ void kv_write_kernel(KvLayerView c, const float* __restrict__ rows, const int32_t* __restrict__ seq,
                                const int32_t* __restrict__ pos) {
  const int64_t t = blockIdx.x;
  E* dst = cache_entry<E>(c, seq[t], pos[t]);
  for (int i = threadIdx.x; i < c.width; i += blockDim.x) store(dst + i, rows[t * c.width + i]);
}

}  // namespace

void CudaOps::kv_write(const KvLayerView& cache, const float* rows, int64_t T, const int32_t* seq,
                       const int32_t* pos) {
  if (T <= 0) return;
  if (T > 2147483647) fail("cuda::kv_write: ", T, " tokens exceed the grid");
  auto s = static_cast<cudaStream_t>(stream_);
  const unsigned grid = static_cast<unsigned>(T);
  switch (cache.dtype) {
    case DType::F32: kv_write_kernel<float><<<grid, 128, 0, s>>>(cache, rows, seq, pos); break;
    case DType::BF16: kv_write_kernel<__nv_bfloat16><<<grid, 128, 0, s>>>(cache, rows, seq, pos); break;
    default: fail("cuda::kv_write: cache dtype ", dtype_name(cache.dtype), " unsupported (F32 or BF16)");
  }
  EW_CUDA_CHECK_LAUNCH("kv_write_kernel");
}

}  // namespace cuda
}  // namespace ew
