// The model's hyper-parameters, read from a Hugging Face config.json of one of the
// families the engine serves (model_type deepseek_v2, deepseek_v3, qwen3_moe, mixtral;
// docs/model-families.md), normalised into one description: attention is MLA (DeepSeek)
// or grouped-query (Qwen3-MoE, Mixtral); routed experts are SwiGLU MLPs of
// moe_intermediate_size (Mixtral's intermediate_size). Anything the engine cannot
// compute exactly is refused with an error naming the key and its value.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ew {

enum class ModelFamily : uint8_t { DeepseekV2, DeepseekV3, Qwen3Moe, Mixtral };
enum class AttentionKind : uint8_t { Mla, Gqa };
// greedy: top-k of the scores; group_limited_greedy (V2): groups ranked by their best
// score, the others' experts count 0; noaux_tc (V3): experts chosen on score +
// e_score_correction_bias, groups ranked by the sum of their two best, the others closed.
enum class TopkMethod : uint8_t { Greedy, GroupLimitedGreedy, NoauxTc };
enum class ScoringFunc : uint8_t { Softmax, Sigmoid };
enum class RopeScaling : uint8_t { None, Linear, Yarn };

struct ModelConfig {
  std::string model_type;  // as in config.json
  ModelFamily family = ModelFamily::DeepseekV2;
  AttentionKind attention = AttentionKind::Mla;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;            // H
  int64_t num_hidden_layers = 0;      // decoding layers (V3's MTP layers come after them)
  int64_t intermediate_size = 0;      // dense MLP width
  int64_t moe_intermediate_size = 0;  // I: one routed expert's width
  int64_t n_routed_experts = 0;       // M (0: no MoE layers at all)
  int64_t n_shared_experts = 0;       // shared MLP width = n_shared_experts * I (0: none)
  int64_t num_experts_per_tok = 0;    // top-k
  // Which layers are MoE (is_moe_layer): DeepSeek's first_k_dense_replace / moe_layer_freq,
  // Qwen3's mlp_only_layers / decoder_sparse_step; Mixtral: every layer.
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;
  std::vector<int64_t> mlp_only_layers;
  int64_t decoder_sparse_step = 1;
  int64_t num_attention_heads = 0;
  // MLA (DeepSeek)
  int64_t q_lora_rank = 0;            // 0 when config has null
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  // GQA (Qwen3-MoE, Mixtral): query head h reads KV head h / (heads / kv_heads).
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  bool qk_norm = false;               // Qwen3: per-head q_norm / k_norm RMSNorm before RoPE
  int64_t max_position_embeddings = 0;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling = RopeScaling::None;
  double rope_factor = 1.0;
  int64_t rope_original_max_position = 0;
  double rope_beta_fast = 32.0, rope_beta_slow = 1.0;
  double rope_mscale = 1.0, rope_mscale_all_dim = 0.0;
  ScoringFunc scoring_func = ScoringFunc::Softmax;
  TopkMethod topk_method = TopkMethod::Greedy;
  int64_t n_group = 1, topk_group = 1;
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;
  int64_t num_nextn_predict_layers = 0;  // V3's multi-token-prediction layers: not loaded
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // must be false (refused otherwise)
  int64_t bos_token_id = -1, eos_token_id = -1;

  bool gqa() const { return attention == AttentionKind::Gqa; }
  int64_t q_head_dim() const { return gqa() ? head_dim : qk_nope_head_dim + qk_rope_head_dim; }
  // Rotated dims per head: DeepSeek's rope part (interleaved pairs), GQA's whole head (rotate_half).
  int64_t rope_dim() const { return gqa() ? head_dim : qk_rope_head_dim; }
  bool is_moe_layer(int64_t l) const;
  int64_t num_moe_layers() const {
    int64_t n = 0;
    for (int64_t l = 0; l < num_hidden_layers; ++l) n += is_moe_layer(l);
    return n;
  }
  // KV cache values per token per layer: MLA's latent (c_kv | rotated k_pe: 576 for
  // V2-Lite), GQA's keys and values (2 * kv_heads * head_dim: 1024 for Qwen3-30B-A3B).
  int64_t kv_cache_width() const { return gqa() ? 2 * num_key_value_heads * head_dim : kv_lora_rank + qk_rope_head_dim; }
  // The MoE layers, for messages ("1, 3" or "1-26").
  std::string moe_layers_text() const;
};

// Parses config.json text. Throws ew::Error naming the offending key.
ModelConfig parse_model_config(const std::string& json_text);
// Reads and parses <dir>/config.json.
ModelConfig load_model_config(const std::string& model_dir);

}  // namespace ew
