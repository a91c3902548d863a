// The bf16 paths' SiLU product (cpu_kernels.h): out = silu(g) * u over 16 lanes with the
// vector exp of avx512_helpers.h instead of one expf call per element, which cost these
// paths' prefill about as much as their activation rounding. The fp32 paths keep the scalar
// std::exp (their outputs stay as they were); a bf16 path already differs from them by its
// rounded activations, so its SiLU may differ by the vector exp's last bit too. Elementwise:
// each output depends on its own inputs only, so batch independence holds.
#include "kernels/cpu/avx512_helpers.h"

namespace ew {
namespace avx512bf16 {

void silu_mul(const float* g, const float* u, int64_t n, float* out) {
  using avx512::exp16;
  const __m512 one = _mm512_set1_ps(1.f);
  auto lanes = [&](__m512 x, __m512 up) { return _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x)))), up); };
  const int64_t n16 = n & ~int64_t{15};
  for (int64_t i = 0; i < n16; i += 16) _mm512_storeu_ps(out + i, lanes(_mm512_loadu_ps(g + i), _mm512_loadu_ps(u + i)));
  if (n16 < n) {
    const __mmask16 k = avx512::first_n(n - n16);
    _mm512_mask_storeu_ps(out + n16, k, lanes(_mm512_maskz_loadu_ps(k, g + n16), _mm512_maskz_loadu_ps(k, u + n16)));
  }
}

}  // namespace avx512bf16
}  // namespace ew
