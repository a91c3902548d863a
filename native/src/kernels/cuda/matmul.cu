// CudaOps' matmuls: y[T, N] (+)= x[T, K] . W[N, K]^T (output row stride ldy).
// Decode (T <= 64): one warp per output row, 8 rows per block; each lane streams 16-byte
// weight chunks and applies each to up to 8 tokens held in registers, so weights are read
// from HBM once per block of tokens (re-reads for later token groups hit L1/L2).
// Prefill (T > 64): 64x64 output tiles on bf16 tensor cores (WMMA 16x16x16), operands
// staged through shared memory as bf16, fp32 accumulation.
#include <cuda_bf16.h>
#include <mma.h>

#include <algorithm>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/device_math.cuh"
#include "util/cuda/cuda_util.h"
#include "util/error.h"

namespace ew {
namespace cuda {
namespace {

constexpr int kGemvWarps = 8;
constexpr int kGemvMaxTokens = 64;

// blockIdx.y takes tokens [64 * blockIdx.y, 64 * blockIdx.y + 64): larger T (matmul_exact,
// or devices without bf16 tensor cores) runs in parallel with the same per-token order.
template <typename W, int TT>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_kernel(const float* __restrict__ x, int T_all, const W* __restrict__ w, int64_t N, int64_t K,
                float* __restrict__ y, int64_t ldy, bool accumulate, bool vec) {
  const int lane = threadIdx.x % 32;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kGemvWarps + threadIdx.x / 32;
  if (n >= N) return;
  const W* row = w + n * K;
  const int t_begin = static_cast<int>(blockIdx.y) * kGemvMaxTokens;
  const int T = min(T_all - t_begin, kGemvMaxTokens);
  x += static_cast<int64_t>(t_begin) * K;
  y += static_cast<int64_t>(t_begin) * ldy;
  for (int t0 = 0; t0 < T; t0 += TT) {
    float acc[TT];
#pragma unroll
    for (int i = 0; i < TT; ++i) acc[i] = 0.f;
    if (vec) {
#pragma unroll 4
      for (int64_t k = lane * 8; k < K; k += 32 * 8) {
        float wv[8];
        load8(row + k, wv);
#pragma unroll
        for (int i = 0; i < TT; ++i) {
          if (t0 + i < T) {
            float xv[8];
            load8_act(x + static_cast<int64_t>(t0 + i) * K + k, xv);
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[i] = fmaf(wv[e], xv[e], acc[i]);
          }
        }
      }
    } else {
      for (int64_t k = lane; k < K; k += 32) {
        const float wv = to_f32(row[k]);
#pragma unroll
        for (int i = 0; i < TT; ++i)
          if (t0 + i < T) acc[i] = fmaf(wv, x[static_cast<int64_t>(t0 + i) * K + k], acc[i]);
      }
    }
#pragma unroll
    for (int i = 0; i < TT; ++i) {
      const float s = warp_sum(acc[i]);
      if (lane == 0 && t0 + i < T) {
        float* out = y + static_cast<int64_t>(t0 + i) * ldy + n;
        *out = accumulate ? *out + s : s;
      }
    }
  }
}

constexpr int kTileM = 64, kTileN = 64, kTileK = 32, kPadK = kTileK + 8, kPadN = kTileN + 4;

template <typename W>
__global__ void __launch_bounds__(128)
    gemm_tc_kernel(const float* __restrict__ x, int64_t T, const W* __restrict__ w, int64_t N, int64_t K,
                   float* __restrict__ y, int64_t ldy, bool accumulate) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800  // bf16 WMMA; older targets never launch it
  using namespace nvcuda;
  __shared__ __align__(32) __nv_bfloat16 As[kTileM][kPadK];
  __shared__ __align__(32) __nv_bfloat16 Bs[kTileN][kPadK];
  __shared__ __align__(32) float Cs[kTileM][kPadN];
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTileM, n0 = static_cast<int64_t>(blockIdx.x) * kTileN;
  const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  for (int64_t k0 = 0; k0 < K; k0 += kTileK) {
    for (int idx = threadIdx.x; idx < kTileM * kTileK; idx += blockDim.x) {
      const int r = idx / kTileK, c = idx % kTileK;
      const int64_t m = m0 + r, k = k0 + c;
      As[r][c] = __float2bfloat16(m < T && k < K ? x[m * K + k] : 0.f);
      const int64_t n = n0 + r;
      Bs[r][c] = __float2bfloat16(n < N && k < K ? to_f32(w[n * K + k]) : 0.f);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], &As[wm * 32 + i * 16][kk], kPadK);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], &Bs[wn * 32 + j * 16][kk], kPadK);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&Cs[wm * 32 + i * 16][wn * 32 + j * 16], acc[i][j], kPadN, wmma::mem_row_major);
  __syncthreads();
  for (int idx = threadIdx.x; idx < kTileM * kTileN; idx += blockDim.x) {
    const int r = idx / kTileN, c = idx % kTileN;
    const int64_t m = m0 + r, n = n0 + c;
    if (m < T && n < N) y[m * ldy + n] = accumulate ? y[m * ldy + n] + Cs[r][c] : Cs[r][c];
  }
#endif
}

// bf16 tensor cores need compute capability 8.0 (the GEMV path serves any T otherwise).
bool tensor_cores_bf16() {
  static const bool ok = [] {
    int dev = 0, major = 0;
    return cudaGetDevice(&dev) == cudaSuccess &&
           cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 8;
  }();
  return ok;
}

template <typename W>
void launch_matmul(const float* x, int64_t T, const W* w, int64_t N, int64_t K, float* y, int64_t ldy,
                   cudaStream_t s, bool accumulate, bool exact) {
  if (exact || T <= kGemvMaxTokens || !tensor_cores_bf16()) {
    const int64_t token_blocks = (T + kGemvMaxTokens - 1) / kGemvMaxTokens;
    if (token_blocks > 65535) fail("cuda::matmul: ", T, " tokens exceed the GEMV grid (", 65535 * kGemvMaxTokens, ")");
    const dim3 grid(static_cast<unsigned>((N + kGemvWarps - 1) / kGemvWarps), static_cast<unsigned>(token_blocks));
    const int t = static_cast<int>(T);
    // 16-byte weight loads and 32-byte activation loads need K % 8 == 0 and 16-byte aligned bases.
    const bool vec = K % 8 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
    if (T == 1)
      gemv_kernel<W, 1><<<grid, kGemvWarps * 32, 0, s>>>(x, t, w, N, K, y, ldy, accumulate, vec);
    else if (T <= 4)
      gemv_kernel<W, 4><<<grid, kGemvWarps * 32, 0, s>>>(x, t, w, N, K, y, ldy, accumulate, vec);
    else
      gemv_kernel<W, 8><<<grid, kGemvWarps * 32, 0, s>>>(x, t, w, N, K, y, ldy, accumulate, vec);
    EW_CUDA_CHECK_LAUNCH("gemv_kernel");
  } else {
    const dim3 grid(static_cast<unsigned>((N + kTileN - 1) / kTileN), static_cast<unsigned>((T + kTileM - 1) / kTileM));
    gemm_tc_kernel<W><<<grid, 128, 0, s>>>(x, T, w, N, K, y, ldy, accumulate);
    EW_CUDA_CHECK_LAUNCH("gemm_tc_kernel");
  }
}

void dispatch_matmul(const float* x, int64_t T, Weight W, int64_t N, int64_t K, float* y, int64_t ldy,
                     void* stream, bool accumulate, bool exact) {
  if (T < 0 || N <= 0 || K <= 0 || ldy < N) fail("cuda::matmul: bad shape T=", T, " N=", N, " K=", K, " ldy=", ldy);
  if (T == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  switch (W.dtype) {
    case DType::BF16:
      return launch_matmul(x, T, static_cast<const __nv_bfloat16*>(W.data), N, K, y, ldy, s, accumulate, exact);
    case DType::F16:
      return launch_matmul(x, T, static_cast<const __half*>(W.data), N, K, y, ldy, s, accumulate, exact);
    case DType::F32:
      return launch_matmul(x, T, static_cast<const float*>(W.data), N, K, y, ldy, s, accumulate, exact);
  }
  fail("cuda::matmul: unknown weight dtype ", static_cast<int>(W.dtype));
}

}  // namespace

void CudaOps::matmul(const float* x, int64_t T, Weight W, int64_t N, int64_t K, float* y, bool accumulate) {
  dispatch_matmul(x, T, W, N, K, y, N, stream_, accumulate, /*exact=*/false);
}

void CudaOps::matmul_exact(const float* x, int64_t T, Weight W, int64_t N, int64_t K, float* y, bool accumulate) {
  dispatch_matmul(x, T, W, N, K, y, N, stream_, accumulate, /*exact=*/true);
}

// One launch when B's rows follow A's in memory (the runner uploads gate|up that way),
// else one per matrix into the two column ranges of y; each element is the same either way.
void CudaOps::matmul_pair(const float* x, int64_t T, Weight A, int64_t Na, Weight B, int64_t Nb, int64_t K,
                          float* y) {
  if (A.dtype != B.dtype)
    fail("cuda::matmul_pair: the two matrices differ in dtype (", dtype_name(A.dtype), ", ", dtype_name(B.dtype), ")");
  const size_t a_bytes = static_cast<size_t>(Na * K) * dtype_size(A.dtype);
  if (static_cast<const char*>(A.data) + a_bytes == B.data) {
    dispatch_matmul(x, T, A, Na + Nb, K, y, Na + Nb, stream_, false, false);
    return;
  }
  dispatch_matmul(x, T, A, Na, K, y, Na + Nb, stream_, false, false);
  dispatch_matmul(x, T, B, Nb, K, y + Na, Na + Nb, stream_, false, false);
}

}  // namespace cuda
}  // namespace ew
