// ESFT adapters: a directory with expert_cfg.json and safetensors holding only the
// tuned routed experts. load_adapter validates everything against the base model
// before anything else happens, so a refused adapter leaves no trace anywhere.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/config.h"
#include "engine/safetensors.h"
#include "util/tensor.h"

namespace ew {

struct AdapterExpert {
  int32_t expert = 0;          // base expert id this copy replaces
  TensorView gate, up, down;   // [I, H], [I, H], [H, I] in the pool's dtype
};

struct AdapterSpec {
  std::string dir;
  std::unique_ptr<TensorStore> store;  // keeps the views' mmaps alive
  // Indexed by MoE layer (0 .. num_moe_layers-1); experts in ascending id order.
  std::vector<std::vector<AdapterExpert>> layers;
  int64_t n_experts = 0;
  size_t expert_bytes = 0;  // bytes of all tuned experts' three matrices
};

// The parsed expert_cfg.json: per decoder layer index, the tuned expert ids as listed.
struct ExpertSelection {
  std::vector<std::pair<int64_t, std::vector<int64_t>>> layers;  // (layer, ids), ascending layer
  bool shared_experts = false;
  bool non_expert_modules = false;
};

// Parses expert_cfg.json text; `origin` names the file in errors.
ExpertSelection parse_expert_selection(const std::string& json_text, const std::string& origin);

// Loads and validates <dir>: expert_cfg.json (layer keys are strings; a layer may be
// missing or empty; shared_experts / non_expert_modules true are refused), and for every
// listed (layer, expert) the gate/up/down tensors, named with or without the leading
// "model.", with exact shapes and dtype `pool_dtype`. Refuses any other tensor, a layer
// that is not a MoE layer of `cfg`, an expert id outside [0, M) and duplicate ids.
// Throws ew::Error naming the directory and the offending key or tensor.
AdapterSpec load_adapter(const std::string& dir, const ModelConfig& cfg, DType pool_dtype);

}  // namespace ew
