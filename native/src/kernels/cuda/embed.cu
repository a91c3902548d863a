// CudaOps::embed: rows of the table as fp32; ids outside [0, vocab) give zero rows (the
// engine validates ids on the host). Rows stride over gridDim.y (at most 65535), so any T works.
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/device_math.cuh"
#include "util/cuda/cuda_util.h"
#include "util/error.h"

namespace ew {
namespace cuda {
namespace {

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

}  // namespace

void CudaOps::embed(const int32_t* ids, int64_t T, Weight table, int64_t vocab, int64_t D, float* y) {
  if (T <= 0) return;
  auto s = static_cast<cudaStream_t>(stream_);
  const dim3 grid(grid_for(D, 256), grid_rows(T));
  switch (table.dtype) {
    case DType::BF16:
      embed_kernel<<<grid, 256, 0, s>>>(ids, T, static_cast<const __nv_bfloat16*>(table.data), vocab, D, y);
      break;
    case DType::F16:
      embed_kernel<<<grid, 256, 0, s>>>(ids, T, static_cast<const __half*>(table.data), vocab, D, y);
      break;
    case DType::F32:
      embed_kernel<<<grid, 256, 0, s>>>(ids, T, static_cast<const float*>(table.data), vocab, D, y);
      break;
    default: fail("cuda::embed: unknown table dtype ", static_cast<int>(table.dtype));
  }
  EW_CUDA_CHECK_LAUNCH("embed_kernel");
}

}  // namespace cuda
}  // namespace ew
