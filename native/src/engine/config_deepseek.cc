// The DeepSeek keys of config.json (deepseek_v2; deepseek_v3: DeepSeek-V3/R1, Kimi-K2,
// Moonlight): MLA, yarn / linear RoPE scaling, the dense prefix and MoE stride, shared
// experts, and the routing of each release (V2: softmax, greedy or group-limited by the
// groups' best score; V3: sigmoid with e_score_correction_bias, noaux_tc groups).
#include <cmath>

#include "engine/config_keys.h"
#include "util/error.h"

namespace ew {
namespace {

void parse_rope_scaling(const json::Value& root, ModelConfig& c) {
  const json::Value* rs = root.find("rope_scaling");
  if (!rs || rs->is_null()) return;
  if (!rs->is_object()) fail("config: key rope_scaling must be an object or null");
  ConfigKeys k(*rs, "rope_scaling.");
  // Newer transformers write "rope_type"; DeepSeek's own configs write "type".
  std::string type = k.str("type", "");
  if (type.empty()) type = k.str("rope_type", "");
  if (type.empty()) fail("config: key rope_scaling.type is missing");
  if (type == "default") return;
  if (type != "linear" && type != "yarn")
    fail("config: key rope_scaling.type is \"", type, "\"; only \"linear\" and \"yarn\" are supported");
  c.rope_factor = k.number("factor");
  if (!(c.rope_factor > 0) || !std::isfinite(c.rope_factor))
    fail("config: key rope_scaling.factor must be positive, found ", c.rope_factor);
  // DeepseekV2Attention reads mscale_all_dim for any scaling type (softmax scale).
  c.rope_mscale_all_dim = k.number("mscale_all_dim", 0.0);
  if (type == "linear") {
    c.rope_scaling = RopeScaling::Linear;
    return;
  }
  c.rope_scaling = RopeScaling::Yarn;
  c.rope_original_max_position = k.positive("original_max_position_embeddings");
  c.rope_beta_fast = k.number("beta_fast", 32.0);
  c.rope_beta_slow = k.number("beta_slow", 1.0);
  c.rope_mscale = k.number("mscale", 1.0);
}

}  // namespace

void parse_deepseek_keys(const ConfigKeys& k, const json::Value& root, ModelConfig& c) {
  const bool v3 = c.family == ModelFamily::DeepseekV3;
  c.kv_lora_rank = k.positive("kv_lora_rank");
  c.qk_nope_head_dim = k.positive("qk_nope_head_dim");
  c.qk_rope_head_dim = k.positive("qk_rope_head_dim");
  c.v_head_dim = k.positive("v_head_dim");
  if (!root.find("q_lora_rank")) fail("config: missing required key q_lora_rank (null for an uncompressed query)");
  c.q_lora_rank = k.integer("q_lora_rank", 0);
  if (c.q_lora_rank < 0) fail("config: key q_lora_rank must be null or positive, found ", c.q_lora_rank);
  if (c.qk_rope_head_dim % 2 != 0) fail("config: key qk_rope_head_dim must be even, found ", c.qk_rope_head_dim);
  c.max_position_embeddings = k.positive("max_position_embeddings", 2048);
  // transformers' DeepseekV3 can rotate a non-interleaved layout; no published checkpoint uses it.
  if (v3 && k.present("rope_interleave") && !k.boolean("rope_interleave", true))
    k.fail_key("rope_interleave", "is false: only the interleaved rope layout of the published checkpoints is supported");

  // Mixture of experts. n_routed_experts null: every layer is dense (as in HF).
  c.n_routed_experts = k.integer("n_routed_experts", 0);
  if (c.n_routed_experts < 0) fail("config: key n_routed_experts must be null or positive, found ", c.n_routed_experts);
  c.n_shared_experts = k.integer("n_shared_experts", 0);
  if (c.n_shared_experts < 0)
    fail("config: key n_shared_experts must be null or non-negative, found ", c.n_shared_experts);
  c.first_k_dense_replace = k.integer("first_k_dense_replace", 0);
  if (c.first_k_dense_replace < 0)
    fail("config: key first_k_dense_replace must be non-negative, found ", c.first_k_dense_replace);
  c.moe_layer_freq = k.positive("moe_layer_freq", 1);
  c.norm_topk_prob = k.boolean("norm_topk_prob", false);
  c.routed_scaling_factor = k.positive_number("routed_scaling_factor", 1.0);
  if (c.n_routed_experts > 0) {
    c.moe_intermediate_size = k.positive("moe_intermediate_size");
    c.num_experts_per_tok = k.positive("num_experts_per_tok");
    if (c.num_experts_per_tok > c.n_routed_experts)
      fail("config: key num_experts_per_tok (", c.num_experts_per_tok, ") exceeds n_routed_experts (",
           c.n_routed_experts, ")");
  } else {
    c.moe_intermediate_size = k.integer("moe_intermediate_size", 0);
    c.num_experts_per_tok = k.integer("num_experts_per_tok", 0);
  }

  // Routing: each release's own rule (HF's V2 default topk_method is the misspelt "gready",
  // which its own gate cannot run; real configs set it).
  if (v3) {
    k.one_of("scoring_func", "sigmoid", {"sigmoid"});
    k.one_of("topk_method", "noaux_tc", {"noaux_tc"});
    c.scoring_func = ScoringFunc::Sigmoid;
    c.topk_method = TopkMethod::NoauxTc;
    c.num_nextn_predict_layers = k.integer("num_nextn_predict_layers", 0);
    if (c.num_nextn_predict_layers < 0)
      k.fail_key("num_nextn_predict_layers", concat("must be non-negative, found ", c.num_nextn_predict_layers));
  } else {
    k.one_of("scoring_func", "softmax", {"softmax"});
    const std::string topk = k.one_of("topk_method", "greedy", {"greedy", "group_limited_greedy"});
    c.topk_method = topk == "greedy" ? TopkMethod::Greedy : TopkMethod::GroupLimitedGreedy;
  }
  c.n_group = k.positive("n_group", 1);
  c.topk_group = k.positive("topk_group", 1);
  if (c.n_routed_experts > 0) {
    if (c.n_routed_experts % c.n_group != 0)
      fail("config: key n_group (", c.n_group, ") does not divide n_routed_experts (", c.n_routed_experts, ")");
    // noaux_tc scores a group by its two best experts.
    if (v3 && c.n_routed_experts / c.n_group < 2)
      fail("config: key n_group (", c.n_group, ") must split n_routed_experts (", c.n_routed_experts,
           ") into groups of at least 2 experts");
    if (c.topk_group > c.n_group)
      fail("config: key topk_group (", c.topk_group, ") exceeds n_group (", c.n_group, ")");
    if (c.topk_method != TopkMethod::Greedy && c.num_experts_per_tok > c.topk_group * (c.n_routed_experts / c.n_group))
      fail("config: key num_experts_per_tok (", c.num_experts_per_tok, ") exceeds the experts of topk_group (",
           c.topk_group, ") groups of ", c.n_routed_experts / c.n_group);
  }

  c.attention_bias = k.boolean("attention_bias", false);
  if (c.attention_bias) fail("config: key attention_bias is true; only bias-free attention is supported");
  parse_rope_scaling(root, c);
}

}  // namespace ew
