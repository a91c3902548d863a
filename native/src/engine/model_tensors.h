// The checkpoint's tensors (engine/weights.h) as the forward pass reads them
// (engine/forward.h's ModelTensors), mapped once for every runner: each runner only says
// where a tensor goes (the CPU reads it in place; the CUDA runner uploads it).
#pragma once
#include <functional>

#include "engine/forward.h"
#include "engine/weights.h"

namespace ew {

struct TensorPlacement {
  // One tensor where the ops read it (an absent tensor, data == nullptr, may stay absent).
  std::function<Weight(const TensorView&)> place;
  // Two projections matmul_pair reads together: the gate and up of a gated MLP, GQA's
  // keys and values (the CUDA runner puts them in one buffer so one launch reads both).
  std::function<void(const TensorView& gate, const TensorView& up, Weight* g, Weight* u)> place_gate_up;
};

// The routed experts come from w.experts (their store must be readable by the ops).
ModelTensors model_tensors(const ModelWeights& w, const TensorPlacement& placement);

}  // namespace ew
