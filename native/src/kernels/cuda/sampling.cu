// Greedy sampling on the device: one block per row finds the first maximum (ties to the
// lower id, as the CPU sampler) and the log-softmax at it (max pass, then a sum pass).
#include <cfloat>

#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "util/error.h"

namespace ew {
namespace cuda {
namespace {

constexpr int kThreads = 512;

__global__ void argmax_kernel(const float* __restrict__ logits, int64_t V, int32_t* __restrict__ ids,
                              float* __restrict__ logprob) {
  __shared__ float sv[kThreads / 32];
  __shared__ int32_t si[kThreads / 32];
  __shared__ float ssum[kThreads / 32];
  const float* row = logits + blockIdx.x * V;
  float best = -FLT_MAX;
  int32_t bid = INT32_MAX;
  for (int64_t i = threadIdx.x; i < V; i += kThreads) {
    const float v = row[i];
    if (v > best) best = v, bid = static_cast<int32_t>(i);  // ascending i: first max kept
  }
  for (int off = 16; off > 0; off /= 2) {
    const float ov = __shfl_xor_sync(kFullMask, best, off);
    const int32_t oi = __shfl_xor_sync(kFullMask, bid, off);
    if (ov > best || (ov == best && oi < bid)) best = ov, bid = oi;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) sv[warp] = best, si[warp] = bid;
  __syncthreads();
  best = sv[0], bid = si[0];
  for (int w = 1; w < kThreads / 32; ++w)
    if (sv[w] > best || (sv[w] == best && si[w] < bid)) best = sv[w], bid = si[w];
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

void argmax_rows(const float* logits, int64_t rows, int64_t V, int32_t* out_ids, float* out_logprob, void* stream) {
  if (rows <= 0) return;
  if (V <= 0 || V > INT32_MAX) fail("cuda::argmax_rows: vocabulary size ", V, " out of range");
  argmax_kernel<<<static_cast<unsigned>(rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(logits, V, out_ids,
                                                                                                out_logprob);
  EW_CUDA_CHECK_LAUNCH("argmax_kernel");
}

}  // namespace cuda
}  // namespace ew
