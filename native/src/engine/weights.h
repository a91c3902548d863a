// The model's weights bound by name to the config's shapes, for every family (the names
// that differ between families come from engine/tensor_names.h). Non-expert tensors are
// views into the mmap'd safetensors (kept as stored: bf16 stays bf16); routed experts are
// copied into an expert store, base expert e in slot e. DeepSeek-V3's multi-token-
// prediction layers (model.layers.{num_hidden_layers + i}.*) are skipped with a log line.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/config.h"
#include "engine/safetensors.h"
#include "util/tensor.h"
#include "memory/expert_store.h"

namespace ew {

struct MlpWeights {
  TensorView gate, up, down;  // [W, H], [W, H], [H, W]
};

// MLA (DeepSeek) or GQA (Qwen3-MoE, Mixtral); the other kind's views stay empty.
struct AttentionWeights {
  TensorView q_proj;         // MLA: [heads*q_head_dim, H] when q_lora_rank == 0; GQA: [heads*head_dim, H]
  TensorView q_a_proj;       // [q_lora_rank, H] otherwise
  TensorView q_a_layernorm;  // [q_lora_rank]
  TensorView q_b_proj;       // [heads*q_head_dim, q_lora_rank]
  TensorView kv_a_proj_with_mqa;  // [kv_lora_rank + rope, H]
  TensorView kv_a_layernorm;      // [kv_lora_rank]
  TensorView kv_b_proj;           // [heads*(nope + v), kv_lora_rank]
  TensorView k_proj, v_proj;      // GQA: [kv_heads*head_dim, H]
  TensorView q_norm, k_norm;      // GQA with qk_norm (Qwen3): [head_dim]
  TensorView o_proj;              // MLA: [H, heads*v]; GQA: [H, heads*head_dim]
};

struct LayerWeights {
  TensorView input_layernorm, post_attention_layernorm;  // [H]
  AttentionWeights attn;
  bool is_moe = false;
  int moe_index = -1;  // index into the expert store's layers when is_moe
  MlpWeights dense;    // when !is_moe
  TensorView router;   // [M, H] (mlp.gate.weight, block_sparse_moe.gate.weight) when is_moe
  TensorView router_bias;  // [M] F32: DeepSeek-V3's mlp.gate.e_score_correction_bias
  bool has_shared = false;
  MlpWeights shared;   // mlp.shared_experts.* when is_moe && n_shared_experts > 0
};

// Makes the store the routed experts live in (n_layers MoE layers, n_base experts each).
using ExpertStoreFactory = std::function<std::unique_ptr<ExpertStore>(int n_layers, int n_base, int max_adapter_slots,
                                                                      int64_t H, int64_t I, DType dtype)>;

struct PoolOptions {
  int max_adapter_slots = 0;  // extra expert slots per MoE layer reserved for adapters
  ExpertStoreFactory make_store;  // empty: a host ExpertPool (memory/expert_pool.h)
};

struct ModelWeights {
  std::unique_ptr<TensorStore> store;  // keeps the mmaps alive
  TensorView embed;                    // [V, H]
  TensorView norm;                     // [H]
  TensorView lm_head;                  // [V, H]
  std::vector<LayerWeights> layers;
  std::unique_ptr<ExpertStore> experts;
  std::vector<std::vector<float>> converted;  // F32 copies of tensors stored in another dtype (router biases)
};

// Binds every tensor the config needs (checking each shape), rejects unknown extra
// model.layers.* tensors, copies routed experts into a new expert store.
// Throws ew::Error naming the tensor on any mismatch.
ModelWeights load_model_weights(const std::string& model_dir, const ModelConfig& cfg,
                                const PoolOptions& pool);

}  // namespace ew
