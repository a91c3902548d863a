// CpuOps::argmax: the first maximum of each row, scanned as the host sampler scans (a
// NaN never compares greater, so one only wins at id 0), and the log softmax there in double.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/cpu_ops.h"

namespace ew {

void CpuOps::argmax(const float* logits, int64_t rows, int64_t V, int32_t* ids, float* logprob) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = logits + r * V;
    int32_t best = 0;
    for (int64_t i = 1; i < V; ++i)
      if (row[i] > row[best]) best = static_cast<int32_t>(i);
    ids[r] = best;
    if (!logprob) continue;
    double mx = row[0];
    for (int64_t i = 1; i < V; ++i) mx = std::max<double>(mx, row[i]);
    double sum = 0;
    for (int64_t i = 0; i < V; ++i) sum += std::exp(row[i] - mx);
    logprob[r] = static_cast<float>(row[best] - mx - std::log(sum));
  }
}

}  // namespace ew
