// parse_model_config: model_type picks the family; the keys every family shares are read
// here, the rest by the family's parser (config_deepseek.cc, config_gqa.cc).
#include "engine/config.h"

#include "engine/config_keys.h"
#include "util/error.h"
#include "util/file.h"
#include "util/json.h"

namespace ew {

bool ModelConfig::is_moe_layer(int64_t l) const {
  if (n_routed_experts <= 0 || l < 0 || l >= num_hidden_layers) return false;
  switch (family) {
    case ModelFamily::DeepseekV2:
    case ModelFamily::DeepseekV3: return l >= first_k_dense_replace && l % moe_layer_freq == 0;
    case ModelFamily::Qwen3Moe:
      for (int64_t d : mlp_only_layers)
        if (d == l) return false;
      return (l + 1) % decoder_sparse_step == 0;
    case ModelFamily::Mixtral: return true;
  }
  return false;
}

std::string ModelConfig::moe_layers_text() const {
  std::string out;
  int64_t run_start = -1;
  auto close = [&](int64_t end) {  // the run [run_start, end)
    if (run_start < 0) return;
    out += (out.empty() ? "" : ", ") + std::to_string(run_start);
    if (end - 1 > run_start) out += (end - 1 == run_start + 1 ? ", " : "-") + std::to_string(end - 1);
    run_start = -1;
  };
  for (int64_t l = 0; l <= num_hidden_layers; ++l) {
    if (l < num_hidden_layers && is_moe_layer(l)) {
      if (run_start < 0) run_start = l;
    } else {
      close(l);
    }
  }
  return out.empty() ? "none" : out;
}

ModelConfig parse_model_config(const std::string& text) {
  const json::Value root = json::parse(text, "config.json");
  if (!root.is_object()) fail("config: config.json must hold a JSON object");
  ConfigKeys k(root, "");
  ModelConfig c;

  c.model_type = k.str("model_type", "");
  if (c.model_type.empty()) fail("config: missing required key model_type");
  if (c.model_type == "deepseek_v2") {
    c.family = ModelFamily::DeepseekV2;
  } else if (c.model_type == "deepseek_v3" || c.model_type == "kimi_k2") {
    c.family = ModelFamily::DeepseekV3;  // Kimi-K2 ships DeepseekV3ForCausalLM under its own model_type
  } else if (c.model_type == "qwen3_moe") {
    c.family = ModelFamily::Qwen3Moe;
  } else if (c.model_type == "mixtral") {
    c.family = ModelFamily::Mixtral;
  } else {
    fail("config: model_type \"", c.model_type,
         "\" is not supported; the engine serves deepseek_v2, deepseek_v3 (DeepSeek-V3/R1, Moonlight), kimi_k2, "
         "qwen3_moe and mixtral");
  }
  c.attention = c.family == ModelFamily::Qwen3Moe || c.family == ModelFamily::Mixtral ? AttentionKind::Gqa
                                                                                       : AttentionKind::Mla;

  // FP8 / int4 checkpoints (DeepSeek-V3/R1 and Kimi-K2 as released) carry their scheme here.
  if (const json::Value* q = k.find("quantization_config")) {
    const json::Value* method = q->is_object() ? q->find("quant_method") : nullptr;
    fail("config: key quantization_config is set", method ? " (quant_method " + json_text(*method) + ")" : "",
         ": quantized checkpoints are not supported; serve a bf16 copy (for DeepSeek's FP8 weights, "
         "DeepSeek-V3's inference/fp8_cast_bf16.py writes one) without this key");
  }

  // Shape keys are required: a config.json written by transformers always has them,
  // and a guessed default would only surface later as a confusing shape mismatch.
  c.vocab_size = k.positive("vocab_size");
  c.hidden_size = k.positive("hidden_size");
  c.num_hidden_layers = k.positive("num_hidden_layers");
  c.intermediate_size = k.positive("intermediate_size");
  c.num_attention_heads = k.positive("num_attention_heads");

  k.one_of("hidden_act", "silu", {"silu"});
  // The families' HF defaults: Mixtral's eps 1e-5 and theta 1e6, the others' 1e-6 and 1e4.
  const bool mixtral = c.family == ModelFamily::Mixtral;
  c.rms_norm_eps = k.positive_number("rms_norm_eps", mixtral ? 1e-5 : 1e-6);
  c.rope_theta = k.positive_number("rope_theta", mixtral ? 1e6 : 10000.0);
  c.tie_word_embeddings = k.boolean("tie_word_embeddings", false);
  c.bos_token_id = token_id(root, "bos_token_id");
  c.eos_token_id = token_id(root, "eos_token_id");

  if (c.gqa())
    parse_gqa_keys(k, c);
  else
    parse_deepseek_keys(k, root, c);
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
