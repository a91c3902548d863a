// MLA attention on the latent cache with weight absorption (decode and prefill alike):
//  1. absorb: q_lat[t, h] = [W_kvb_k[h]^T q_nope[t, h], q_pe[t, h]]   (kv_rank + rope)
//  2. core:   s = scale * q_lat . entry(pos') for pos' <= pos[t]; p = softmax(s);
//             o_lat[t, h] = sum p * c_kv(pos')   (scores kept in a global scratch row)
//  3. up:     out[t, h] = W_kvb_v[h] . o_lat[t, h]
// Step 1 and 3 run a block per (token, head); step 2 a block per (token, 16 heads), so each
// cache row is read once per token. Exact softmax (max pass, then sum), fp32 throughout.
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "util/error.h"

namespace ew {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kHeadGroup = 16;  // heads per block in the core kernel
constexpr int kChunk = 64;      // positions staged per round in the core kernel

__device__ __forceinline__ const float* cache_entry(const LatentCacheView& c, int seq, int pos) {
  const int block = c.block_tables[static_cast<int64_t>(seq) * c.max_blocks + pos / c.block_size];
  return c.data + block * c.block_stride + static_cast<int64_t>(pos % c.block_size) * c.width;
}

__global__ void kv_write_kernel(LatentCacheView c, const float* __restrict__ latent, const int32_t* __restrict__ seq,
                                const int32_t* __restrict__ pos) {
  const int t = blockIdx.x;
  float* dst = const_cast<float*>(cache_entry(c, seq[t], pos[t]));
  for (int i = threadIdx.x; i < c.width; i += blockDim.x) dst[i] = latent[static_cast<int64_t>(t) * c.width + i];
}

template <typename W>
__global__ void absorb_kernel(const float* __restrict__ q, const W* __restrict__ wkvb, MlaShape s,
                              float* __restrict__ q_lat) {
  extern __shared__ float qn[];  // [nope]
  const int th = blockIdx.x, h = th % s.n_heads;
  const int qd = s.nope + s.rope, lw = s.kv_rank + s.rope;
  const float* qv = q + static_cast<int64_t>(th) * qd;
  for (int d = threadIdx.x; d < s.nope; d += blockDim.x) qn[d] = qv[d];
  __syncthreads();
  float* out = q_lat + static_cast<int64_t>(th) * lw;
  const W* wk = wkvb + static_cast<int64_t>(h) * (s.nope + s.v_dim) * s.kv_rank;
  for (int c = threadIdx.x; c < s.kv_rank; c += blockDim.x) {
    float acc = 0.f;
    for (int d = 0; d < s.nope; ++d) acc = fmaf(qn[d], to_f32(wk[static_cast<int64_t>(d) * s.kv_rank + c]), acc);
    out[c] = acc;
  }
  for (int d = threadIdx.x; d < s.rope; d += blockDim.x) out[s.kv_rank + d] = qv[s.nope + d];
}

// One block per (token, group of up to 16 heads): each cache row is read once per token
// and applied to all heads of the group (the heads share the latent, as in MQA).
//  scores: a warp per position; each lane accumulates its slice for every head, then 16
//          warp reductions; the raw scores go to the global scratch row of each head.
//  softmax: a warp per head (max and sum over that head's scores).
//  o_lat:  a thread per latent column, positions in chunks of 64 whose probabilities are
//          staged in shared memory.
__global__ void __launch_bounds__(kThreads)
    core_kernel(const float* __restrict__ q_lat, LatentCacheView c, const int32_t* __restrict__ seq,
                const int32_t* __restrict__ pos, MlaShape s, int64_t max_ctx, float* __restrict__ scores,
                float* __restrict__ o_lat) {
  extern __shared__ float qs[];  // [kHeadGroup][lw]
  __shared__ float ps[kHeadGroup][kChunk];
  __shared__ float hmax[kThreads / 32][kHeadGroup];
  __shared__ float hinv[kHeadGroup];
  const int t = blockIdx.x, h0 = blockIdx.y * kHeadGroup;
  const int nh = min(kHeadGroup, s.n_heads - h0);
  const int lw = s.kv_rank + s.rope, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int n_pos = pos[t] + 1, sq = seq[t];
  const int64_t row0 = static_cast<int64_t>(t) * s.n_heads + h0;  // (token, head) row of the group's first head
  for (int i = threadIdx.x; i < kHeadGroup * lw; i += kThreads) {
    const int hh = i / lw;
    qs[i] = hh < nh ? q_lat[(row0 + hh) * lw + i % lw] : 0.f;
  }
  __syncthreads();

  float mx[kHeadGroup];
#pragma unroll
  for (int hh = 0; hh < kHeadGroup; ++hh) mx[hh] = -INFINITY;
  for (int p = warp; p < n_pos; p += kThreads / 32) {
    const float* e = cache_entry(c, sq, p);
    float acc[kHeadGroup];
#pragma unroll
    for (int hh = 0; hh < kHeadGroup; ++hh) acc[hh] = 0.f;
    for (int i = lane; i < lw; i += 32) {
      const float v = e[i];
#pragma unroll
      for (int hh = 0; hh < kHeadGroup; ++hh) acc[hh] = fmaf(qs[hh * lw + i], v, acc[hh]);
    }
#pragma unroll
    for (int hh = 0; hh < kHeadGroup; ++hh) {
      const float sc = warp_sum(acc[hh]) * s.softmax_scale;
      mx[hh] = fmaxf(mx[hh], sc);
      if (lane == 0 && hh < nh) scores[(row0 + hh) * max_ctx + p] = sc;
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int hh = 0; hh < kHeadGroup; ++hh) hmax[warp][hh] = mx[hh];
  }
  __syncthreads();
  for (int hh = warp; hh < nh; hh += kThreads / 32) {
    float m = -INFINITY;
    for (int w = 0; w < kThreads / 32; ++w) m = fmaxf(m, hmax[w][hh]);
    float* sc = scores + (row0 + hh) * max_ctx;
    float sum = 0.f;
    for (int p = lane; p < n_pos; p += 32) {
      const float v = __expf(sc[p] - m);
      sc[p] = v;
      sum += v;
    }
    sum = warp_sum(sum);
    if (lane == 0) hinv[hh] = 1.f / sum;
  }
  __syncthreads();

  // Each thread owns latent columns c0 = threadIdx.x + k * kThreads.
  constexpr int kCols = 2;  // kv_rank <= kCols * kThreads (checked on the host)
  float acc[kCols][kHeadGroup];
#pragma unroll
  for (int q = 0; q < kCols; ++q)
#pragma unroll
    for (int hh = 0; hh < kHeadGroup; ++hh) acc[q][hh] = 0.f;
  for (int p0 = 0; p0 < n_pos; p0 += kChunk) {
    const int n = min(kChunk, n_pos - p0);
    for (int i = threadIdx.x; i < kHeadGroup * kChunk; i += kThreads) {
      const int hh = i / kChunk, j = i % kChunk;
      ps[hh][j] = (hh < nh && j < n) ? scores[(row0 + hh) * max_ctx + p0 + j] : 0.f;
    }
    __syncthreads();
    for (int j = 0; j < n; ++j) {
      const float* e = cache_entry(c, sq, p0 + j);
#pragma unroll
      for (int q = 0; q < kCols; ++q) {
        const int col = threadIdx.x + q * kThreads;
        if (col < s.kv_rank) {
          const float v = e[col];
#pragma unroll
          for (int hh = 0; hh < kHeadGroup; ++hh) acc[q][hh] = fmaf(ps[hh][j], v, acc[q][hh]);
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int q = 0; q < kCols; ++q) {
    const int col = threadIdx.x + q * kThreads;
    if (col < s.kv_rank)
#pragma unroll
      for (int hh = 0; hh < kHeadGroup; ++hh)
        if (hh < nh) o_lat[(row0 + hh) * s.kv_rank + col] = acc[q][hh] * hinv[hh];
  }
}

// One warp per output row r of head h: out[t, h*v + r] = W_kvb[h*(nope+v) + nope + r, :] . o_lat[t, h].
template <typename W>
__global__ void up_kernel(const float* __restrict__ o_lat, const W* __restrict__ wkvb, MlaShape s,
                          float* __restrict__ out) {
  const int th = blockIdx.x, h = th % s.n_heads, lane = threadIdx.x % 32;
  const int r = blockIdx.y * (kThreads / 32) + threadIdx.x / 32;
  if (r >= s.v_dim) return;
  const W* wr = wkvb + (static_cast<int64_t>(h) * (s.nope + s.v_dim) + s.nope + r) * s.kv_rank;
  const float* o = o_lat + static_cast<int64_t>(th) * s.kv_rank;
  float acc = 0.f;
  for (int i = lane; i < s.kv_rank; i += 32) acc = fmaf(to_f32(wr[i]), o[i], acc);
  acc = warp_sum(acc);
  if (lane == 0) out[static_cast<int64_t>(th) * s.v_dim + r] = acc;
}

size_t align_up(size_t n) { return (n + 255) & ~size_t(255); }

template <typename W>
void launch(const float* q, int64_t T, const LatentCacheView& c, const int32_t* seq, const int32_t* pos, const W* w,
            const MlaShape& s, int64_t max_ctx, float* out, void* ws, cudaStream_t st) {
  const int64_t th = T * s.n_heads;
  char* p = static_cast<char*>(ws);
  float* q_lat = reinterpret_cast<float*>(p);
  p += align_up(th * (s.kv_rank + s.rope) * 4);
  float* o_lat = reinterpret_cast<float*>(p);
  p += align_up(th * s.kv_rank * 4);
  float* scores = reinterpret_cast<float*>(p);
  absorb_kernel<W><<<static_cast<unsigned>(th), kThreads, s.nope * sizeof(float), st>>>(q, w, s, q_lat);
  EW_CUDA_CHECK_LAUNCH("mla absorb_kernel");
  const dim3 core_grid(static_cast<unsigned>(T), static_cast<unsigned>((s.n_heads + kHeadGroup - 1) / kHeadGroup));
  const size_t core_smem = static_cast<size_t>(kHeadGroup) * (s.kv_rank + s.rope) * sizeof(float);
  core_kernel<<<core_grid, kThreads, core_smem, st>>>(q_lat, c, seq, pos, s, max_ctx, scores, o_lat);
  EW_CUDA_CHECK_LAUNCH("mla core_kernel");
  const dim3 grid(static_cast<unsigned>(th), static_cast<unsigned>((s.v_dim + kThreads / 32 - 1) / (kThreads / 32)));
  up_kernel<W><<<grid, kThreads, 0, st>>>(o_lat, w, s, out);
  EW_CUDA_CHECK_LAUNCH("mla up_kernel");
}

}  // namespace

void kv_write(const LatentCacheView& cache, const float* latent, int64_t T, const int32_t* tok_seq,
              const int32_t* tok_pos, void* stream) {
  if (T <= 0) return;
  kv_write_kernel<<<static_cast<unsigned>(T), 128, 0, static_cast<cudaStream_t>(stream)>>>(cache, latent, tok_seq,
                                                                                          tok_pos);
  EW_CUDA_CHECK_LAUNCH("kv_write_kernel");
}

size_t mla_workspace_bytes(int64_t T, const MlaShape& s, int64_t max_ctx) {
  const int64_t th = T * s.n_heads;
  return align_up(th * (s.kv_rank + s.rope) * 4) + align_up(th * s.kv_rank * 4) + align_up(th * max_ctx * 4);
}

void mla_attention(const float* q, int64_t T, const LatentCacheView& cache, const int32_t* tok_seq,
                   const int32_t* tok_pos, const void* w_kvb, DType wtype, const MlaShape& s, int64_t max_ctx,
                   float* out, void* workspace, void* stream) {
  if (T <= 0) return;
  if (s.n_heads <= 0 || s.nope <= 0 || s.rope < 0 || s.v_dim <= 0 || s.kv_rank <= 0 ||
      cache.width != s.kv_rank + s.rope || max_ctx <= 0)
    fail("cuda::mla_attention: inconsistent shape (cache width ", cache.width, ", kv_rank ", s.kv_rank, " + rope ",
         s.rope, ")");
  // Shared memory of the core kernel: the group's queries (dynamic) + 4.6 KB static.
  if (s.kv_rank > 2 * kThreads || kHeadGroup * (s.kv_rank + s.rope) * 4 > 40 * 1024)
    fail("cuda::mla_attention: kv_rank ", s.kv_rank, " + rope ", s.rope, " too large (kv_rank <= 512, latent <= 640)");
  auto st = static_cast<cudaStream_t>(stream);
  switch (wtype) {
    case DType::BF16:
      return launch(q, T, cache, tok_seq, tok_pos, static_cast<const __nv_bfloat16*>(w_kvb), s, max_ctx, out, workspace, st);
    case DType::F16:
      return launch(q, T, cache, tok_seq, tok_pos, static_cast<const __half*>(w_kvb), s, max_ctx, out, workspace, st);
    case DType::F32:
      return launch(q, T, cache, tok_seq, tok_pos, static_cast<const float*>(w_kvb), s, max_ctx, out, workspace, st);
  }
}

}  // namespace cuda
}  // namespace ew
