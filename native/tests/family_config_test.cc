// config.json of the families beyond DeepSeek-V2 (docs/model-families.md): the published
// configs parse into the engine's one description (attention kind, KV width, MoE layers,
// routing rule), and every refusal names the key and its value.
#include <string>

#include "engine/config.h"
#include "engine/forward.h"
#include "engine/tensor_names.h"
#include "test.h"

using namespace ew;

namespace {

// Qwen/Qwen3-30B-A3B config.json.
const char* kQwen3_30bA3b = R"({
  "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645, "head_dim": 128,
  "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 6144,
  "max_position_embeddings": 40960, "max_window_layers": 48, "mlp_only_layers": [], "model_type": "qwen3_moe",
  "moe_intermediate_size": 768, "norm_topk_prob": true, "num_attention_heads": 32, "num_experts": 128,
  "num_experts_per_tok": 8, "num_hidden_layers": 48, "num_key_value_heads": 4, "output_router_logits": false,
  "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
  "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true,
  "use_sliding_window": false, "vocab_size": 151936
})";

// mistralai/Mixtral-8x7B-v0.1 config.json.
const char* kMixtral8x7b = R"({
  "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
  "max_position_embeddings": 32768, "model_type": "mixtral", "num_attention_heads": 32, "num_experts_per_tok": 2,
  "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8, "output_router_logits": false,
  "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02, "sliding_window": null,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true, "vocab_size": 32000
})";

// deepseek-ai/DeepSeek-V3 config.json without its quantization_config (a bf16 copy).
const char* kDeepseekV3 = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "aux_loss_alpha": 0.001, "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3,
  "hidden_act": "silu", "hidden_size": 7168, "initializer_range": 0.02, "intermediate_size": 18432,
  "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v3",
  "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1,
  "norm_topk_prob": true, "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 61,
  "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "pretraining_tp": 1, "q_lora_rank": 1536,
  "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                   "original_max_position_embeddings": 4096, "type": "yarn"},
  "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "seq_aux": true,
  "tie_word_embeddings": false, "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
  "use_cache": true, "v_head_dim": 128, "vocab_size": 129280
})";

// moonshotai/Moonlight-16B-A3B config.json.
const char* kMoonlight = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "aux_loss_alpha": 0.001, "bos_token_id": 163584, "eos_token_id": 163585, "ep_size": 1,
  "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
  "intermediate_size": 11264, "kv_lora_rank": 512, "max_position_embeddings": 8192, "model_type": "deepseek_v3",
  "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64, "n_shared_experts": 2,
  "norm_topk_prob": true, "num_attention_heads": 16, "num_experts_per_tok": 6, "num_hidden_layers": 27,
  "num_key_value_heads": 16, "num_nextn_predict_layers": 0, "pretraining_tp": 1, "q_lora_rank": null,
  "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-05, "rope_scaling": null,
  "rope_theta": 50000.0, "routed_scaling_factor": 2.446, "scoring_func": "sigmoid", "seq_aux": true,
  "tie_word_embeddings": false, "topk_group": 1, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
  "use_cache": true, "v_head_dim": 128, "vocab_size": 163840
})";

// Replaces (or adds, when absent) one top-level key's raw JSON value.
std::string with_key(const std::string& json, const std::string& key, const std::string& value) {
  const std::string tag = "\"" + key + "\":";
  const size_t at = json.find(tag);
  if (at == std::string::npos) return "{\"" + key + "\": " + value + ", " + json.substr(json.find('{') + 1);
  size_t end = at + tag.size(), depth = 0;
  for (; end < json.size(); ++end) {
    const char ch = json[end];
    if (ch == '{' || ch == '[') ++depth;
    if ((ch == '}' || ch == ']') && depth-- == 0) break;
    if (ch == ',' && depth == 0) break;
  }
  return json.substr(0, at) + tag + " " + value + json.substr(end);
}

std::string without_key(const std::string& json, const std::string& key) {
  // The keys these tests drop are never the last one.
  const std::string tag = "\"" + key + "\":";
  const size_t at = json.find(tag);
  size_t end = json.find(',', at);
  const size_t open = json.find_first_of("{[", at);
  if (open < end) end = json.find(json[open] == '{' ? '}' : ']', open) + 1;
  return json.substr(0, at) + json.substr(json.find_first_not_of(", \n", end));
}

}  // namespace

TEST(config_parses_qwen3_30b_a3b) {
  const ModelConfig c = parse_model_config(kQwen3_30bA3b);
  CHECK(c.family == ModelFamily::Qwen3Moe);
  CHECK(c.gqa());
  CHECK(c.qk_norm);
  CHECK_EQ(c.num_key_value_heads, int64_t(4));
  CHECK_EQ(c.head_dim, int64_t(128));  // from the config, not hidden / heads = 64
  CHECK_EQ(c.q_head_dim(), int64_t(128));
  CHECK_EQ(c.rope_dim(), int64_t(128));
  CHECK_EQ(c.kv_cache_width(), int64_t(1024));  // 2 * 4 * 128
  CHECK_EQ(c.n_routed_experts, int64_t(128));
  CHECK_EQ(c.num_experts_per_tok, int64_t(8));
  CHECK_EQ(c.moe_intermediate_size, int64_t(768));
  CHECK_EQ(c.n_shared_experts, int64_t(0));
  CHECK_EQ(c.num_moe_layers(), int64_t(48));
  CHECK_EQ(c.rope_theta, 1e6);
  CHECK_EQ(c.max_position_embeddings, int64_t(40960));
  const RouterParams p = router_params(c);
  CHECK(p.scoring == RouterScoring::Softmax && p.groups == GroupRule::None);
  CHECK(p.normalize);
  CHECK_EQ(p.norm_eps, 0.f);
  CHECK_EQ(p.scale, 1.f);
  CHECK_EQ(expert_tensor_name(c, 5, 7, ExpertMat::Down), std::string("model.layers.5.mlp.experts.7.down_proj.weight"));
}

TEST(config_qwen3_dense_layers_from_mlp_only_layers_and_sparse_step) {
  std::string j = with_key(kQwen3_30bA3b, "num_hidden_layers", "6");
  j = with_key(j, "mlp_only_layers", "[0]");
  j = with_key(j, "decoder_sparse_step", "2");
  const ModelConfig c = parse_model_config(j);
  // (l + 1) % 2 == 0 and l not in [0]: layers 1, 3, 5.
  for (int64_t l = 0; l < 6; ++l) CHECK_EQ(c.is_moe_layer(l), l % 2 == 1);
  CHECK_EQ(c.moe_layers_text(), std::string("1, 3, 5"));
  // norm_topk_prob false: neither normalised nor scaled; num_experts 0: a dense model.
  const ModelConfig d = parse_model_config(with_key(with_key(kQwen3_30bA3b, "norm_topk_prob", "false"), "num_experts", "0"));
  CHECK(!router_params(d).normalize);
  CHECK_EQ(d.num_moe_layers(), int64_t(0));
  // head_dim absent: hidden / heads.
  CHECK_EQ(parse_model_config(without_key(kQwen3_30bA3b, "head_dim")).head_dim, int64_t(64));
}

TEST(config_parses_mixtral_8x7b) {
  const ModelConfig c = parse_model_config(kMixtral8x7b);
  CHECK(c.family == ModelFamily::Mixtral);
  CHECK(c.gqa() && !c.qk_norm);
  CHECK_EQ(c.head_dim, int64_t(128));
  CHECK_EQ(c.kv_cache_width(), int64_t(2048));  // 2 * 8 * 128
  CHECK_EQ(c.n_routed_experts, int64_t(8));
  CHECK_EQ(c.moe_intermediate_size, int64_t(14336));  // an expert is intermediate_size wide
  CHECK_EQ(c.num_moe_layers(), int64_t(32));
  CHECK_EQ(c.moe_layers_text(), std::string("0-31"));
  CHECK_EQ(c.rms_norm_eps, 1e-5);
  const RouterParams p = router_params(c);
  CHECK(p.normalize && p.norm_eps == 0.f && p.scale == 1.f);
  CHECK_EQ(expert_tensor_name(c, 3, 1, ExpertMat::Gate), std::string("model.layers.3.block_sparse_moe.experts.1.w1.weight"));
  CHECK_EQ(expert_tensor_name(c, 3, 1, ExpertMat::Up), std::string("model.layers.3.block_sparse_moe.experts.1.w3.weight"));
  CHECK_EQ(expert_tensor_name(c, 3, 1, ExpertMat::Down), std::string("model.layers.3.block_sparse_moe.experts.1.w2.weight"));
  int64_t l = 0, e = 0;
  CHECK(parse_expert_tensor_name(c, "layers.3.block_sparse_moe.experts.6.w2.weight", &l, &e) && l == 3 && e == 6);
  CHECK(!parse_expert_tensor_name(c, "model.layers.3.mlp.experts.6.down_proj.weight", &l, &e));
  // The HF defaults of MixtralConfig: theta 1e6, eps 1e-5, top-2.
  const ModelConfig d = parse_model_config(
      without_key(without_key(without_key(kMixtral8x7b, "rope_theta"), "rms_norm_eps"), "num_experts_per_tok"));
  CHECK_EQ(d.rope_theta, 1e6);
  CHECK_EQ(d.rms_norm_eps, 1e-5);
  CHECK_EQ(d.num_experts_per_tok, int64_t(2));
}

TEST(config_parses_deepseek_v3_moonlight_and_kimi_k2) {
  const ModelConfig c = parse_model_config(kDeepseekV3);
  CHECK(c.family == ModelFamily::DeepseekV3 && !c.gqa());
  CHECK(c.scoring_func == ScoringFunc::Sigmoid && c.topk_method == TopkMethod::NoauxTc);
  CHECK_EQ(c.kv_cache_width(), int64_t(576));
  CHECK_EQ(c.num_nextn_predict_layers, int64_t(1));
  CHECK_EQ(c.num_moe_layers(), int64_t(58));
  CHECK_EQ(c.moe_layers_text(), std::string("3-60"));
  RouterParams p = router_params(c);
  CHECK(p.scoring == RouterScoring::Sigmoid && p.groups == GroupRule::TopTwoSum);
  CHECK_EQ(p.n_group, 8);
  CHECK_EQ(p.topk_group, 4);
  CHECK(p.normalize);
  CHECK_EQ(p.norm_eps, 1e-20f);
  CHECK_EQ(p.scale, 2.5f);  // after normalising, unlike V2
  const ModelConfig m = parse_model_config(kMoonlight);
  CHECK(m.family == ModelFamily::DeepseekV3);
  CHECK_EQ(m.q_lora_rank, int64_t(0));
  CHECK_EQ(router_params(m).scale, 2.446f);
  // Kimi-K2 ships DeepseekV3ForCausalLM as model_type kimi_k2.
  const ModelConfig k = parse_model_config(with_key(with_key(kMoonlight, "model_type", "\"kimi_k2\""), "n_routed_experts", "384"));
  CHECK(k.family == ModelFamily::DeepseekV3);
  CHECK_EQ(k.model_type, std::string("kimi_k2"));
  // HF's DeepseekV3Config defaults: sigmoid, noaux_tc.
  const ModelConfig d = parse_model_config(without_key(without_key(kMoonlight, "scoring_func"), "topk_method"));
  CHECK(d.scoring_func == ScoringFunc::Sigmoid && d.topk_method == TopkMethod::NoauxTc);
  // V2 for comparison: normalised weights are not scaled.
  std::string v2 = with_key(with_key(with_key(kMoonlight, "model_type", "\"deepseek_v2\""), "scoring_func", "\"softmax\""),
                            "topk_method", "\"greedy\"");
  p = router_params(parse_model_config(v2));
  CHECK(p.normalize && p.scale == 1.f && p.scoring == RouterScoring::Softmax);
}

TEST(config_family_refusals_name_the_key_and_value) {
  struct Case {
    std::string json;
    const char* needle;
  };
  const std::string q = kQwen3_30bA3b, x = kMixtral8x7b, v3 = kDeepseekV3;
  const Case cases[] = {
      {with_key(q, "model_type", "\"qwen2_moe\""), "model_type \"qwen2_moe\" is not supported"},
      {without_key(q, "num_key_value_heads"), "missing required key num_key_value_heads"},
      {with_key(q, "num_key_value_heads", "5"), "key num_key_value_heads (5) must divide num_attention_heads (32)"},
      {with_key(q, "head_dim", "127"), "key head_dim must be even (rotate_half RoPE), found 127"},
      {with_key(q, "use_sliding_window", "true"), "key use_sliding_window is true: sliding-window attention"},
      {with_key(q, "attention_bias", "true"), "key attention_bias is true: only bias-free attention"},
      {with_key(q, "rope_scaling", R"({"rope_type": "yarn", "factor": 4})"), "key rope_scaling is an object: only plain RoPE"},
      {with_key(q, "hidden_act", "\"gelu\""), "key hidden_act is \"gelu\"; only \"silu\" is supported"},
      {with_key(q, "num_experts_per_tok", "129"), "key num_experts_per_tok (129) exceeds num_experts (128)"},
      {with_key(q, "mlp_only_layers", "[1, -2]"), "key mlp_only_layers must be a list of layer indices, found the element -2"},
      {with_key(q, "decoder_sparse_step", "0"), "key decoder_sparse_step must be positive, found 0"},
      {without_key(q, "moe_intermediate_size"), "missing required key moe_intermediate_size"},
      {with_key(q, "quantization_config", R"({"quant_method": "fp8"})"),
       "key quantization_config is set (quant_method \"fp8\"): quantized checkpoints are not supported"},
      {with_key(x, "sliding_window", "4096"), "key sliding_window is 4096: sliding-window attention"},
      {with_key(x, "rope_scaling", R"({"type": "linear", "factor": 2})"), "key rope_scaling is an object"},
      {without_key(x, "num_local_experts"), "missing required key num_local_experts"},
      {with_key(x, "num_experts_per_tok", "9"), "key num_experts_per_tok (9) exceeds num_local_experts (8)"},
      {with_key(v3, "scoring_func", "\"softmax\""), "key scoring_func is \"softmax\"; only \"sigmoid\" is supported"},
      {with_key(v3, "topk_method", "\"group_limited_greedy\""), "key topk_method is \"group_limited_greedy\"; only \"noaux_tc\""},
      {with_key(v3, "n_group", "256"), "key n_group (256) must split n_routed_experts (256) into groups of at least 2"},
      {with_key(v3, "n_group", "3"), "key n_group (3) does not divide n_routed_experts (256)"},
      {with_key(v3, "topk_group", "9"), "key topk_group (9) exceeds n_group (8)"},
      {with_key(with_key(v3, "topk_group", "1"), "num_experts_per_tok", "33"),
       "key num_experts_per_tok (33) exceeds the experts of topk_group (1) groups of 32"},
      {with_key(v3, "rope_interleave", "false"), "key rope_interleave is false"},
      {with_key(v3, "num_nextn_predict_layers", "-1"), "key num_nextn_predict_layers must be non-negative, found -1"},
      {with_key(v3, "routed_scaling_factor", "0"), "key routed_scaling_factor must be positive"},
  };
  for (const Case& c : cases) CHECK_THROWS_WITH(parse_model_config(c.json), c.needle);
}
