// The fused MoE router step: router logits, softmax, top-k and the reroute of
// each chosen base expert id to the physical expert slot of the token's adapter.
// Written once here (the contract); the CPU implementation is kernels/cpu/router.cc,
// the CUDA one kernels/cuda/router.cu.
#pragma once
#include <cstdint>

#include "engine/config.h"
#include "engine/tensor.h"

namespace ew {

// Per MoE layer: table[a * n_experts + e] = the expert slot serving base id e for
// adapter row a. Row 0 (the base model) is the identity.
struct RerouteTableView {
  const int32_t* table = nullptr;
  int32_t n_rows = 0;     // adapter rows, base row included
  int32_t n_experts = 0;  // routed experts of the base model (M)
};

struct RouterParams {
  int32_t n_experts = 0;  // M
  int32_t top_k = 0;
  TopkMethod method = TopkMethod::Greedy;
  int32_t n_group = 1, topk_group = 1;
  bool norm_topk_prob = false;
  float routed_scaling_factor = 1.f;
};

// For T tokens of hidden size H (x: [T, H] fp32), with router weight W [M, H] (any dtype,
// computed in fp32) and each token's adapter row adapter_rows[t]:
//   p = softmax(W x); top-k by p (ties: lower id first, deterministic);
//   weights normalized or scaled as the config says;
//   out_slots[t*k + j] = table[adapter_rows[t] * M + id_j]  (ids in descending-score order)
//   out_weights[t*k + j] = routing weight of id_j
// out_ids (optional, may be null) receives the base ids before the remap.
// scratch must hold T * M floats. Throws ew::Error on an adapter row out of range.
void route_tokens_cpu(const float* x, int64_t T, int64_t H, const TensorView& W,
                      const RouterParams& p, const RerouteTableView& reroute,
                      const int32_t* adapter_rows, int32_t* out_slots, float* out_weights,
                      int32_t* out_ids, float* scratch);

}  // namespace ew
