// MLA attention on the latent KV cache with weight absorption (DeepSeek-V2):
// per token t and head h,
//   q_lat   = W_kvb_k[h]^T q_nope          (kv_lora_rank values)
//   score_s = (q_lat . c_kv_s + q_pe . k_pe_s) * scale,   s = 0 .. pos[t] of t's sequence
//   o_lat   = sum_s softmax(score)_s c_kv_s
//   out_h   = W_kvb_v[h] o_lat             (v_head_dim values)
// The cache must already hold every position 0..pos[t] (this step's tokens included),
// so a prefill chunk and token-by-token decode compute the very same sums.
#pragma once
#include <cstdint>

#include "engine/tensor.h"
#include "memory/kv_cache.h"

namespace ew {

struct MlaAttentionArgs {
  const float* q = nullptr;  // [T, heads * (nope + rope)], rope part already rotated
  int64_t T = 0;
  int64_t n_heads = 0, nope = 0, rope = 0, v_dim = 0, rank = 0;  // rank: kv_lora_rank
  TensorView kv_b;           // kv_b_proj [heads * (nope + v), rank]
  const KvCache* cache = nullptr;
  int layer = 0;
  const int64_t* seq = nullptr;  // per token: its sequence id
  const int64_t* pos = nullptr;  // per token: its position
  float scale = 1.f;
  float* out = nullptr;      // [T, heads * v]
};

void mla_attention_cpu(const MlaAttentionArgs& a);

}  // namespace ew
