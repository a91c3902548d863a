// Embedding lookup: rows of a [V, H] table of any dtype, as fp32.
#pragma once
#include <cstdint>

#include "engine/tensor.h"

namespace ew {

// y[t, :] = table[ids[t], :]; ids must be in [0, V) (checked).
void embed_cpu(const TensorView& table, const int32_t* ids, int64_t T, float* y);

}  // namespace ew
