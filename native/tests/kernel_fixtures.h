// Helpers for kernel tests: a seeded generator and fp32 -> bf16 / f16 encoders
// (round to nearest even) to build stored weights of every dtype.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "util/tensor.h"

namespace ewtest {

inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

// Normal and zero values only (tests use magnitudes well inside the f16 range).
inline uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  const int exp = static_cast<int>((u >> 23) & 0xff) - 127 + 15;
  if (exp <= 0) return sign;
  uint32_t man = u & 0x7fffff;
  uint32_t h = (static_cast<uint32_t>(exp) << 10) | (man >> 13);
  const uint32_t rest = man & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;
  return static_cast<uint16_t>(sign | h);
}

inline std::vector<float> random_floats(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// A weight stored as `dtype` plus its exact fp32 values (what the stored bits mean).
struct StoredWeight {
  std::vector<uint8_t> bytes;
  std::vector<float> values;
  ew::DType dtype;
  ew::TensorView view(std::vector<int64_t> shape) const { return {bytes.data(), dtype, std::move(shape)}; }
};

inline StoredWeight make_weight(const std::vector<float>& v, ew::DType dt) {
  StoredWeight w;
  w.dtype = dt;
  w.values = v;
  w.bytes.resize(v.size() * ew::dtype_size(dt));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dt == ew::DType::F32) {
      std::memcpy(&w.bytes[i * 4], &v[i], 4);
      continue;
    }
    const uint16_t h = dt == ew::DType::BF16 ? f32_to_bf16(v[i]) : f32_to_f16(v[i]);
    std::memcpy(&w.bytes[i * 2], &h, 2);
    uint32_t u = 0;
    if (dt == ew::DType::BF16) {
      u = static_cast<uint32_t>(h) << 16;
      std::memcpy(&w.values[i], &u, 4);
    } else {
      const int e = (h >> 10) & 0x1f;
      const float m = static_cast<float>(h & 0x3ff);
      const float mag = e == 0 ? std::ldexp(m, -24) : std::ldexp(1.f + m / 1024.f, e - 15);
      w.values[i] = (h & 0x8000) ? -mag : mag;
    }
  }
  return w;
}

// x as a bf16 path's matmul over `weights` sees it: rounded to bf16 there, else unchanged.
inline std::vector<float> as_matmul_input(const std::vector<float>& x, ew::CpuPath p, ew::DType weights) {
  if (!ew::rounds_activations(p) || weights != ew::DType::BF16) return x;
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const uint32_t u = static_cast<uint32_t>(f32_to_bf16(x[i])) << 16;
    std::memcpy(&r[i], &u, 4);
  }
  return r;
}

// The tolerance of a whole op (several matmuls, intermediates in between) against its double
// reference on path p: `exact` on the fp32 paths; on the bf16 paths, over bf16 weights, every
// matmul input is rounded to bf16 (relative error up to 2^-9 per element), measured at most
// 2.6e-3 of the output's magnitude over these tests, so 1e-2.
inline double op_tolerance(ew::CpuPath p, ew::DType weights, double exact) {
  return ew::rounds_activations(p) && weights == ew::DType::BF16 ? 1e-2 : exact;
}

}  // namespace ewtest
