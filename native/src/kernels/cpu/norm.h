// RMSNorm in fp32 with a weight of any stored dtype:
// y = w * (x / sqrt(mean(x^2) + eps)), row by row; y may alias x.
#pragma once
#include <cstdint>

#include "engine/tensor.h"

namespace ew {

// T rows of n values; rows of x start every ldx floats, rows of y every ldy.
void rms_norm_cpu(const float* x, int64_t ldx, int64_t T, int64_t n, const TensorView& w, float eps, float* y,
                  int64_t ldy);

}  // namespace ew
