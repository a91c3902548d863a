// The forward pass of every family (DeepSeek-V2/V3, Qwen3-MoE, Mixtral), written once over
// the op set (kernels/ops.h) and a scratch arena (memory/arena.h); every backend runs this
// same code. The families share the decoder (pre-norm residual layers, dense or MoE
// feed-forward, final norm, lm_head) and differ in attention (MLA over the latent cache,
// or grouped-query attention with optional per-head q/k norms over K/V heads) and in the
// router's rule (router_params). Tokens of many sequences
// (prefill chunks and decode tokens alike) go through every layer together; each token
// carries its step-local sequence, position and adapter row. A runner (engine/cpu_runner.h,
// engine/cuda/cuda_runner.h) owns the memory: it puts the weights, the step's metadata,
// the latent cache and the reroute tables where its ops can read them and hands this pass
// their addresses; the pass only enqueues ops.
//
// Each layer's intermediates are given back to the arena before the next layer, and
// attention runs over token chunks whose workspace stays under kMaxAttentionWorkspace, so
// a step's scratch is one layer's, bounded at any prompt length.
//
// A new model family is a new branch of this pass over the same ops (and its tensors in
// ModelTensors), not a change to any backend.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "engine/config.h"
#include "kernels/ops.h"
#include "memory/arena.h"

namespace ew {

// One decoder layer's weights in the backend's memory.
struct LayerTensors {
  Weight input_norm, post_norm;       // [H]
  Weight q_proj;                      // [heads * q_head_dim, H] (MLA: when q_lora_rank == 0)
  // MLA
  Weight q_a, q_a_norm, q_b;          // [q_lora_rank, H], [q_lora_rank], [heads * q_head_dim, q_lora_rank]
  Weight kv_a, kv_a_norm, kv_b;       // [kv_lora_rank + rope, H], [kv_lora_rank], [heads * (nope + v), kv_lora_rank]
  // GQA
  Weight k_proj, v_proj;              // [kv_heads * head_dim, H] each
  Weight q_norm, k_norm;              // [head_dim] (Qwen3's qk_norm)
  Weight o_proj;                      // [H, heads * v_dim] (GQA: v_dim = head_dim)
  Weight gate, up, down;              // the dense MLP, or a MoE layer's shared experts: [W, H], [W, H], [H, W]
  int64_t mlp_width = 0;              // W; 0: neither
  bool moe = false;
  int moe_index = -1;                 // index among the MoE layers (expert store, reroute tables)
  Weight router;                      // [M, H]
  Weight router_bias;                 // [M] F32: DeepSeek-V3's e_score_correction_bias (absent elsewhere)
  MoeWeights experts;                 // the layer's expert slots
};

struct ModelTensors {
  Weight embed, norm, lm_head;  // [V, H], [H], [V, H]
  std::vector<LayerTensors> layers;
};

// The step's token metadata in the backend's memory: the sections of
// engine/step_metadata.h (int32 ids, step-local sequences, positions, adapter rows [T];
// logit rows [n_out]; block tables [n_seqs, max_blocks]; RoPE cos / sin rows [T, rope / 2]).
struct StepInputs {
  int64_t T = 0, n_out = 0, max_ctx = 0, max_blocks = 0;
  const int32_t *ids = nullptr, *seq = nullptr, *pos = nullptr, *rows = nullptr, *out_rows = nullptr;
  const int32_t* block_tables = nullptr;
  const float *cos = nullptr, *sin = nullptr;
};

// The block-paged KV cache in the backend's memory, in memory/kv_cache.h's layout:
// [blocks][layers][block_size][width] elements of dtype, width = ModelConfig::kv_cache_width()
// (MLA's latent, or GQA's keys then values).
struct PagedKvCache {
  void* data = nullptr;
  int n_layers = 0, block_size = 0;
  int64_t width = 0;
  DType dtype = DType::F32;
};

// Every MoE layer's reroute table in the backend's memory: [moe layer][row][expert].
struct RerouteTablesView {
  const int32_t* data = nullptr;
  int32_t n_rows = 0, n_experts = 0;
};

// Called after each MoE layer's routing with the layer's [T, k] expert slots (backend
// memory), in layer order: benchmarks count the distinct experts a step reads.
using SlotObserver = std::function<void(int moe_layer, const int32_t* slots, int64_t n)>;

// The config's routing rule as the route op's parameters.
RouterParams router_params(const ModelConfig& cfg);

class ForwardPass {
 public:
  // Attention for a long prompt runs over token chunks whose workspace stays under this.
  static constexpr size_t kMaxAttentionWorkspace = size_t{256} << 20;

  // softmax_scale: attention's (engine/rope_config.h's RopeTable::softmax_scale).
  ForwardPass(const ModelConfig& cfg, const ModelTensors& w, Ops& ops, float softmax_scale);

  // Enqueues the whole step on the ops: every token's KV cache entry is written into
  // `cache` (room reserved) and the logits of the logit rows, [n_out, vocab], are written
  // to `logits` when given, else to the arena; returns where they are (null when n_out == 0).
  // Scratch comes from `arena` (not reset here: the runner resets it between steps).
  float* run(const StepInputs& in, const PagedKvCache& cache, const RerouteTablesView& tables, Arena& arena,
             float* logits = nullptr, const SlotObserver* observe = nullptr);

  const ModelConfig& config() const { return cfg_; }

 private:
  // x += Attention(RMSNorm(x)), MLA or GQA.
  void mla_attention(int layer, const StepInputs& in, const PagedKvCache& cache, Arena& arena, float* xn, float* x);
  void gqa_attention(int layer, const StepInputs& in, const PagedKvCache& cache, Arena& arena, float* xn, float* x);
  void ffn(int layer, const StepInputs& in, const RerouteTablesView& tables, Arena& arena, float* xn, float* x,
           const SlotObserver* observe);

  const ModelConfig& cfg_;
  const ModelTensors& w_;
  Ops& ops_;
  RouterParams router_;
  MlaShape mla_;
  GqaShape gqa_;
};

}  // namespace ew
