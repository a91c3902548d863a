// CudaOps::moe: grouped MoE over expert slots, four launches per layer:
//  1. align: (t, j) entries sorted by slot into groups padded to block_m, slot per group;
//  2. gate+up: every group of every slot in one launch, SiLU(gate) * up into h[(t, j), I];
//  3. down: rows[(t, j), H] = weight(t, j) * down_slot . h[(t, j)];
//  4. combine: y[t] (+)= sum over j in order of rows[(t, j)].
// Steps 2 and 3 stream each slot's weights once per group with 16-byte loads (one warp
// per output row, the group's tokens in registers), the bandwidth-bound shape of decode.
// Each (t, j) value is one dot product whose order depends only on H or I, and step 4
// sums in j order, so a token's output never depends on the rest of the batch.
#include <algorithm>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/device_math.cuh"
#include "util/cuda/cuda_util.h"
#include "util/error.h"

namespace ew {
namespace cuda {
namespace {

constexpr int kAlignThreads = 1024;
constexpr int kRowWarps = 8;
constexpr int kMaxAlignSlots = 5000;  // two int arrays of this size in 48 KB of shared memory

// Launched with exactly kAlignThreads threads (the scan assumes 32 full warps); the bound
// also keeps ptxas under the 64 registers a 1024-thread block allows.
__global__ void __launch_bounds__(kAlignThreads)
    align_kernel(const int32_t* __restrict__ slots, int n, int S, int B, int max_padded,
                 int32_t* __restrict__ sorted, int32_t* __restrict__ block_slot, int32_t* n_blocks) {
  extern __shared__ int32_t sh[];
  int32_t* count = sh;          // [S], then reused as the scatter cursor
  int32_t* offset = sh + S;     // [S + 1]
  for (int s = threadIdx.x; s < S; s += blockDim.x) count[s] = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int s = slots[i];
    if (s >= 0 && s < S) atomicAdd(&count[s], 1);
  }
  __syncthreads();
  // Exclusive prefix sum of the padded counts, 1024 slots per round (a warp scan, then a
  // scan of the 32 warp totals), carried across rounds.
  __shared__ int32_t warp_sum[kAlignThreads / 32];
  __shared__ int32_t carry;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int base = 0; base < S; base += kAlignThreads) {
    const int s = base + threadIdx.x;
    const int v = s < S ? (count[s] + B - 1) / B * B : 0;
    int x = v;
#pragma unroll
    for (int off = 1; off < 32; off *= 2) {
      const int y = __shfl_up_sync(kFullMask, x, off);
      if (lane >= off) x += y;
    }
    if (lane == 31) warp_sum[warp] = x;
    __syncthreads();
    if (warp == 0) {
      int w = warp_sum[lane];
#pragma unroll
      for (int off = 1; off < 32; off *= 2) {
        const int y = __shfl_up_sync(kFullMask, w, off);
        if (lane >= off) w += y;
      }
      warp_sum[lane] = w;  // inclusive totals of warps 0..lane
    }
    __syncthreads();
    const int excl = carry + x - v + (warp > 0 ? warp_sum[warp - 1] : 0);
    if (s < S) offset[s] = excl;
    __syncthreads();
    if (threadIdx.x == kAlignThreads - 1) carry = excl + v;
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    offset[S] = carry;
    *n_blocks = carry / B;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < max_padded; i += blockDim.x) sorted[i] = n;
  for (int b = threadIdx.x; b < max_padded / B; b += blockDim.x) block_slot[b] = -1;
  __syncthreads();
  for (int s = threadIdx.x; s < S; s += blockDim.x) {
    for (int b = offset[s] / B; b < offset[s + 1] / B; ++b) block_slot[b] = s;
    count[s] = offset[s];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int s = slots[i];
    if (s >= 0 && s < S) sorted[atomicAdd(&count[s], 1)] = i;
  }
}

// One warp per weight row r of the slot's [rows, K] matrix (or two matrices, gate and up,
// read together), applied to the group's B entries.
template <typename W, int B, bool kGateUp>
__global__ void __launch_bounds__(kRowWarps * 32)
    grouped_rows_kernel(const float* __restrict__ in, int64_t in_row_of_token, int k, int n_entries,
                        const int32_t* __restrict__ sorted, const int32_t* __restrict__ block_slot,
                        const int32_t* __restrict__ n_blocks, const W* __restrict__ w0, const W* __restrict__ w1,
                        int64_t rows, int64_t K, const float* __restrict__ route_w, float* __restrict__ out) {
  if (static_cast<int>(blockIdx.y) >= *n_blocks) return;
  const int slot = block_slot[blockIdx.y];
  __shared__ int32_t entry[B];
  if (threadIdx.x < B) entry[threadIdx.x] = sorted[blockIdx.y * B + threadIdx.x];
  __syncthreads();
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  if (r >= rows) return;
  const int lane = threadIdx.x % 32;
  const int64_t mat = rows * K;
  const W* a = w0 + slot * mat + r * K;
  const W* b = kGateUp ? w1 + slot * mat + r * K : nullptr;
  // Input row of entry e: x[token] for gate+up (in_row_of_token = 1 means row e / k), h[e] for down.
  float acc0[B], acc1[B];
#pragma unroll
  for (int e = 0; e < B; ++e) acc0[e] = acc1[e] = 0.f;
  for (int64_t c = lane * 8; c < K; c += 32 * 8) {
    float wa[8], wb[8];
    load8(a + c, wa);
    if (kGateUp) load8(b + c, wb);
#pragma unroll
    for (int e = 0; e < B; ++e) {
      const int id = entry[e];
      if (id < n_entries) {
        const int64_t row = in_row_of_token ? id / k : id;
        float xv[8];
        load8_act(in + row * K + c, xv);
#pragma unroll
        for (int q = 0; q < 8; ++q) {
          acc0[e] = fmaf(wa[q], xv[q], acc0[e]);
          if (kGateUp) acc1[e] = fmaf(wb[q], xv[q], acc1[e]);
        }
      }
    }
  }
#pragma unroll
  for (int e = 0; e < B; ++e) {
    const float s0 = warp_sum(acc0[e]);
    const float s1 = kGateUp ? warp_sum(acc1[e]) : 0.f;
    const int id = entry[e];
    if (lane == 0 && id < n_entries)
      out[static_cast<int64_t>(id) * rows + r] = kGateUp ? silu(s0) * s1 : route_w[id] * s0;
  }
}

__global__ void combine_kernel(const float* __restrict__ rows, const int32_t* __restrict__ slots, int k, int S,
                               int64_t H, float* __restrict__ y, bool accumulate) {
  const int64_t t = blockIdx.x;
  for (int64_t c = threadIdx.x; c < H; c += blockDim.x) {
    float s = accumulate ? y[t * H + c] : 0.f;
    for (int j = 0; j < k; ++j) {
      const int slot = slots[t * k + j];
      if (slot >= 0 && slot < S) s += rows[(t * k + j) * H + c];
    }
    y[t * H + c] = s;
  }
}

// 32-entry groups once slots average >= 16 entries (prefill); 8 otherwise (decode), where
// wider groups would mostly hold padding.
int pick_block_m(int64_t n_entries, int32_t n_slots) { return n_entries >= 16 * static_cast<int64_t>(n_slots) ? 32 : 8; }

size_t align_up(size_t n) { return (n + 255) & ~size_t(255); }

struct Workspace {
  int32_t *sorted, *block_slot, *n_blocks;
  float *h, *rows;
};
Workspace carve(void* base, int64_t T, int64_t k, int32_t S, int64_t H, int64_t I, int block_m) {
  const int64_t padded = moe_max_padded(T, k, S, block_m);
  char* p = static_cast<char*>(base);
  Workspace w;
  w.sorted = reinterpret_cast<int32_t*>(p), p += align_up(padded * 4);
  w.block_slot = reinterpret_cast<int32_t*>(p), p += align_up(padded / block_m * 4);
  w.n_blocks = reinterpret_cast<int32_t*>(p), p += align_up(4);
  w.h = reinterpret_cast<float*>(p), p += align_up(T * k * I * 4);
  w.rows = reinterpret_cast<float*>(p);
  return w;
}

template <typename W, int B>
void launch_experts(const float* x, int64_t T, int64_t k, const float* weights, const MoeWeights& mw,
                    const Workspace& ws, int64_t max_blocks, cudaStream_t s) {
  const int n = static_cast<int>(T * k);
  const dim3 grid_gu(static_cast<unsigned>((mw.I + kRowWarps - 1) / kRowWarps), static_cast<unsigned>(max_blocks));
  grouped_rows_kernel<W, B, true><<<grid_gu, kRowWarps * 32, 0, s>>>(
      x, 1, static_cast<int>(k), n, ws.sorted, ws.block_slot, ws.n_blocks, static_cast<const W*>(mw.gate),
      static_cast<const W*>(mw.up), mw.I, mw.H, nullptr, ws.h);
  EW_CUDA_CHECK_LAUNCH("grouped_rows_kernel<gate_up>");
  const dim3 grid_d(static_cast<unsigned>((mw.H + kRowWarps - 1) / kRowWarps), static_cast<unsigned>(max_blocks));
  grouped_rows_kernel<W, B, false><<<grid_d, kRowWarps * 32, 0, s>>>(
      ws.h, 0, static_cast<int>(k), n, ws.sorted, ws.block_slot, ws.n_blocks, static_cast<const W*>(mw.down),
      nullptr, mw.H, mw.I, weights, ws.rows);
  EW_CUDA_CHECK_LAUNCH("grouped_rows_kernel<down>");
}

template <typename W>
void launch_experts_b(int B, const float* x, int64_t T, int64_t k, const float* weights, const MoeWeights& mw,
                      const Workspace& ws, int64_t max_blocks, cudaStream_t s) {
  if (B == 8)
    launch_experts<W, 8>(x, T, k, weights, mw, ws, max_blocks, s);
  else
    launch_experts<W, 32>(x, T, k, weights, mw, ws, max_blocks, s);
}

}  // namespace

int64_t moe_max_padded(int64_t T, int64_t k, int32_t n_slots, int block_m) {
  const int64_t n = T * k;
  const int64_t bound = n + std::min<int64_t>(n, n_slots) * (block_m - 1);
  return (bound + block_m - 1) / block_m * block_m;
}

void moe_align(const int32_t* slots, int64_t n_entries, int32_t n_slots, int block_m, int32_t* sorted_ids,
               int32_t* block_slot, int32_t* n_blocks, void* stream) {
  if (n_slots <= 0 || n_slots > kMaxAlignSlots) fail("cuda::moe_align: ", n_slots, " slots out of [1, ", kMaxAlignSlots, "]");
  if (n_entries <= 0 || n_entries >= (int64_t(1) << 30)) fail("cuda::moe_align: ", n_entries, " entries out of range");
  const int64_t padded = (n_entries + std::min<int64_t>(n_entries, n_slots) * (block_m - 1) + block_m - 1) / block_m * block_m;
  const size_t smem = (2 * static_cast<size_t>(n_slots) + 1) * sizeof(int32_t);
  align_kernel<<<1, kAlignThreads, smem, static_cast<cudaStream_t>(stream)>>>(
      slots, static_cast<int>(n_entries), n_slots, block_m, static_cast<int>(padded), sorted_ids, block_slot, n_blocks);
  EW_CUDA_CHECK_LAUNCH("align_kernel");
}

size_t CudaOps::moe_workspace_bytes(int64_t T, int64_t k, const MoeWeights& w) const {
  const int64_t H = w.H, I = w.I;
  const int B = pick_block_m(T * k, w.n_slots);
  const int64_t padded = moe_max_padded(T, k, w.n_slots, B);
  return align_up(padded * 4) + align_up(padded / B * 4) + align_up(4) + align_up(T * k * I * 4) +
         align_up(T * k * H * 4);
}

void CudaOps::moe(const float* x, int64_t T, int64_t k, const int32_t* slots, const float* weights,
                  const MoeWeights& w, float* y, bool accumulate, void* workspace) {
  void* stream = stream_;
  if (T <= 0) return;
  if (k <= 0 || w.H <= 0 || w.I <= 0 || w.n_slots <= 0 || !w.gate || !w.up || !w.down)
    fail("cuda::moe: bad shape k=", k, " H=", w.H, " I=", w.I, " slots=", w.n_slots);
  if (w.H % 8 || w.I % 8) fail("cuda::moe: H (", w.H, ") and I (", w.I, ") must be multiples of 8");
  for (const void* p : {static_cast<const void*>(x), w.gate, w.up, w.down})
    if (reinterpret_cast<uintptr_t>(p) % 16) fail("cuda::moe: x and the expert tensors must be 16-byte aligned");
  auto s = static_cast<cudaStream_t>(stream);
  const int B = pick_block_m(T * k, w.n_slots);
  const Workspace ws = carve(workspace, T, k, w.n_slots, w.H, w.I, B);
  moe_align(slots, T * k, w.n_slots, B, ws.sorted, ws.block_slot, ws.n_blocks, stream);
  const int64_t max_blocks = moe_max_padded(T, k, w.n_slots, B) / B;
  if (max_blocks > 65535) fail("cuda::moe: ", max_blocks, " groups exceed the grid limit: split the batch");
  switch (w.dtype) {
    case DType::BF16: launch_experts_b<__nv_bfloat16>(B, x, T, k, weights, w, ws, max_blocks, s); break;
    case DType::F16: launch_experts_b<__half>(B, x, T, k, weights, w, ws, max_blocks, s); break;
    case DType::F32: launch_experts_b<float>(B, x, T, k, weights, w, ws, max_blocks, s); break;
    default: fail("cuda::moe: unknown expert dtype ", static_cast<int>(w.dtype));
  }
  combine_kernel<<<static_cast<unsigned>(T), 256, 0, s>>>(ws.rows, slots, static_cast<int>(k), w.n_slots, w.H, y,
                                                          accumulate);
  EW_CUDA_CHECK_LAUNCH("combine_kernel");
}

}  // namespace cuda
}  // namespace ew
