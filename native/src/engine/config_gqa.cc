// The keys of the grouped-query-attention families (qwen3_moe: Qwen3MoeForCausalLM;
// mixtral: MixtralForCausalLM): KV heads and head_dim, plain rotate_half RoPE, and their
// MoE blocks (Qwen3: num_experts of moe_intermediate_size, dense layers from
// mlp_only_layers / decoder_sparse_step, norm_topk_prob; Mixtral: num_local_experts of
// intermediate_size on every layer, top-k renormalised). Neither has shared experts,
// biases, sliding windows or RoPE scaling the engine would compute.
#include "engine/config_keys.h"
#include "util/error.h"

namespace ew {

void parse_gqa_keys(const ConfigKeys& k, ModelConfig& c) {
  const bool qwen3 = c.family == ModelFamily::Qwen3Moe;
  c.num_key_value_heads = k.positive("num_key_value_heads");
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    fail("config: key num_key_value_heads (", c.num_key_value_heads, ") must divide num_attention_heads (",
         c.num_attention_heads, ")");
  c.head_dim = k.positive("head_dim", c.hidden_size / c.num_attention_heads);
  if (c.head_dim % 2 != 0) fail("config: key head_dim must be even (rotate_half RoPE), found ", c.head_dim);
  c.qk_norm = qwen3;
  c.max_position_embeddings = k.positive("max_position_embeddings", qwen3 ? 32768 : 131072);
  if (k.present("rope_scaling")) {
    // transformers writes {"rope_type": "default"} for plain RoPE in some versions.
    const json::Value* rs = k.find("rope_scaling");
    const json::Value* type = rs->is_object() ? rs->find("rope_type") : nullptr;
    if (!(type && type->is_string() && type->as_string() == "default" && rs->as_object().size() == 1))
      k.refuse_set("rope_scaling", "only plain RoPE is supported for this model_type");
  }
  if (qwen3) {
    k.refuse_true("use_sliding_window", "sliding-window attention is not supported");
    k.refuse_true("attention_bias", "only bias-free attention is supported");
    c.n_routed_experts = k.integer("num_experts", 0);
    if (c.n_routed_experts < 0) k.fail_key("num_experts", concat("must be non-negative, found ", c.n_routed_experts));
    c.decoder_sparse_step = k.positive("decoder_sparse_step", 1);
    c.mlp_only_layers = k.index_list("mlp_only_layers");
    c.norm_topk_prob = k.boolean("norm_topk_prob", false);
    if (c.n_routed_experts > 0) {
      c.moe_intermediate_size = k.positive("moe_intermediate_size");
      c.num_experts_per_tok = k.positive("num_experts_per_tok");
    }
  } else {
    k.refuse_set("sliding_window", "sliding-window attention is not supported");
    c.n_routed_experts = k.positive("num_local_experts");
    c.num_experts_per_tok = k.positive("num_experts_per_tok", 2);
    c.moe_intermediate_size = c.intermediate_size;  // every expert is one MixtralBlockSparseTop2MLP
    c.norm_topk_prob = true;                        // MixtralSparseMoeBlock always renormalises
  }
  if (c.n_routed_experts > 0 && c.num_experts_per_tok > c.n_routed_experts)
    fail("config: key num_experts_per_tok (", c.num_experts_per_tok, ") exceeds ",
         qwen3 ? "num_experts" : "num_local_experts", " (", c.n_routed_experts, ")");
}

}  // namespace ew
