// CudaOps::mla_attention: MLA on the latent cache with weight absorption (decode and prefill alike):
//  1. absorb: q_lat[t, h] = [W_kvb_k[h]^T q_nope[t, h], q_pe[t, h]]   (kv_rank + rope)
//  2. core:   s = scale * q_lat . entry(pos') for pos' <= pos[t]; p = softmax(s);
//             o_lat[t, h] = sum p * c_kv(pos')   (scores kept in a global scratch row)
//  3. up:     out[t, h] = W_kvb_v[h] . o_lat[t, h]
// Step 1 and 3 run a block per (token, head); step 2 a block per (token, 16 heads), so each
// cache row is read once per token. Exact softmax (max pass, then sum), fp32 throughout.
// Few (token, head group) blocks (batch-1 decode) would leave most SMs idle at long context,
// so step 2 then also splits each token's positions over blocks (flash-decoding): every
// split writes its max, sum and unnormalised o_lat, and a reduce kernel rescales and adds
// them (exact up to rounding: each split's exponentials are rebased to the global max).
#include <algorithm>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/device_math.cuh"
#include "util/cuda/cuda_util.h"
#include "util/error.h"

namespace ew {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kHeadGroup = 16;  // heads per block in the core kernel
constexpr int kChunk = 64;      // positions staged per round in the core kernel
// Position splits: chosen on the host from T, the head groups and max_ctx only (so the
// workspace size is known without the device), aiming at ~2 blocks per SM of an H100.
constexpr int kTargetBlocks = 264;
constexpr int kMinSplit = 128;  // positions per split at least (a token's short context stays in one)
constexpr int kMaxSplits = 64;

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
//  split:  blockIdx.z of n_splits takes positions [split * len, (split + 1) * len) with
//          len = max(ceil(n_pos / n_splits), kMinSplit); with n_splits > 1 it writes
//          part_ml[row, split] = (max, sum) and part_o[row, split] = unnormalised o_lat
//          (an empty split: -inf, 0, zeros) instead of o_lat.
__global__ void __launch_bounds__(kThreads)
    core_kernel(const float* __restrict__ q_lat, KvLayerView c, const int32_t* __restrict__ seq,
                const int32_t* __restrict__ pos, MlaShape s, int64_t max_ctx, float* __restrict__ scores,
                float* __restrict__ o_lat, int n_splits, float* __restrict__ part_ml, float* __restrict__ part_o) {
  extern __shared__ float qs[];  // [kHeadGroup][lw]
  __shared__ float ps[kHeadGroup][kChunk];
  __shared__ float hmax[kThreads / 32][kHeadGroup];
  __shared__ float hinv[kHeadGroup];
  __shared__ float hm[kHeadGroup], hsum[kHeadGroup];
  const int t = blockIdx.x, h0 = blockIdx.y * kHeadGroup, split = blockIdx.z;
  const int nh = min(kHeadGroup, s.n_heads - h0);
  const int lw = s.kv_rank + s.rope, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  // Clamped to max_ctx: a caller breaking max_ctx > every tok_pos gets wrong output, never
  // writes past its scratch row.
  const int n_pos = static_cast<int>(min(static_cast<int64_t>(pos[t]) + 1, max_ctx)), sq = seq[t];
  int p_begin = 0, p_end = n_pos;
  if (n_splits > 1) {
    const int len = max((n_pos + n_splits - 1) / n_splits, kMinSplit);
    p_begin = min(n_pos, split * len);
    p_end = min(n_pos, p_begin + len);
  }
  const int64_t row0 = static_cast<int64_t>(t) * s.n_heads + h0;  // (token, head) row of the group's first head
  for (int i = threadIdx.x; i < kHeadGroup * lw; i += kThreads) {
    const int hh = i / lw;
    qs[i] = hh < nh ? q_lat[(row0 + hh) * lw + i % lw] : 0.f;
  }
  __syncthreads();

  float mx[kHeadGroup];
#pragma unroll
  for (int hh = 0; hh < kHeadGroup; ++hh) mx[hh] = -INFINITY;
  for (int p = p_begin + warp; p < p_end; p += kThreads / 32) {
    const float* e = latent_entry(c, sq, p);
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
    for (int p = p_begin + lane; p < p_end; p += 32) {
      const float v = __expf(sc[p] - m);
      sc[p] = v;
      sum += v;
    }
    sum = warp_sum(sum);
    if (lane == 0) hinv[hh] = 1.f / sum, hm[hh] = m, hsum[hh] = sum;
  }
  __syncthreads();

  // Each thread owns latent columns c0 = threadIdx.x + k * kThreads.
  constexpr int kCols = 2;  // kv_rank <= kCols * kThreads (checked on the host)
  float acc[kCols][kHeadGroup];
#pragma unroll
  for (int q = 0; q < kCols; ++q)
#pragma unroll
    for (int hh = 0; hh < kHeadGroup; ++hh) acc[q][hh] = 0.f;
  for (int p0 = p_begin; p0 < p_end; p0 += kChunk) {
    const int n = min(kChunk, p_end - p0);
    for (int i = threadIdx.x; i < kHeadGroup * kChunk; i += kThreads) {
      const int hh = i / kChunk, j = i % kChunk;
      ps[hh][j] = (hh < nh && j < n) ? scores[(row0 + hh) * max_ctx + p0 + j] : 0.f;
    }
    __syncthreads();
    for (int j = 0; j < n; ++j) {
      const float* e = latent_entry(c, sq, p0 + j);
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
  if (n_splits > 1) {
    for (int hh = threadIdx.x; hh < nh; hh += kThreads) {
      float* ml = part_ml + ((row0 + hh) * n_splits + split) * 2;
      ml[0] = hm[hh], ml[1] = hsum[hh];
    }
  }
#pragma unroll
  for (int q = 0; q < kCols; ++q) {
    const int col = threadIdx.x + q * kThreads;
    if (col < s.kv_rank)
#pragma unroll
      for (int hh = 0; hh < kHeadGroup; ++hh) {
        if (hh >= nh) continue;
        if (n_splits > 1)
          part_o[((row0 + hh) * n_splits + split) * s.kv_rank + col] = acc[q][hh];
        else
          o_lat[(row0 + hh) * s.kv_rank + col] = acc[q][hh] * hinv[hh];
      }
  }
}

// One block per (token, head) row: o_lat = sum_s e_s * part_o[s] / sum_s e_s * l_s with
// e_s = exp(m_s - max m). Split 0 always holds a position, so max m is finite; empty
// splits (l_s = 0) get weight 0 without evaluating exp(-inf - -inf).
__global__ void __launch_bounds__(kThreads)
    split_reduce_kernel(const float* __restrict__ part_ml, const float* __restrict__ part_o, int n_splits, int kv_rank,
                        float* __restrict__ o_lat) {
  __shared__ float e[kMaxSplits];
  __shared__ float inv_l;
  const int64_t row = blockIdx.x;
  const float* ml = part_ml + row * n_splits * 2;
  if (threadIdx.x == 0) {
    float m = -INFINITY;
    for (int i = 0; i < n_splits; ++i)
      if (ml[2 * i + 1] > 0.f) m = fmaxf(m, ml[2 * i]);
    float l = 0.f;
    for (int i = 0; i < n_splits; ++i) {
      e[i] = ml[2 * i + 1] > 0.f ? expf(ml[2 * i] - m) : 0.f;
      l = fmaf(e[i], ml[2 * i + 1], l);
    }
    inv_l = 1.f / l;
  }
  __syncthreads();
  const float* po = part_o + row * n_splits * kv_rank;
  for (int col = threadIdx.x; col < kv_rank; col += blockDim.x) {
    float acc = 0.f;
    for (int i = 0; i < n_splits; ++i) acc = fmaf(e[i], po[static_cast<int64_t>(i) * kv_rank + col], acc);
    o_lat[row * kv_rank + col] = acc * inv_l;
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

int head_groups(const MlaShape& s) { return (s.n_heads + kHeadGroup - 1) / kHeadGroup; }

// 1 (no split) once T * head groups fills half the target, else as many splits as the
// target needs, bounded by max_ctx / kMinSplit and kMaxSplits.
int position_splits(int64_t T, const MlaShape& s, int64_t max_ctx) {
  const int64_t blocks = T * head_groups(s);
  if (blocks >= kTargetBlocks / 2) return 1;
  const int64_t n = std::min<int64_t>({kTargetBlocks / blocks, max_ctx / kMinSplit, kMaxSplits});
  return static_cast<int>(std::max<int64_t>(n, 1));
}

struct MlaScratch {
  float *q_lat, *o_lat, *scores, *part_ml, *part_o;
};
// Layout of the workspace; with base == nullptr only the end offset (its size) matters.
size_t carve(char* base, int64_t T, const MlaShape& s, int64_t max_ctx, int n_splits, MlaScratch* out) {
  const int64_t th = T * s.n_heads;
  size_t off = 0;
  auto take = [&](size_t bytes) {
    float* p = base ? reinterpret_cast<float*>(base + off) : nullptr;
    off += align_up(bytes);
    return p;
  };
  MlaScratch m;
  m.q_lat = take(th * (s.kv_rank + s.rope) * 4);
  m.o_lat = take(th * s.kv_rank * 4);
  m.scores = take(th * max_ctx * 4);
  m.part_ml = n_splits > 1 ? take(th * n_splits * 2 * 4) : nullptr;
  m.part_o = n_splits > 1 ? take(th * n_splits * s.kv_rank * 4) : nullptr;
  if (out) *out = m;
  return off;
}

template <typename W>
void launch(const float* q, int64_t T, const KvLayerView& c, const int32_t* seq, const int32_t* pos, const W* w,
            const MlaShape& s, int64_t max_ctx, float* out, void* ws, cudaStream_t st) {
  const int64_t th = T * s.n_heads;
  const int n_splits = position_splits(T, s, max_ctx);
  MlaScratch m;
  carve(static_cast<char*>(ws), T, s, max_ctx, n_splits, &m);
  float* q_lat = m.q_lat;
  float* o_lat = m.o_lat;
  absorb_kernel<W><<<static_cast<unsigned>(th), kThreads, s.nope * sizeof(float), st>>>(q, w, s, q_lat);
  EW_CUDA_CHECK_LAUNCH("mla absorb_kernel");
  const dim3 core_grid(static_cast<unsigned>(T), static_cast<unsigned>(head_groups(s)),
                       static_cast<unsigned>(n_splits));
  const size_t core_smem = static_cast<size_t>(kHeadGroup) * (s.kv_rank + s.rope) * sizeof(float);
  core_kernel<<<core_grid, kThreads, core_smem, st>>>(q_lat, c, seq, pos, s, max_ctx, m.scores, o_lat, n_splits,
                                                       m.part_ml, m.part_o);
  EW_CUDA_CHECK_LAUNCH("mla core_kernel");
  if (n_splits > 1) {
    split_reduce_kernel<<<static_cast<unsigned>(th), kThreads, 0, st>>>(m.part_ml, m.part_o, n_splits, s.kv_rank,
                                                                        o_lat);
    EW_CUDA_CHECK_LAUNCH("mla split_reduce_kernel");
  }
  const dim3 grid(static_cast<unsigned>(th), static_cast<unsigned>((s.v_dim + kThreads / 32 - 1) / (kThreads / 32)));
  up_kernel<W><<<grid, kThreads, 0, st>>>(o_lat, w, s, out);
  EW_CUDA_CHECK_LAUNCH("mla up_kernel");
}

}  // namespace

size_t CudaOps::mla_workspace_bytes(int64_t T, const MlaShape& s, int64_t max_ctx) const {
  if (T <= 0 || s.n_heads <= 0 || max_ctx <= 0) return 0;
  return carve(nullptr, T, s, max_ctx, position_splits(T, s, max_ctx), nullptr);
}

int mla_position_splits(int64_t T, const MlaShape& s, int64_t max_ctx) {
  if (T <= 0 || s.n_heads <= 0 || max_ctx <= 0) return 1;
  return position_splits(T, s, max_ctx);
}

void CudaOps::mla_attention(const float* q, int64_t T, const KvLayerView& cache, const int32_t* tok_seq,
                            const int32_t* tok_pos, Weight w_kvb, const MlaShape& s, int64_t max_ctx, float* out,
                            void* workspace) {
  if (T <= 0) return;
  if (cache.dtype != DType::F32)
    fail("cuda::mla_attention: the CUDA latent cache is fp32, not ", dtype_name(cache.dtype));
  if (s.n_heads <= 0 || s.nope <= 0 || s.rope < 0 || s.v_dim <= 0 || s.kv_rank <= 0 ||
      cache.width != s.kv_rank + s.rope || max_ctx <= 0)
    fail("cuda::mla_attention: inconsistent shape (cache width ", cache.width, ", kv_rank ", s.kv_rank, " + rope ",
         s.rope, ")");
  // Shared memory of the core kernel: the group's queries (dynamic) + 4.8 KB static, under 48 KB.
  if (s.kv_rank > 2 * kThreads || kHeadGroup * (s.kv_rank + s.rope) * 4 > 40 * 1024)
    fail("cuda::mla_attention: kv_rank ", s.kv_rank, " + rope ", s.rope, " too large (kv_rank <= 512, latent <= 640)");
  auto st = static_cast<cudaStream_t>(stream_);
  switch (w_kvb.dtype) {
    case DType::BF16:
      return launch(q, T, cache, tok_seq, tok_pos, static_cast<const __nv_bfloat16*>(w_kvb.data), s, max_ctx, out,
                    workspace, st);
    case DType::F16:
      return launch(q, T, cache, tok_seq, tok_pos, static_cast<const __half*>(w_kvb.data), s, max_ctx, out, workspace,
                    st);
    case DType::F32:
      return launch(q, T, cache, tok_seq, tok_pos, static_cast<const float*>(w_kvb.data), s, max_ctx, out, workspace,
                    st);
  }
  fail("cuda::mla_attention: unknown kv_b dtype ", static_cast<int>(w_kvb.dtype));
}

}  // namespace cuda
}  // namespace ew
