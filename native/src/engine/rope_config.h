// The model config's RoPE (none, linear or yarn scaling, as DeepSeek-V2's
// modeling_deepseek.py applies it) as the kernel-level RopeTable (kernels/rope_rows.h):
// over the rope part of each head (MLA) or the whole head (GQA, ModelConfig::rope_dim),
// with attention's softmax scale q_head_dim^-0.5 (times yarn's mscale^2).
#pragma once
#include "engine/config.h"
#include "kernels/rope_rows.h"

namespace ew {

double yarn_get_mscale(double scale, double mscale);
// Throws ew::Error for an odd or non-positive rope_dim() or yarn without
// original_max_position_embeddings.
RopeTable make_rope_table(const ModelConfig& cfg);

}  // namespace ew
