// Tiny random checkpoints of the families beyond DeepSeek-V2 (config.json + one
// safetensors file, real key and tensor names): qwen3_moe (GQA with q/k norms, a dense
// layer from mlp_only_layers), mixtral (block_sparse_moe, w1/w3/w2) and deepseek_v3
// (sigmoid noaux_tc routing with an fp32 e_score_correction_bias, one MTP layer that the
// engine skips). Routed experts use expert_matrix_bytes (adapter_fixtures.h), so an
// adapter written by write_adapter with seed s is exactly the merge of seed s's experts
// (merged_model works on these too).
#pragma once
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "engine/tensor_names.h"
#include "model_fixtures.h"

namespace ewtest {

enum class Family { Qwen3Moe, Mixtral, DeepseekV3 };

inline const char* family_name(Family f) {
  return f == Family::Qwen3Moe ? "qwen3_moe" : f == Family::Mixtral ? "mixtral" : "deepseek_v3";
}

inline std::string family_config_json(Family f, int64_t experts) {
  const std::string M = std::to_string(experts);
  switch (f) {
    case Family::Qwen3Moe:
      return R"({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 64,
        "hidden_size": 32, "num_hidden_layers": 4, "intermediate_size": 48, "moe_intermediate_size": 16,
        "num_experts": )" + M + R"(, "num_experts_per_tok": 2, "norm_topk_prob": true, "decoder_sparse_step": 1,
        "mlp_only_layers": [0], "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "max_position_embeddings": 256, "rope_theta": 1000000.0, "rope_scaling": null, "rms_norm_eps": 1e-6,
        "hidden_act": "silu", "attention_bias": false, "use_sliding_window": false, "sliding_window": null,
        "tie_word_embeddings": false, "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "bfloat16"})";
    case Family::Mixtral:
      return R"({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": 64,
        "hidden_size": 32, "num_hidden_layers": 3, "intermediate_size": 24, "num_local_experts": )" + M + R"(,
        "num_experts_per_tok": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "rope_theta": 1000000.0, "rms_norm_eps": 1e-5, "sliding_window": null, "hidden_act": "silu",
        "tie_word_embeddings": false, "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "bfloat16"})";
    case Family::DeepseekV3:
      return R"({"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": 64,
        "hidden_size": 32, "num_hidden_layers": 3, "intermediate_size": 48, "moe_intermediate_size": 16,
        "n_routed_experts": )" + M + R"(, "n_shared_experts": 1, "num_experts_per_tok": 4, "first_k_dense_replace": 1,
        "moe_layer_freq": 1, "num_attention_heads": 2, "num_key_value_heads": 2, "q_lora_rank": 12, "kv_lora_rank": 16,
        "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8, "max_position_embeddings": 256,
        "rope_theta": 10000, "rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 64,
        "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
        "scoring_func": "sigmoid", "topk_method": "noaux_tc", "n_group": 4, "topk_group": 2, "norm_topk_prob": true,
        "routed_scaling_factor": 2.5, "num_nextn_predict_layers": 1, "rms_norm_eps": 1e-6, "hidden_act": "silu",
        "attention_bias": false, "tie_word_embeddings": false, "bos_token_id": 0, "eos_token_id": 1,
        "torch_dtype": "bfloat16"})";
  }
  return "";
}

// experts: 8 by default (16 for deepseek_v3: 4 groups of 4); 32 or more suits the CUDA router's grouping.
inline TinyModel make_family_model(Family f, uint32_t seed, int64_t experts = 0) {
  if (experts == 0) experts = f == Family::DeepseekV3 ? 16 : 8;
  TinyModel m;
  m.config_json = family_config_json(f, experts);
  m.cfg = ew::parse_model_config(m.config_json);
  const ew::ModelConfig& c = m.cfg;
  const int64_t V = c.vocab_size, H = c.hidden_size;
  std::mt19937 rng(seed);
  auto put = [&](const std::string& name, std::vector<int64_t> shape, auto draw, ew::DType dt = ew::DType::BF16) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<uint8_t> bytes(static_cast<size_t>(n) * ew::dtype_size(dt));
    for (int64_t i = 0; i < n; ++i) {
      const float v = draw();
      if (dt == ew::DType::F32) {
        std::memcpy(bytes.data() + i * 4, &v, 4);
      } else {
        const uint16_t b = to_bf16(v);
        std::memcpy(bytes.data() + i * 2, &b, 2);
      }
    }
    m.tensors.push_back(StTensor{name, dt, std::move(shape), std::move(bytes)});
  };
  auto normal = [&](const std::string& name, std::vector<int64_t> shape, float std, ew::DType dt = ew::DType::BF16) {
    std::normal_distribution<float> nd(0.f, std);
    put(name, std::move(shape), [&] { return nd(rng); }, dt);
  };
  auto linear = [&](const std::string& name, int64_t out, int64_t in) {
    normal(name, {out, in}, 1.f / std::sqrt(static_cast<float>(in)));
  };
  auto norm = [&](const std::string& name, int64_t n) {
    std::uniform_real_distribution<float> ud(0.9f, 1.1f);
    put(name, {n}, [&] { return ud(rng); });
  };
  auto mlp = [&](const std::string& p, int64_t width) {
    linear(p + ".gate_proj.weight", width, H);
    linear(p + ".up_proj.weight", width, H);
    linear(p + ".down_proj.weight", H, width);
  };
  auto layer = [&](int64_t l, bool moe) {
    const std::string p = "model.layers." + std::to_string(l);
    norm(p + ".input_layernorm.weight", H);
    if (c.gqa()) {
      const int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
      linear(p + ".self_attn.q_proj.weight", q, H);
      linear(p + ".self_attn.k_proj.weight", kv, H);
      linear(p + ".self_attn.v_proj.weight", kv, H);
      linear(p + ".self_attn.o_proj.weight", H, q);
      if (c.qk_norm) {
        norm(p + ".self_attn.q_norm.weight", c.head_dim);
        norm(p + ".self_attn.k_norm.weight", c.head_dim);
      }
    } else {
      const int64_t heads = c.num_attention_heads, qd = c.q_head_dim();
      linear(p + ".self_attn.q_a_proj.weight", c.q_lora_rank, H);
      norm(p + ".self_attn.q_a_layernorm.weight", c.q_lora_rank);
      linear(p + ".self_attn.q_b_proj.weight", heads * qd, c.q_lora_rank);
      linear(p + ".self_attn.kv_a_proj_with_mqa.weight", c.kv_lora_rank + c.qk_rope_head_dim, H);
      norm(p + ".self_attn.kv_a_layernorm.weight", c.kv_lora_rank);
      linear(p + ".self_attn.kv_b_proj.weight", heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
      linear(p + ".self_attn.o_proj.weight", H, heads * c.v_head_dim);
    }
    norm(p + ".post_attention_layernorm.weight", H);
    if (!moe) {
      mlp(p + ".mlp", c.intermediate_size);
      return;
    }
    const std::string block = ew::moe_block_prefix(c, l);
    normal(block + ".gate.weight", {c.n_routed_experts, H}, 2.f / std::sqrt(static_cast<float>(H)));
    if (c.topk_method == ew::TopkMethod::NoauxTc)
      normal(block + ".gate.e_score_correction_bias", {c.n_routed_experts}, 0.1f, ew::DType::F32);
    for (int64_t e = 0; e < c.n_routed_experts; ++e) add_expert(&m.tensors, c, l, e, seed);
    if (c.n_shared_experts > 0) mlp(p + ".mlp.shared_experts", c.n_shared_experts * c.moe_intermediate_size);
  };
  normal("model.embed_tokens.weight", {V, H}, 1.f);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) layer(l, c.is_moe_layer(l));
  for (int64_t i = 0; i < c.num_nextn_predict_layers; ++i) {  // V3's MTP module, as published
    const int64_t l = c.num_hidden_layers + i;
    const std::string p = "model.layers." + std::to_string(l);
    normal(p + ".embed_tokens.weight", {V, H}, 1.f);
    norm(p + ".enorm.weight", H);
    norm(p + ".hnorm.weight", H);
    linear(p + ".eh_proj.weight", H, 2 * H);
    layer(l, true);
    norm(p + ".shared_head.norm.weight", H);
    linear(p + ".shared_head.head.weight", V, H);
  }
  norm("model.norm.weight", H);
  linear("lm_head.weight", V, H);
  return m;
}

}  // namespace ewtest
