// CpuOps' elementwise ops: SiLU * up, residual add, row gather. Short loops run inline;
// long ones (prefill) are shared among the pool's threads.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/cpu_ops.h"
#include "util/thread_pool.h"

namespace ew {
namespace {

constexpr int64_t kGrain = int64_t{1} << 15;  // elements per task: below this a loop runs inline

}  // namespace

void CpuOps::silu_mul(const float* g, const float* u, int64_t ld, float* out, int64_t T, int64_t D) {
  ThreadPool::global().parallel_for(
      T,
      [&](int64_t b, int64_t e) {
        for (int64_t t = b; t < e; ++t) silu_mul_rows(path_, g + t * ld, u + t * ld, D, out + t * D);
      },
      std::max<int64_t>(1, kGrain / std::max<int64_t>(1, D)));
}

void CpuOps::add(float* y, const float* x, int64_t n) {
  ThreadPool::global().parallel_for(
      n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) y[i] += x[i];
      }, kGrain);
}

void CpuOps::gather_rows(const float* x, int64_t ld, const int32_t* rows, int64_t n, int64_t D, float* y) {
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(y + i * D, x + static_cast<int64_t>(rows[i]) * ld, static_cast<size_t>(D) * sizeof(float));
}

}  // namespace ew
