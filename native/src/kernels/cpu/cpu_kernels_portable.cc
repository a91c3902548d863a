// Portable C++ versions of the CPU inner loops (cpu_kernels.h). Eight lane
// accumulators per dot product (the layout of the AVX2 dot_f32); no reassociation
// happens (no -ffast-math), so the order is the written one.
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "util/error.h"

namespace ew {

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while (!(man & 0x400)) {
        man <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

void convert_to_f32(const void* data, DType dt, int64_t first, int64_t n, float* out) {
  if (dt == DType::F32) {
    std::memcpy(out, static_cast<const float*>(data) + first, static_cast<size_t>(n) * 4);
    return;
  }
  const uint16_t* p = static_cast<const uint16_t*>(data) + first;
  switch (dt) {
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(p[i]);
      return;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(p[i]);
      return;
    case DType::F32: break;
  }
  unknown_dtype("convert_to_f32", dt);
}

void unknown_dtype(const char* where, DType dt) {
  fail(where, ": unknown dtype ", static_cast<int>(dt), " (F32, F16 and BF16 are known)");
}

namespace portable {

float dot_f32(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const int64_t n8 = n & ~int64_t{7};
  for (int64_t k = 0; k < n8; k += 8)
    for (int i = 0; i < 8; ++i) acc[i] += a[k + i] * b[k + i];
  float s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
  for (int64_t k = n8; k < n; ++k) s += a[k] * b[k];
  return s;
}

void axpy_f32(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void matmul_rows(const float* x, int64_t T, const void* W, DType dt, int64_t K, int64_t n0, int64_t n1,
                 float* y, int64_t ldy, bool accumulate) {
  std::vector<float> row(static_cast<size_t>(K));
  for (int64_t n = n0; n < n1; ++n) {
    convert_to_f32(W, dt, n * K, K, row.data());  // once per row, reused by every token
    for (int64_t t = 0; t < T; ++t) {
      const float s = dot_f32(x + t * K, row.data(), K);
      y[t * ldy + n] = accumulate ? y[t * ldy + n] + s : s;
    }
  }
}

void matmul_t_cols(const float* x, int64_t T, const void* W, DType dt, int64_t K, int64_t N, int64_t n0,
                   int64_t n1, float* y) {
  std::vector<float> row(static_cast<size_t>(n1 - n0));
  for (int64_t t = 0; t < T; ++t) std::memset(y + t * N + n0, 0, static_cast<size_t>(n1 - n0) * sizeof(float));
  for (int64_t k = 0; k < K; ++k) {
    convert_to_f32(W, dt, k * N + n0, n1 - n0, row.data());
    for (int64_t t = 0; t < T; ++t) axpy_f32(x[t * K + k], row.data(), y + t * N + n0, n1 - n0);
  }
}

// A cache row as fp32: itself, or widened into buf.
static const float* row_f32(const void* row, DType dt, int64_t n, std::vector<float>& buf) {
  if (dt == DType::F32) return static_cast<const float*>(row);
  buf.resize(static_cast<size_t>(n));
  convert_to_f32(row, dt, 0, n, buf.data());
  return buf.data();
}

void attn_scores(const float* q, int64_t ldq, int64_t nq, const void* const* rows, DType dt, int64_t n,
                 int64_t width, float* s, int64_t lds) {
  std::vector<float> buf;
  for (int64_t p = 0; p < n; ++p) {
    const float* r = row_f32(rows[p], dt, width, buf);
    for (int64_t h = 0; h < nq; ++h) s[h * lds + p] = dot_f32(q + h * ldq, r, width);
  }
}

void attn_values(const float* w, int64_t ldw, int64_t nq, const void* const* rows, DType dt, int64_t n, int64_t R,
                 float* o, int64_t ldo) {
  std::vector<float> buf;
  for (int64_t p = 0; p < n; ++p) {
    const float* r = row_f32(rows[p], dt, R, buf);
    for (int64_t h = 0; h < nq; ++h) axpy_f32(w[h * ldw + p], r, o + h * ldo, R);
  }
}

float exp_sum(float* x, int64_t n, float mx) {
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  return sum;
}

}  // namespace portable
}  // namespace ew
