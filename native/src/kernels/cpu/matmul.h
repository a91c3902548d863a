// Dense projections on the CPU: y[T, N] = x[T, K] . W[N, K]^T with W as stored
// (f32, f16 or bf16, converted on the fly) and fp32 accumulation.
// Every output element is one dot product whose reduction order depends only on K,
// never on T or the thread count, so a token's result is bit-identical whether it
// runs alone or in a batch.
#pragma once
#include <cstdint>

#include "engine/tensor.h"

namespace ew {

void matmul_cpu(const float* x, int64_t T, const TensorView& W, float* y);
// Same on a raw weight pointer: W is [N, K] of dtype.
void matmul_cpu_raw(const float* x, int64_t T, const void* W, DType dtype, int64_t N, int64_t K, float* y);

}  // namespace ew
