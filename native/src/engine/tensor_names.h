// The checkpoint tensor names that differ between families, in one place for the model
// loader (weights.cc) and the adapter loader (adapter.cc): the MoE block's router and
// routed experts. DeepSeek and Qwen3-MoE: model.layers.L.mlp.gate.weight and
// mlp.experts.E.{gate,up,down}_proj.weight; Mixtral: block_sparse_moe.gate.weight and
// block_sparse_moe.experts.E.{w1,w3,w2}.weight (w1 = gate, w3 = up, w2 = down).
#pragma once
#include <cstdint>
#include <string>

#include "engine/config.h"
#include "memory/expert_store.h"

namespace ew {

// "model.layers.{l}.mlp" or "model.layers.{l}.block_sparse_moe".
std::string moe_block_prefix(const ModelConfig& cfg, int64_t layer);
// The full name (with "model.") of matrix m of routed expert e of layer l.
std::string expert_tensor_name(const ModelConfig& cfg, int64_t layer, int64_t expert, ExpertMat m);
// True when `name` names a routed expert's tensor in this family's layout, with or
// without the leading "model."; sets layer and expert.
bool parse_expert_tensor_name(const ModelConfig& cfg, const std::string& name, int64_t* layer, int64_t* expert);

}  // namespace ew
