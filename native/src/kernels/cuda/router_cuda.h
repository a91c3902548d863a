// The fused router step on CUDA: softmax, top-k (greedy or group-limited) and the
// reroute of each chosen base id to its adapter's expert slot, one warp per token.
// Same contract as route_tokens_cpu (kernels/router.h) from the router logits on:
// the logits GEMM runs before it. Plain C++ signature: callers need no CUDA headers.
#pragma once
#include <cstdint>

#include "kernels/router.h"

namespace ew {
namespace cuda {

// All pointers are device memory. logits: [T, M] fp32. reroute.table: [n_rows, M] int32 of
// this layer (null: slots are the base ids). adapter_rows: [T] (null: row 0); the caller
// validates rows on the host (the kernel cannot throw: a row out of range yields slot -1).
// out_ids may be null. stream: a cudaStream_t (null: the default stream).
// Supports 1 <= M <= 256 (grouped: M = 32 * v and M / n_group a multiple of v with a
// power-of-two lane count per group) and top_k <= min(M, 32); throws ew::Error otherwise
// or when the launch fails.
void route_topk_reroute(const float* logits, int64_t T, const RouterParams& p, const RerouteTableView& reroute,
                        const int32_t* adapter_rows, int32_t* out_slots, float* out_weights, int32_t* out_ids,
                        void* stream);

}  // namespace cuda
}  // namespace ew
