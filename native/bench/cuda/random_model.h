// A DeepSeek-V2-shaped model with random weights made directly in device memory (no
// files), so the full V2-Lite shape (~16B parameters, ~31 GB in bf16) can be benchmarked
// without downloading weights. Routed experts of each MoE layer live in one slot-indexed
// tensor per matrix (gate/up [cap, I, H], down [cap, H, I]) as the expert pool lays them
// out: base experts in slots [0, M), then each adapter's tuned experts, with the reroute
// tables [1 + n_adapters rows, M] per layer (row 0 the identity) that send each adapter's
// tokens there. random_model_tensors() hands it to CudaRunner, the engine's own runner.
// Benchmark code: built into the bench targets only, never into the shipped libraries.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/config.h"
#include "engine/forward.h"
#include "engine/reroute_table.h"
#include "memory/cuda/expert_pool_cuda.h"
#include "util/cuda/cuda_util.h"
#include "util/tensor.h"

namespace ew {
namespace cuda {

// The DeepSeek-V2-Lite hyper-parameters (docs/model-and-adapters.md, section 1).
ModelConfig deepseek_v2_lite_config();

// Fills n elements of dtype at p with offset + scale * U(-1, 1) from a counter-based hash
// of (seed, index): the same seed gives the same values on any device.
void fill_random(void* p, DType dtype, int64_t n, uint64_t seed, float scale, float offset, void* stream);

// One adapter: per MoE layer (0-based among MoE layers), the tuned base expert ids.
using AdapterExperts = std::vector<std::vector<int32_t>>;

struct RandomLayer {
  bool moe = false;
  DeviceBuffer input_norm, post_norm, q_proj, q_a, q_a_norm, q_b, kv_a, kv_a_norm, kv_b, o_proj;
  DeviceBuffer gate_up, down;              // dense MLP (layer < first_k_dense) or the shared experts
  DeviceBuffer router;                     // [M, H]
  const void* experts[3] = {};             // gate, up, down: slot s at + s * (I * H) elements
  DeviceBuffer exp_gate, exp_up, exp_down; // their memory without the VMM pool
  int32_t n_slots = 0;                     // M + this layer's adapter experts
  int64_t dense_width = 0;                 // W: gate_up is [2W, H] (intermediate or shared width)
};

struct RandomModel {
  ModelConfig cfg;
  DType dtype = DType::BF16;
  DeviceBuffer embed, norm, lm_head;
  std::vector<RandomLayer> layers;
  int32_t n_adapter_rows = 1;  // reroute rows, the base row included
  RerouteTables tables;        // per MoE layer
  size_t total_bytes = 0;      // all weights
  std::unique_ptr<ExpertPoolCuda> pool;  // the routed experts when made with vmm_pool
};

// Allocates and fills every weight (bf16) and the reroute tables. vmm_pool: the routed
// experts live in an ExpertPoolCuda (memory/cuda), base slots mapped, each adapter's slots
// allocated and mapped as the engine would; otherwise one cudaMalloc per tensor. Throws
// ew::Error when the device lacks the memory.
RandomModel make_random_model(const ModelConfig& cfg, const std::vector<AdapterExperts>& adapters, uint64_t seed,
                              bool vmm_pool = false);

// The model's device pointers as the forward pass reads them (the model must outlive their use).
ModelTensors random_model_tensors(const RandomModel& m);

}  // namespace cuda
}  // namespace ew
