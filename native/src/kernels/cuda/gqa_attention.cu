// CudaOps::gqa_attention: grouped-query attention over the block-paged cache, flash-decoding
// style. One block per (token, KV head, position split) runs the G = n_heads / kv_heads
// query heads that share the KV head, so each cache row is read once for all of them:
//  - positions in chunks of 32: a warp per position scores it for every head (lanes over
//    head_dim, then a butterfly per head); an online softmax per head (a warp per head,
//    lane j = position j of the chunk) rescales the running sums; every thread owns some
//    (head, dim) output elements and adds the chunk's values in position order;
//  - splits are fixed runs of kSplit positions (split z: [z * kSplit, (z + 1) * kSplit)),
//    so a token's partial sums depend on its own positions only; with more than one split
//    a reduce kernel rescales and adds the token's non-empty splits in order. A token is
//    therefore computed the same way in any batch and any context bucket (a single split
//    and the reduce of one split give the same bits: exp(0) = 1).
// Exact expf, fp32 throughout; bf16 caches are widened on load.
#include <algorithm>
#include <climits>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/device_math.cuh"
#include "util/cuda/cuda_util.h"
#include "util/error.h"

namespace ew {
namespace cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 32;       // positions per online-softmax round (one per lane)
constexpr int kSplit = 256;      // positions per split
constexpr int kMaxGroup = 16;    // query heads per KV head
constexpr int kMaxHeadDim = 256;
constexpr int kMaxPerThread = kMaxGroup * kMaxHeadDim / kThreads;  // output elements a thread owns

int splits_for(int64_t max_ctx) { return static_cast<int>((max_ctx + kSplit - 1) / kSplit); }

template <typename E>
__global__ void __launch_bounds__(kThreads)
    gqa_core_kernel(const float* __restrict__ q, KvLayerView c, const int32_t* __restrict__ seq,
                    const int32_t* __restrict__ pos, GqaShape s, int n_splits, float* __restrict__ out,
                    float* __restrict__ part_ml, float* __restrict__ part_o) {
  extern __shared__ float qs[];  // [G][D]
  __shared__ float sc[kMaxGroup][kChunk];
  __shared__ float alpha[kMaxGroup], run_m[kMaxGroup], run_l[kMaxGroup];
  __shared__ const E* rows[kChunk];  // the chunk's cache entries
  const int t = blockIdx.x, g = blockIdx.y, split = blockIdx.z;
  const int D = s.head_dim, G = s.n_heads / s.kv_heads, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int n_pos = pos[t] + 1, sq = seq[t];
  const int p_begin = split * kSplit, p_end = min(n_pos, p_begin + kSplit);
  if (p_begin >= n_pos) return;  // an empty split: the reduce never reads it
  const int64_t row0 = static_cast<int64_t>(t) * s.n_heads + static_cast<int64_t>(g) * G;  // (token, head) row of head 0
  for (int i = threadIdx.x; i < G * D; i += kThreads) qs[i] = q[row0 * D + i];
  if (threadIdx.x < kMaxGroup) run_m[threadIdx.x] = -INFINITY, run_l[threadIdx.x] = 0.f;
  __syncthreads();

  const int n_mine = (G * D + kThreads - 1 - threadIdx.x) / kThreads;  // elements threadIdx.x + i * kThreads
  float acc[kMaxPerThread];
#pragma unroll
  for (int i = 0; i < kMaxPerThread; ++i) acc[i] = 0.f;
  const int64_t k_off = static_cast<int64_t>(g) * D, v_off = static_cast<int64_t>(s.kv_heads + g) * D;

  for (int p0 = p_begin; p0 < p_end; p0 += kChunk) {
    const int n = min(kChunk, p_end - p0);
    if (threadIdx.x < n) rows[threadIdx.x] = cache_entry<const E>(c, sq, p0 + threadIdx.x);
    __syncthreads();
    // Scores: a warp per position, every head.
    for (int j = warp; j < n; j += kWarps) {
      const E* k = rows[j] + k_off;
      float part[kMaxGroup];
#pragma unroll
      for (int h = 0; h < kMaxGroup; ++h) part[h] = 0.f;
      for (int d = lane; d < D; d += 32) {
        const float kv = to_f32(k[d]);
#pragma unroll
        for (int h = 0; h < kMaxGroup; ++h)
          if (h < G) part[h] = fmaf(qs[h * D + d], kv, part[h]);
      }
#pragma unroll
      for (int h = 0; h < kMaxGroup; ++h) {
        if (h >= G) break;
        const float v = warp_sum(part[h]);
        if (lane == 0) sc[h][j] = v * s.softmax_scale;
      }
    }
    __syncthreads();
    // Online softmax: a warp per head, lane j = position j.
    for (int h = warp; h < G; h += kWarps) {
      const float v = lane < n ? sc[h][lane] : -INFINITY;
      const float m_new = fmaxf(run_m[h], warp_max(v));  // finite: the chunk holds a position
      const float e = lane < n ? expf(v - m_new) : 0.f;
      const float sum = warp_sum(e);
      sc[h][lane] = e;
      __syncwarp();  // every lane has read run_m[h] before lane 0 moves it
      if (lane == 0) {
        const float a = expf(run_m[h] - m_new);  // 0 on the first chunk (exp(-inf))
        alpha[h] = a;
        run_l[h] = fmaf(run_l[h], a, sum);
        run_m[h] = m_new;
      }
    }
    __syncthreads();
    // Values: each thread's (head, dim) elements, positions in order.
#pragma unroll
    for (int i = 0; i < kMaxPerThread; ++i) {
      if (i >= n_mine) break;
      const int e = threadIdx.x + i * kThreads, h = e / D, d = e % D;
      float a = acc[i] * alpha[h];
      for (int j = 0; j < n; ++j) a = fmaf(sc[h][j], to_f32(rows[j][v_off + d]), a);
      acc[i] = a;
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < kMaxPerThread; ++i) {
    if (i >= n_mine) break;
    const int e = threadIdx.x + i * kThreads, h = e / D, d = e % D;
    const int64_t row = row0 + h;
    if (n_splits == 1)
      out[row * D + d] = acc[i] * (1.f / run_l[h]);
    else
      part_o[(row * n_splits + split) * D + d] = acc[i];
  }
  if (n_splits > 1 && threadIdx.x < G) {
    float* ml = part_ml + ((row0 + threadIdx.x) * n_splits + split) * 2;
    ml[0] = run_m[threadIdx.x];
    ml[1] = run_l[threadIdx.x];
  }
}

// One block per (token, head) row: out = sum_z e_z o_z / sum_z e_z l_z over the token's
// non-empty splits z (in order), e_z = exp(m_z - max m).
__global__ void __launch_bounds__(kThreads)
    gqa_reduce_kernel(const float* __restrict__ part_ml, const float* __restrict__ part_o,
                      const int32_t* __restrict__ pos, int n_heads, int n_splits, int D, float* __restrict__ out) {
  const int64_t row = blockIdx.x;
  const int t = static_cast<int>(row / n_heads);
  const int used = (pos[t] + 1 + kSplit - 1) / kSplit;
  const float* ml = part_ml + row * n_splits * 2;
  float m = -INFINITY;
  for (int z = 0; z < used; ++z) m = fmaxf(m, ml[2 * z]);
  float l = 0.f;
  for (int z = 0; z < used; ++z) l = fmaf(expf(ml[2 * z] - m), ml[2 * z + 1], l);
  const float inv = 1.f / l;
  const float* po = part_o + row * n_splits * D;
  for (int d = threadIdx.x; d < D; d += kThreads) {
    float a = 0.f;
    for (int z = 0; z < used; ++z) a = fmaf(expf(ml[2 * z] - m), po[static_cast<int64_t>(z) * D + d], a);
    out[row * D + d] = a * inv;
  }
}

size_t align_up(size_t n) { return (n + 255) & ~size_t(255); }

template <typename E>
void launch(const float* q, int64_t T, const KvLayerView& c, const int32_t* seq, const int32_t* pos,
            const GqaShape& s, int64_t max_ctx, float* out, void* ws, cudaStream_t st) {
  const int n_splits = splits_for(max_ctx);
  const int64_t rows = T * s.n_heads;
  float* part_ml = n_splits > 1 ? static_cast<float*>(ws) : nullptr;
  float* part_o = n_splits > 1 ? reinterpret_cast<float*>(static_cast<char*>(ws) + align_up(rows * n_splits * 2 * 4))
                               : nullptr;
  const dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>(s.kv_heads), static_cast<unsigned>(n_splits));
  const size_t smem = static_cast<size_t>(s.n_heads / s.kv_heads) * s.head_dim * sizeof(float);
  gqa_core_kernel<E><<<grid, kThreads, smem, st>>>(q, c, seq, pos, s, n_splits, out, part_ml, part_o);
  EW_CUDA_CHECK_LAUNCH("gqa_core_kernel");
  if (n_splits > 1) {
    gqa_reduce_kernel<<<static_cast<unsigned>(rows), kThreads, 0, st>>>(part_ml, part_o, pos, s.n_heads, n_splits,
                                                                         s.head_dim, out);
    EW_CUDA_CHECK_LAUNCH("gqa_reduce_kernel");
  }
}

}  // namespace

int gqa_position_splits(int64_t, const GqaShape&, int64_t max_ctx) { return max_ctx > 0 ? splits_for(max_ctx) : 1; }

size_t CudaOps::gqa_workspace_bytes(int64_t T, const GqaShape& s, int64_t max_ctx) const {
  if (T <= 0 || s.n_heads <= 0 || max_ctx <= 0) return 0;
  const int n_splits = splits_for(max_ctx);
  if (n_splits == 1) return 0;
  const size_t rows = static_cast<size_t>(T) * s.n_heads;
  return align_up(rows * n_splits * 2 * 4) + align_up(rows * n_splits * s.head_dim * 4);
}

void CudaOps::gqa_attention(const float* q, int64_t T, const KvLayerView& cache, const int32_t* seq,
                            const int32_t* pos, const GqaShape& s, int64_t max_ctx, float* out, void* workspace) {
  if (T <= 0) return;
  if (s.n_heads <= 0 || s.kv_heads <= 0 || s.n_heads % s.kv_heads != 0 || s.head_dim <= 0 ||
      cache.width != int64_t{2} * s.kv_heads * s.head_dim || max_ctx <= 0)
    fail("cuda::gqa_attention: ", s.n_heads, " query heads over ", s.kv_heads, " KV heads of ", s.head_dim,
         " (cache entries of ", cache.width, ")");
  if (s.n_heads / s.kv_heads > kMaxGroup || s.head_dim > kMaxHeadDim)
    fail("cuda::gqa_attention: ", s.n_heads / s.kv_heads, " query heads per KV head of ", s.head_dim,
         " dims unsupported (at most ", kMaxGroup, " heads of ", kMaxHeadDim, ")");
  if (T > 2147483647 || s.kv_heads > 65535 || splits_for(max_ctx) > 65535)
    fail("cuda::gqa_attention: ", T, " tokens x ", s.kv_heads, " KV heads x ", splits_for(max_ctx),
         " splits exceed the grid");
  auto st = static_cast<cudaStream_t>(stream_);
  switch (cache.dtype) {
    case DType::F32: return launch<float>(q, T, cache, seq, pos, s, max_ctx, out, workspace, st);
    case DType::BF16: return launch<__nv_bfloat16>(q, T, cache, seq, pos, s, max_ctx, out, workspace, st);
    default: fail("cuda::gqa_attention: cache dtype ", dtype_name(cache.dtype), " unsupported (F32 or BF16)");
  }
}

}  // namespace cuda
}  // namespace ew
