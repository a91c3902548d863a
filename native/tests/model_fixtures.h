// A tiny random DeepSeek-V2 checkpoint (config.json + model.safetensors, bf16) for
// engine tests, and the "merged" checkpoint of an ESFT adapter: the same base with the
// adapter's experts copied in. Routed experts use expert_matrix_bytes, so an adapter
// written by write_adapter with seed s is exactly the merge of seed s's experts.
#pragma once
#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "adapter_fixtures.h"

namespace ewtest {

struct TinyModel {
  ew::ModelConfig cfg;  // the shape fields adapter fixtures read
  std::string config_json;
  std::vector<StTensor> tensors;
};

// Layer 0 dense, layers 1..n_layers-1 MoE; greedy routing, 2 shared experts, yarn rope.
inline TinyModel make_tiny_model(uint32_t seed, int64_t n_layers = 3, int64_t experts = 8, int64_t top_k = 2) {
  const int64_t V = 64, H = 32, I = 16, dense = 48, heads = 2, nope = 8, rope = 4, vdim = 8, kv = 16, shared = 2;
  TinyModel m;
  m.cfg = small_moe_config(n_layers, experts, H, I);
  m.cfg.num_experts_per_tok = top_k;
  m.config_json = R"({"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "vocab_size": 64,
    "hidden_size": 32, "num_hidden_layers": )" + std::to_string(n_layers) +
                  R"(, "intermediate_size": 48, "moe_intermediate_size": 16,
    "n_routed_experts": )" + std::to_string(experts) + R"(, "n_shared_experts": 2, "num_experts_per_tok": )" +
                  std::to_string(top_k) + R"(, "first_k_dense_replace": 1, "moe_layer_freq": 1,
    "num_attention_heads": 2, "num_key_value_heads": 2, "q_lora_rank": null, "kv_lora_rank": 16,
    "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8, "max_position_embeddings": 256,
    "rope_theta": 10000, "rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 64,
    "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
    "scoring_func": "softmax", "topk_method": "greedy", "n_group": 1, "topk_group": 1, "norm_topk_prob": false,
    "routed_scaling_factor": 1.0, "rms_norm_eps": 1e-6, "hidden_act": "silu", "attention_bias": false,
    "tie_word_embeddings": false, "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "bfloat16"})";

  std::mt19937 rng(seed);
  auto normal = [&](const std::string& name, std::vector<int64_t> shape, float std) {
    std::normal_distribution<float> nd(0.f, std);
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<uint8_t> bytes(n * 2);
    for (int64_t i = 0; i < n; ++i) {
      const uint16_t b = to_bf16(nd(rng));
      std::memcpy(bytes.data() + i * 2, &b, 2);
    }
    m.tensors.push_back(StTensor{name, ew::DType::BF16, std::move(shape), std::move(bytes)});
  };
  auto linear = [&](const std::string& name, int64_t out, int64_t in) {
    normal(name, {out, in}, 1.f / std::sqrt(static_cast<float>(in)));
  };
  auto norm = [&](const std::string& name, int64_t n) {
    std::uniform_real_distribution<float> ud(0.9f, 1.1f);
    std::vector<uint8_t> bytes(n * 2);
    for (int64_t i = 0; i < n; ++i) {
      const uint16_t b = to_bf16(ud(rng));
      std::memcpy(bytes.data() + i * 2, &b, 2);
    }
    m.tensors.push_back(StTensor{name, ew::DType::BF16, {n}, std::move(bytes)});
  };
  auto mlp = [&](const std::string& p, int64_t width) {
    linear(p + ".gate_proj.weight", width, H);
    linear(p + ".up_proj.weight", width, H);
    linear(p + ".down_proj.weight", H, width);
  };
  normal("model.embed_tokens.weight", {V, H}, 1.f);
  for (int64_t l = 0; l < n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    norm(p + ".input_layernorm.weight", H);
    linear(p + ".self_attn.q_proj.weight", heads * (nope + rope), H);
    linear(p + ".self_attn.kv_a_proj_with_mqa.weight", kv + rope, H);
    norm(p + ".self_attn.kv_a_layernorm.weight", kv);
    linear(p + ".self_attn.kv_b_proj.weight", heads * (nope + vdim), kv);
    linear(p + ".self_attn.o_proj.weight", H, heads * vdim);
    norm(p + ".post_attention_layernorm.weight", H);
    if (m.cfg.is_moe_layer(l)) {
      normal(p + ".mlp.gate.weight", {experts, H}, 2.f / std::sqrt(static_cast<float>(H)));
      for (int64_t e = 0; e < experts; ++e) add_expert(&m.tensors, m.cfg, l, e, seed);
      mlp(p + ".mlp.shared_experts", shared * I);
    } else {
      mlp(p + ".mlp", dense);
    }
  }
  norm("model.norm.weight", H);
  linear("lm_head.weight", V, H);
  return m;
}

inline void write_model(const std::string& dir, const TinyModel& m) {
  write_text(dir + "/config.json", m.config_json);
  write_safetensors(dir + "/model.safetensors", m.tensors);
}

// The base with the experts of `sel` replaced by the adapter's (seed adapter_seed).
inline TinyModel merged_model(const TinyModel& base, const std::vector<std::pair<int64_t, std::vector<int64_t>>>& sel,
                              uint32_t adapter_seed) {
  TinyModel m = base;
  std::map<std::string, const StTensor*> replace;
  std::vector<StTensor> adapter;
  for (const auto& [layer, ids] : sel)
    for (int64_t e : ids) add_expert(&adapter, base.cfg, layer, e, adapter_seed);
  for (const StTensor& t : adapter) replace[t.name] = &t;
  int replaced = 0;
  for (StTensor& t : m.tensors) {
    auto it = replace.find(t.name);
    if (it == replace.end()) continue;
    t.data = it->second->data;
    ++replaced;
  }
  if (replaced != static_cast<int>(adapter.size())) throw std::runtime_error("merged_model: expert not in base");
  return m;
}

}  // namespace ewtest
