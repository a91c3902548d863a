// Host-side cos/sin rows for a device RoPE kernel (cuda::rope), computed exactly as apply_rope_cpu does
// (double angle, times the yarn mscale, rounded to float once), so the CUDA rotation
// matches the CPU one bit for bit.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/cpu/rope.h"

namespace ew {

// cos_rows/sin_rows: [T, table.dim / 2] for positions[0..T).
void rope_cos_sin(const RopeTable& table, const int64_t* positions, int64_t T, std::vector<float>& cos_rows,
                  std::vector<float>& sin_rows);

}  // namespace ew
