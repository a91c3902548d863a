// Rotary position embedding as DeepSeek-V2 applies it (HF modeling_deepseek.py),
// with none, linear or yarn scaling. The checkpoint's rope dims are interleaved:
// HF de-interleaves them (pairs (2i, 2i+1) -> (i, i + d/2)) and applies rotate_half;
// rotating each pair (2i, 2i+1) in place by frequency i is the same map up to that
// fixed permutation, which q and k share, so every q.k product is unchanged. The
// cache therefore holds k_pe in the checkpoint's interleaved layout.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/config.h"

namespace ew {

struct RopeTable {
  int64_t dim = 0;                // qk_rope_head_dim
  std::vector<double> inv_freq;   // dim / 2 frequencies
  double position_scale = 1.0;    // linear scaling: positions are divided by the factor
  double mscale = 1.0;            // cos and sin are multiplied by this (yarn)
  float softmax_scale = 1.f;      // q_head_dim^-0.5, times mscale_all_dim's m^2 under scaling
};

double yarn_get_mscale(double scale, double mscale);
RopeTable make_rope_table(const ModelConfig& cfg);

// Rotates n_vec vectors of table.dim values in place, vector i at v + i * stride,
// all at position `pos`.
void apply_rope_cpu(float* v, int64_t n_vec, int64_t stride, int64_t pos, const RopeTable& table);

}  // namespace ew
