// Whole-matrix projections on the CPU over the global thread pool, on an explicit dispatch
// path (the CpuOps matmuls and the tests use these). Output rows (or columns) are shared
// among the threads; sharing decides only who computes an element, never how, so results
// do not depend on the thread count, and every element's reduction order depends only on
// K, so a token's row is bit-identical alone or in any batch.
#pragma once
#include <cstdint>

#include "kernels/cpu/cpu_kernels.h"

namespace ew {

// y[T, N] (+)= x[T, K] . W[N, K]^T with W of dtype (converted on the fly), fp32 accumulation;
// y has row stride ldy (0: N).
void matmul_cpu_path(CpuPath path, const float* x, int64_t T, const void* W, DType dtype, int64_t N, int64_t K,
                     float* y, bool accumulate = false, int64_t ldy = 0);
// The same on cpu_path().
void matmul_cpu_raw(const float* x, int64_t T, const void* W, DType dtype, int64_t N, int64_t K, float* y);
// y[T, N] = x[T, K] . W[K, N] with W stored [K, N] (the transposed layout), over columns;
// per element the sum runs over k ascending, so it is batch independent.
void matmul_t_cpu_path(CpuPath path, const float* x, int64_t T, const void* W, DType dtype, int64_t K, int64_t N,
                       float* y);
void matmul_t_cpu_raw(const float* x, int64_t T, const void* W, DType dtype, int64_t K, int64_t N, float* y);

}  // namespace ew
