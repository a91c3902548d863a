// The model's hyper-parameters, read from a Hugging Face config.json
// (model_type "deepseek_v2" / "deepseek_v3"-style keys). Anything the engine
// cannot compute exactly is refused with an error naming the key.
#pragma once
#include <cstdint>
#include <string>

namespace ew {

enum class TopkMethod : uint8_t { Greedy, GroupLimitedGreedy };
enum class RopeScaling : uint8_t { None, Linear, Yarn };

struct ModelConfig {
  std::string model_type;  // "deepseek_v2"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;            // H
  int64_t num_hidden_layers = 0;
  int64_t intermediate_size = 0;      // dense MLP width
  int64_t moe_intermediate_size = 0;  // I: one routed expert's width
  int64_t n_routed_experts = 0;       // M (0: no MoE layers at all)
  int64_t n_shared_experts = 0;       // shared MLP width = n_shared_experts * I (0: none)
  int64_t num_experts_per_tok = 0;    // top-k
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;
  int64_t num_attention_heads = 0;
  int64_t q_lora_rank = 0;            // 0 when config has null
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling = RopeScaling::None;
  double rope_factor = 1.0;
  int64_t rope_original_max_position = 0;
  double rope_beta_fast = 32.0, rope_beta_slow = 1.0;
  double rope_mscale = 1.0, rope_mscale_all_dim = 0.0;
  TopkMethod topk_method = TopkMethod::Greedy;
  int64_t n_group = 1, topk_group = 1;
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // must be false (refused otherwise)
  int64_t bos_token_id = -1, eos_token_id = -1;

  int64_t q_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // Layer l is MoE when it has routed experts, is past the dense prefix and on the MoE stride.
  bool is_moe_layer(int64_t l) const {
    return n_routed_experts > 0 && l >= first_k_dense_replace && l % moe_layer_freq == 0;
  }
  int64_t num_moe_layers() const {
    int64_t n = 0;
    for (int64_t l = 0; l < num_hidden_layers; ++l) n += is_moe_layer(l);
    return n;
  }
  // Latent KV cache width per token per layer: c_kv + rotated k_pe (576 for V2-Lite).
  int64_t kv_cache_width() const { return kv_lora_rank + qk_rope_head_dim; }
};

// Parses config.json text. Throws ew::Error naming the offending key.
ModelConfig parse_model_config(const std::string& json_text);
// Reads and parses <dir>/config.json.
ModelConfig load_model_config(const std::string& model_dir);

}  // namespace ew
