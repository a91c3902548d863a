// Helpers shared by the CUDA ops: typed weight loads (f32 / f16 / bf16 to fp32, 8 elements
// per 16-byte load), warp reductions, grid sizes.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/ops.h"

namespace ew {
namespace cuda {

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }

// 8 consecutive weights starting at p (16-byte aligned). The 2-byte types are unpacked
// with register bit operations (no address of a local, which could spill to local memory);
// element 0 sits in the low half of each 32-bit word.
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float (&w)[8]) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  const uint32_t u[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    w[2 * i] = __uint_as_float(u[i] << 16);
    w[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
  }
}
__device__ __forceinline__ void load8(const __half* p, float (&w)[8]) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  const uint32_t u[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    w[2 * i] = __half2float(__ushort_as_half(static_cast<unsigned short>(u[i] & 0xffffu)));
    w[2 * i + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(u[i] >> 16)));
  }
}
__device__ __forceinline__ void load8(const float* p, float (&w)[8]) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(p));
  const float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
  w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w, w[4] = b.x, w[5] = b.y, w[6] = b.z, w[7] = b.w;
}
// 8 activations (fp32, 32-byte aligned).
__device__ __forceinline__ void load8_act(const float* p, float (&v)[8]) {
  const float4 a = *reinterpret_cast<const float4*>(p);
  const float4 b = *(reinterpret_cast<const float4*>(p) + 1);
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

__device__ __forceinline__ float silu(float x) { return x / (1.f + __expf(-x)); }

// Token `pos` of step-local sequence `seq` in one layer of the block-paged KV cache, whose
// elements are E (float or __nv_bfloat16: the caller dispatches on c.dtype).
template <typename E>
__device__ __forceinline__ E* cache_entry(const KvLayerView& c, int seq, int pos) {
  const int block = c.block_tables[static_cast<int64_t>(seq) * c.max_blocks + pos / c.block_size];
  return static_cast<E*>(c.data) + block * c.block_stride + static_cast<int64_t>(pos % c.block_size) * c.width;
}
// The fp32 latent cache of mla_attention (it refuses any other dtype).
__device__ __forceinline__ const float* latent_entry(const KvLayerView& c, int seq, int pos) {
  return cache_entry<float>(c, seq, pos);
}

// gridDim.x for a grid-stride loop over n elements (at most 65535 blocks).
inline unsigned grid_for(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}
// gridDim.y for a kernel that strides rows over it (the limit is 65535).
inline unsigned grid_rows(int64_t n) { return static_cast<unsigned>(n < 65535 ? (n > 0 ? n : 1) : 65535); }

}  // namespace cuda
}  // namespace ew
