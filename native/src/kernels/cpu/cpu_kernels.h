// The CPU inner loops behind matmul.h and the other CPU kernels, in two builds:
// portable C++ (any CPU) and AVX2/FMA/F16C (matmul_avx2.cc, called only after a
// run-time CPU check). Within one path every output element's reduction order
// depends only on the reduction length, never on the batch, tiling or threads.
// The two paths may differ from each other in the last bits.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "util/tensor.h"

namespace ew {

// The dispatch paths: each is one build of the inner loops below. Later paths (AVX-512,
// AMX) slot in here, in cpu_paths() and in the EW_DISPATCH of matmul.cc.
enum class CpuPath : uint8_t { Portable, Avx2 };

const char* cpu_path_name(CpuPath path);
// Every path this build has and this CPU can run, Portable first (the tests run each).
const std::vector<CpuPath>& cpu_paths();
// The best of cpu_paths(), unless EW_CPU_PATH names another one ("portable", "avx2"):
// then that one, or an ew::Error when this CPU or build cannot run it.
CpuPath cpu_path();

// y[t, n] (+)= x[t, :] . W[n, :] for n in [n0, n1), t in [0, T); x row stride K, y row stride ldy.
void matmul_rows(CpuPath path, const float* x, int64_t T, const void* W, DType dt, int64_t K,
                 int64_t n0, int64_t n1, float* y, int64_t ldy, bool accumulate = false);
// y[t, n] = sum_k x[t, k] * W[k, n] for n in [n0, n1) (W is [K, N] row-major, y row stride N),
// summed from 0 in ascending k one term at a time.
void matmul_t_cols(CpuPath path, const float* x, int64_t T, const void* W, DType dt, int64_t K,
                   int64_t N, int64_t n0, int64_t n1, float* y);
// Fixed-order dot product of two fp32 vectors.
float dot_f32(CpuPath path, const float* a, const float* b, int64_t n);
// y[i] += a * x[i]
void axpy_f32(CpuPath path, float a, const float* x, float* y, int64_t n);

// Rows per ThreadPool::parallel_chunks chunk for a loop over `rows` weight rows of
// `row_bytes` each, applied to `tokens` tokens: large enough to amortise claiming a
// chunk, small enough that the threads finish together (a few chunks per thread, at
// most ~128 KB of weights).
int64_t rows_per_chunk(int64_t rows, int64_t row_bytes, int64_t tokens);

namespace portable {
void matmul_rows(const float* x, int64_t T, const void* W, DType dt, int64_t K, int64_t n0, int64_t n1,
                 float* y, int64_t ldy, bool accumulate);
void matmul_t_cols(const float* x, int64_t T, const void* W, DType dt, int64_t K, int64_t N, int64_t n0,
                   int64_t n1, float* y);
float dot_f32(const float* a, const float* b, int64_t n);
void axpy_f32(float a, const float* x, float* y, int64_t n);
}  // namespace portable
namespace avx2 {
void matmul_rows(const float* x, int64_t T, const void* W, DType dt, int64_t K, int64_t n0, int64_t n1,
                 float* y, int64_t ldy, bool accumulate);
void matmul_t_cols(const float* x, int64_t T, const void* W, DType dt, int64_t K, int64_t N, int64_t n0,
                   int64_t n1, float* y);
float dot_f32(const float* a, const float* b, int64_t n);
void axpy_f32(float a, const float* x, float* y, int64_t n);
}  // namespace avx2

// Scalar conversions used by the portable path and by the non-matmul kernels.
inline float bf16_to_f32(uint16_t h) {
  union {
    uint32_t u;
    float f;
  } v{static_cast<uint32_t>(h) << 16};
  return v.f;
}
float f16_to_f32(uint16_t h);
// fp32 -> bf16 rounded to nearest even (NaN stays a quiet NaN), as CUDA's __float2bfloat16_rn.
inline uint16_t f32_to_bf16(float f) {
  union {
    float f;
    uint32_t u;
  } v{f};
  if ((v.u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((v.u >> 16) | 0x40u);
  return static_cast<uint16_t>((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}
// Throws ew::Error: a DType value no kernel knows (a switch over DType fell through).
[[noreturn]] void unknown_dtype(const char* where, DType dt);
// Element i of a stored tensor as fp32.
inline float load_as_f32(const void* data, DType dt, int64_t i) {
  switch (dt) {
    case DType::F32: return static_cast<const float*>(data)[i];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(data)[i]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(data)[i]);
  }
  unknown_dtype("load_as_f32", dt);
}
// x * sigmoid(x), as every CPU kernel computes it.
inline float silu(float x) { return x / (1.f + std::exp(-x)); }

// Converts n elements starting at element `first` into out.
void convert_to_f32(const void* data, DType dt, int64_t first, int64_t n, float* out);

}  // namespace ew

