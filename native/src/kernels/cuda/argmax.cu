// CudaOps::argmax, greedy sampling on the device: one block per row finds the first maximum (ties to the
// lower id, as the CPU sampler) and the log-softmax at it (max pass, then a sum pass).
// Every thread starts from its first non-NaN element (not from -FLT_MAX), so a row of -inf
// yields 0 as on the CPU, and NaNs are skipped except at id 0, where the CPU's scan sticks.
#include <cmath>

#include <algorithm>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/device_math.cuh"
#include "util/cuda/cuda_util.h"
#include "util/error.h"

namespace ew {
namespace cuda {
namespace {

constexpr int kThreads = 512;

// Whether candidate (v, i) beats the current (best, bid): a larger value, or an equal one
// at a lower id; an empty candidate (INT32_MAX) never wins, an empty current always loses.
__device__ __forceinline__ bool takes(float v, int32_t i, float best, int32_t bid) {
  if (i == INT32_MAX) return false;
  return bid == INT32_MAX || v > best || (v == best && i < bid);
}

__global__ void argmax_kernel(const float* __restrict__ logits, int64_t V, int32_t* __restrict__ ids,
                              float* __restrict__ logprob) {
  __shared__ float sv[kThreads / 32];
  __shared__ int32_t si[kThreads / 32];
  __shared__ float ssum[kThreads / 32];
  const float* row = logits + blockIdx.x * V;
  // kNone: this thread saw no element (V < kThreads); it loses every comparison.
  constexpr int32_t kNone = INT32_MAX;
  float best = -INFINITY;
  int32_t bid = kNone;
  for (int64_t i = threadIdx.x; i < V; i += kThreads) {
    const float v = row[i];
    if (isnan(v)) continue;  // the CPU never moves to a NaN (only one at id 0 sticks: below)
    if (bid == kNone || v > best) best = v, bid = static_cast<int32_t>(i);  // ascending i: first max kept
  }
  for (int off = 16; off > 0; off /= 2) {
    const float ov = __shfl_xor_sync(kFullMask, best, off);
    const int32_t oi = __shfl_xor_sync(kFullMask, bid, off);
    if (takes(ov, oi, best, bid)) best = ov, bid = oi;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) sv[warp] = best, si[warp] = bid;
  __syncthreads();
  best = sv[0], bid = si[0];
  for (int w = 1; w < kThreads / 32; ++w)
    if (takes(sv[w], si[w], best, bid)) best = sv[w], bid = si[w];
  if (isnan(row[0])) bid = 0;  // the CPU sampler starts at id 0 and nothing compares greater than NaN
  if (!logprob) {
    if (threadIdx.x == 0) ids[blockIdx.x] = bid;
    return;
  }
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < V; i += kThreads) sum += expf(row[i] - best);
  sum = warp_sum(sum);
  if (lane == 0) ssum[warp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.f;
    for (int w = 0; w < kThreads / 32; ++w) total += ssum[w];
    ids[blockIdx.x] = bid;
    logprob[blockIdx.x] = -logf(total);  // log(exp(max - max) / total)
  }
}

}  // namespace

void CudaOps::argmax(const float* logits, int64_t rows, int64_t V, int32_t* out_ids, float* out_logprob) {
  if (rows <= 0) return;
  if (V <= 0 || V > INT32_MAX) fail("cuda::argmax_rows: vocabulary size ", V, " out of range");
  argmax_kernel<<<static_cast<unsigned>(rows), kThreads, 0, static_cast<cudaStream_t>(stream_)>>>(logits, V, out_ids,
                                                                                                out_logprob);
  EW_CUDA_CHECK_LAUNCH("argmax_kernel");
}

}  // namespace cuda
}  // namespace ew
