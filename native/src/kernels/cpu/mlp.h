// SiLU-gated MLPs on the CPU: the dense/shared MLP and the grouped routed-expert FFN.
#pragma once
#include <cstdint>

#include "engine/tensor.h"
#include "memory/expert_store.h"

namespace ew {

// g[i] = silu(g[i]) * u[i]
void silu_mul_cpu(float* g, const float* u, int64_t n);

// y[T, H] = down . (silu(gate . x) * (up . x)) with gate/up [W, H], down [H, W].
void mlp_cpu(const float* x, int64_t T, const TensorView& gate, const TensorView& up, const TensorView& down,
             float* y);

// The routed experts of one MoE layer for T tokens (x: [T, H]), k choices each:
// token t's choice j runs expert slot slots[t*k + j] of pool layer `layer` with weight
// weights[t*k + j]. The (token, choice) pairs are grouped by slot and each slot runs
// once over all its tokens; every pair's output lands in its own row, then
// y[t] = sum_j weights[t*k+j] * out[t*k+j] in j order. A token's result therefore
// depends only on its own inputs, never on which tokens share the step.
void grouped_experts_cpu(const float* x, int64_t T, const ExpertStore& pool, int layer, const int32_t* slots,
                         const float* weights, int k, float* y);

}  // namespace ew
