// RoPE's kernel-level parameters (the engine fills a RopeTable from the model config,
// engine/rope_config.h) and the host-side cos/sin rows that every backend's rope op
// consumes (kernels/ops.h). The rows are computed in double (angle = position *
// position_scale * inv_freq, times the yarn mscale) and rounded to float once, so every
// backend rotates with the very same values.
#pragma once
#include <cstdint>
#include <vector>

namespace ew {

struct RopeTable {
  int64_t dim = 0;                // rotated dims per vector (qk_rope_head_dim)
  std::vector<double> inv_freq;   // dim / 2 frequencies
  double position_scale = 1.0;    // linear scaling: positions are divided by the factor
  double mscale = 1.0;            // cos and sin are multiplied by this (yarn)
  float softmax_scale = 1.f;      // attention's q_head_dim^-0.5, times mscale_all_dim's m^2 under scaling
};

// cos_rows/sin_rows: [T, table.dim / 2] for positions[0..T).
void rope_cos_sin(const RopeTable& table, const int64_t* positions, int64_t T, std::vector<float>& cos_rows,
                  std::vector<float>& sin_rows);

}  // namespace ew
