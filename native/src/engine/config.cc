#include "engine/config.h"

#include <cmath>

#include "util/error.h"
#include "util/file.h"
#include "util/json.h"

namespace ew {
namespace {

// Typed access to one JSON object with errors that name the key. `prefix` locates
// nested objects ("rope_scaling.").
class Keys {
 public:
  Keys(const json::Value& obj, std::string prefix) : obj_(obj), prefix_(std::move(prefix)) {}

  const json::Value* find(const char* key) const {
    const json::Value* v = obj_.find(key);
    return v && !v->is_null() ? v : nullptr;  // null means "not set", as in HF configs
  }
  bool present(const char* key) const { return find(key) != nullptr; }

  int64_t integer(const char* key) const {
    const json::Value* v = find(key);
    if (!v) fail("config: missing required key ", prefix_, key);
    return as_int(key, *v);
  }
  int64_t integer(const char* key, int64_t dflt) const {
    const json::Value* v = find(key);
    return v ? as_int(key, *v) : dflt;
  }
  double number(const char* key, double dflt) const {
    const json::Value* v = find(key);
    if (!v) return dflt;
    if (!v->is_number()) fail("config: key ", prefix_, key, " must be a number, found ", json::type_name(v->type()));
    return v->as_number();
  }
  double number(const char* key) const {
    if (!present(key)) fail("config: missing required key ", prefix_, key);
    return number(key, 0.0);
  }
  bool boolean(const char* key, bool dflt) const {
    const json::Value* v = find(key);
    if (!v) return dflt;
    if (!v->is_bool()) fail("config: key ", prefix_, key, " must be true or false, found ", json::type_name(v->type()));
    return v->as_bool();
  }
  std::string str(const char* key, const std::string& dflt) const {
    const json::Value* v = find(key);
    if (!v) return dflt;
    if (!v->is_string()) fail("config: key ", prefix_, key, " must be a string, found ", json::type_name(v->type()));
    return v->as_string();
  }

 private:
  const json::Value& obj_;
  std::string prefix_;

  int64_t as_int(const char* key, const json::Value& v) const {
    if (!v.is_integer()) {
      if (v.is_number()) fail("config: key ", prefix_, key, " must be an integer, found ", v.as_number());
      fail("config: key ", prefix_, key, " must be an integer, found ", json::type_name(v.type()));
    }
    return v.as_int();
  }
};

// bos/eos: an id, a list of ids (the first counts) or absent (-1).
int64_t token_id(const json::Value& root, const char* key) {
  const json::Value* v = root.find(key);
  if (!v || v->is_null()) return -1;
  if (v->is_array()) {
    if (v->as_array().empty()) return -1;
    v = &v->as_array()[0];
  }
  if (!v->is_integer() || v->as_int() < 0)
    fail("config: key ", key, " must be a non-negative integer or a list of them");
  return v->as_int();
}

void require_positive(const char* key, int64_t v) {
  if (v <= 0) fail("config: key ", key, " must be positive, found ", v);
}

void parse_rope_scaling(const json::Value& root, ModelConfig& c) {
  const json::Value* rs = root.find("rope_scaling");
  if (!rs || rs->is_null()) return;
  if (!rs->is_object()) fail("config: key rope_scaling must be an object or null");
  Keys k(*rs, "rope_scaling.");
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
  c.rope_original_max_position = k.integer("original_max_position_embeddings");
  require_positive("rope_scaling.original_max_position_embeddings", c.rope_original_max_position);
  c.rope_beta_fast = k.number("beta_fast", 32.0);
  c.rope_beta_slow = k.number("beta_slow", 1.0);
  c.rope_mscale = k.number("mscale", 1.0);
}

}  // namespace

ModelConfig parse_model_config(const std::string& json_text) {
  const json::Value root = json::parse(json_text, "config.json");
  if (!root.is_object()) fail("config: config.json must hold a JSON object");
  Keys k(root, "");
  ModelConfig c;

  c.model_type = k.str("model_type", "");
  if (c.model_type.empty()) fail("config: missing required key model_type");
  if (c.model_type == "deepseek_v3")
    fail("config: model_type \"deepseek_v3\" is not supported (sigmoid scoring with noaux_tc routing); "
         "only \"deepseek_v2\" is");
  if (c.model_type != "deepseek_v2")
    fail("config: model_type \"", c.model_type, "\" is not supported; only \"deepseek_v2\" is");

  // Shape keys are required: a config.json written by transformers always has them,
  // and a guessed default would only surface later as a confusing shape mismatch.
  c.vocab_size = k.integer("vocab_size");
  c.hidden_size = k.integer("hidden_size");
  c.num_hidden_layers = k.integer("num_hidden_layers");
  c.intermediate_size = k.integer("intermediate_size");
  c.num_attention_heads = k.integer("num_attention_heads");
  c.kv_lora_rank = k.integer("kv_lora_rank");
  c.qk_nope_head_dim = k.integer("qk_nope_head_dim");
  c.qk_rope_head_dim = k.integer("qk_rope_head_dim");
  c.v_head_dim = k.integer("v_head_dim");
  if (!root.find("q_lora_rank")) fail("config: missing required key q_lora_rank (null for an uncompressed query)");
  c.q_lora_rank = k.integer("q_lora_rank", 0);
  for (auto [key, v] : {std::pair<const char*, int64_t>{"vocab_size", c.vocab_size},
                        {"hidden_size", c.hidden_size},
                        {"num_hidden_layers", c.num_hidden_layers},
                        {"intermediate_size", c.intermediate_size},
                        {"num_attention_heads", c.num_attention_heads},
                        {"kv_lora_rank", c.kv_lora_rank},
                        {"qk_nope_head_dim", c.qk_nope_head_dim},
                        {"qk_rope_head_dim", c.qk_rope_head_dim},
                        {"v_head_dim", c.v_head_dim}})
    require_positive(key, v);
  if (c.q_lora_rank < 0) fail("config: key q_lora_rank must be null or positive, found ", c.q_lora_rank);
  if (c.qk_rope_head_dim % 2 != 0) fail("config: key qk_rope_head_dim must be even, found ", c.qk_rope_head_dim);
  c.max_position_embeddings = k.integer("max_position_embeddings", 2048);
  require_positive("max_position_embeddings", c.max_position_embeddings);

  // Mixture of experts. n_routed_experts null: every layer is dense (as in HF).
  c.n_routed_experts = k.integer("n_routed_experts", 0);
  if (c.n_routed_experts < 0) fail("config: key n_routed_experts must be null or positive, found ", c.n_routed_experts);
  c.n_shared_experts = k.integer("n_shared_experts", 0);
  if (c.n_shared_experts < 0)
    fail("config: key n_shared_experts must be null or non-negative, found ", c.n_shared_experts);
  c.first_k_dense_replace = k.integer("first_k_dense_replace", 0);
  if (c.first_k_dense_replace < 0)
    fail("config: key first_k_dense_replace must be non-negative, found ", c.first_k_dense_replace);
  c.moe_layer_freq = k.integer("moe_layer_freq", 1);
  require_positive("moe_layer_freq", c.moe_layer_freq);
  c.norm_topk_prob = k.boolean("norm_topk_prob", false);
  c.routed_scaling_factor = k.number("routed_scaling_factor", 1.0);
  if (!(c.routed_scaling_factor > 0) || !std::isfinite(c.routed_scaling_factor))
    fail("config: key routed_scaling_factor must be positive, found ", c.routed_scaling_factor);
  if (c.n_routed_experts > 0) {
    c.moe_intermediate_size = k.integer("moe_intermediate_size");
    require_positive("moe_intermediate_size", c.moe_intermediate_size);
    c.num_experts_per_tok = k.integer("num_experts_per_tok");
    require_positive("num_experts_per_tok", c.num_experts_per_tok);
    if (c.num_experts_per_tok > c.n_routed_experts)
      fail("config: key num_experts_per_tok (", c.num_experts_per_tok, ") exceeds n_routed_experts (",
           c.n_routed_experts, ")");
  } else {
    c.moe_intermediate_size = k.integer("moe_intermediate_size", 0);
    c.num_experts_per_tok = k.integer("num_experts_per_tok", 0);
  }

  const std::string scoring = k.str("scoring_func", "softmax");
  if (scoring != "softmax") fail("config: key scoring_func is \"", scoring, "\"; only \"softmax\" is supported");
  // HF's default is the misspelt "gready", which its own gate cannot run; real configs set it.
  const std::string topk = k.str("topk_method", "greedy");
  if (topk == "greedy") {
    c.topk_method = TopkMethod::Greedy;
  } else if (topk == "group_limited_greedy") {
    c.topk_method = TopkMethod::GroupLimitedGreedy;
  } else {
    fail("config: key topk_method is \"", topk, "\"; only \"greedy\" and \"group_limited_greedy\" are supported");
  }
  c.n_group = k.integer("n_group", 1);
  require_positive("n_group", c.n_group);
  c.topk_group = k.integer("topk_group", 1);
  require_positive("topk_group", c.topk_group);
  if (c.n_routed_experts > 0) {
    if (c.n_routed_experts % c.n_group != 0)
      fail("config: key n_group (", c.n_group, ") does not divide n_routed_experts (", c.n_routed_experts, ")");
    if (c.topk_group > c.n_group)
      fail("config: key topk_group (", c.topk_group, ") exceeds n_group (", c.n_group, ")");
    if (c.topk_method == TopkMethod::GroupLimitedGreedy &&
        c.num_experts_per_tok > c.topk_group * (c.n_routed_experts / c.n_group))
      fail("config: key num_experts_per_tok (", c.num_experts_per_tok, ") exceeds the experts of topk_group (",
           c.topk_group, ") groups of ", c.n_routed_experts / c.n_group);
  }

  const std::string act = k.str("hidden_act", "silu");
  if (act != "silu") fail("config: key hidden_act is \"", act, "\"; only \"silu\" is supported");
  c.attention_bias = k.boolean("attention_bias", false);
  if (c.attention_bias) fail("config: key attention_bias is true; only bias-free attention is supported");

  c.rms_norm_eps = k.number("rms_norm_eps", 1e-6);
  if (!(c.rms_norm_eps > 0) || !std::isfinite(c.rms_norm_eps))
    fail("config: key rms_norm_eps must be positive, found ", c.rms_norm_eps);
  c.rope_theta = k.number("rope_theta", 10000.0);
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta))
    fail("config: key rope_theta must be positive, found ", c.rope_theta);
  parse_rope_scaling(root, c);
  c.tie_word_embeddings = k.boolean("tie_word_embeddings", false);
  c.bos_token_id = token_id(root, "bos_token_id");
  c.eos_token_id = token_id(root, "eos_token_id");
  return c;
}

constexpr size_t kMaxConfigBytes = 16 << 20;

ModelConfig load_model_config(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  const std::string text = read_regular_file(path, kMaxConfigBytes);
  try {
    return parse_model_config(text);
  } catch (const Error& e) {
    fail(path, ": ", e.what());
  }
}

}  // namespace ew
