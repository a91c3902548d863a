// The whole fused router step on the CPU for tests and benchmarks: router logits by the
// exact matmul, then CpuOps::route (kernels/ops.h), on the process's dispatch path. The
// forward pass calls the two ops itself.
#pragma once
#include <cstdint>

#include "kernels/ops.h"

namespace ew {

// x: [T, H] fp32, W: the router weight [M, H] of any dtype; scratch holds T * M floats
// (the logits, then the scores); correction_bias: [M] or null. Throws ew::Error on a bad
// shape or adapter row.
void route_tokens_cpu(const float* x, int64_t T, int64_t H, const TensorView& W, const RouterParams& p,
                      const RerouteTableView& reroute, const int32_t* adapter_rows, int32_t* out_slots,
                      float* out_weights, int32_t* out_ids, float* scratch, const float* correction_bias = nullptr);

}  // namespace ew
