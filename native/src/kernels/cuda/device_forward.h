// DeviceForward: the DeepSeek-V2 forward pass with everything on one GPU: weights,
// activations, the block-paged latent KV cache, the expert pool (ExpertPoolCuda) and
// the reroute tables. A step uploads its token metadata (ids, sequence rows, positions,
// adapter rows, RoPE cos/sin, block tables) in one copy, runs every layer on one stream
// through kernels/cuda/ops_cuda.h and downloads only what sampling needs: greedy rows
// come back as (token, logprob), rows sampled with temperature come back whole and are
// sampled on the host by engine/sampler.h, so a seed draws the same token on any device.
//
// Decode steps (one token per sequence) are captured as CUDA graphs, one per shape
// (tokens, logit rows, context bucket: engine/step_metadata.h), on their second occurrence (the first sizes the
// scratch arena) and replayed after the metadata copy. A scratch reallocation drops them.
//
// The same class drives the engine (engine.cc, weights uploaded from the checkpoint) and
// the GPU benchmark (native/bench/gpu_decode.cc, random weights made on the device), so
// the benchmark times exactly the code the daemon runs.
// Plain C++ interface: callers need no CUDA headers.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "engine/config.h"
#include "engine/step_runner.h"
#include "engine/weights.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/ops_cuda.h"

namespace ew {
namespace cuda {

struct DevTensor {
  const void* p = nullptr;  // device memory
  DType dt = DType::BF16;
};

struct DeviceLayer {
  DevTensor input_norm, post_norm;
  DevTensor q_proj;               // when q_lora_rank == 0
  DevTensor q_a, q_a_norm, q_b;   // otherwise
  DevTensor kv_a, kv_a_norm, kv_b, o_proj;
  DevTensor gate_up, down;        // dense MLP, or the shared experts of a MoE layer: gate_up [2W, H]
  int64_t mlp_width = 0;          // W (0: no dense MLP and no shared experts)
  bool moe = false;
  int moe_index = -1;
  DevTensor router;               // [M, H]
  MoeWeights experts;             // slot-indexed routed experts (the pool's tensors)
};

struct DeviceModel {
  DevTensor embed, norm, lm_head;
  std::vector<DeviceLayer> layers;
};

// Copies the checkpoint's non-expert weights to the device (gate and up fused) and
// points the MoE layers at `pool` (device memory). `storage` keeps the copies alive.
DeviceModel upload_model(const ModelWeights& w, const ExpertStore& pool,
                         std::vector<DeviceBuffer>& storage);

class DeviceForward final : public StepRunner {
 public:
  // The latent cache gets kv's geometry (blocks, layers, block size, width) in device
  // memory; kv itself (without host storage) keeps the block tables. n_reroute_rows:
  // rows of the reroute tables the engine will pass (fixed for the engine's life).
  DeviceForward(const ModelConfig& cfg, DeviceModel model, const KvCache& kv, int n_reroute_rows,
                std::vector<DeviceBuffer> storage = {});
  ~DeviceForward() override;

  std::string device_name() const override;
  StepLogits run(const StepTokens& st, const std::vector<uint8_t>& need_whole, KvCache& kv,
                 const RerouteTables& tables) override;

  // The parts of run(), for the benchmark: prepare() uploads a step's metadata and the
  // reroute tables when they changed; enqueue() launches the step (as a graph when
  // use_graph and the shape allows) without waiting; collect() waits and downloads.
  void prepare(const StepTokens& st, const KvCache& kv, const RerouteTables& tables);
  void enqueue(bool use_graph);
  StepLogits collect(const std::vector<uint8_t>& need_whole);
  void* stream() const { return stream_.get(); }
  // Runs the prepared step eagerly and returns, per MoE layer, how many distinct expert
  // slots its tokens used (what the step read of the routed experts).
  std::vector<int> distinct_slots();
  size_t graphs() const { return graphs_.size(); }

 private:
  struct Plan {  // shape of the prepared step and where its metadata lives on the device
    int64_t T = 0, n_out = 0, n_seqs = 0, max_blocks = 0, max_ctx = 0;
    bool decode = false;  // one token per sequence: graph-capturable
    const int32_t *ids = nullptr, *seq = nullptr, *pos = nullptr, *rows = nullptr, *out_rows = nullptr;
    const int32_t* tables = nullptr;
    const float *cos = nullptr, *sin = nullptr;
  };
  using GraphKey = std::tuple<int64_t, int64_t, int64_t>;  // T, n_out, max_ctx
  struct Graph;

  void forward(int32_t* record_slots);  // enqueues every kernel of the prepared step
  void attention(const DeviceLayer& L, int layer, float* xn, float* x);
  void ffn(const DeviceLayer& L, float* xn, float* x, int32_t* record_slots);
  void reset_scratch();  // between steps; a reallocated arena drops the graphs
  void drop_graphs();

  ModelConfig cfg_;
  DeviceModel m_;
  std::vector<DeviceBuffer> storage_;
  RopeTable rope_;
  RouterParams router_;
  Stream stream_;
  int n_layers_ = 0, block_size_ = 0;
  int64_t layer_floats_ = 0;  // one layer of one block: block_size * width
  DeviceBuffer cache_;      // [blocks][layers][block_size][width] floats
  DeviceBuffer reroute_;    // [moe layer][row][expert] int32
  int n_rows_ = 0;
  uint64_t reroute_version_ = ~uint64_t(0);
  DeviceBuffer meta_;       // this step's metadata (fixed address: graphs read it)
  void* meta_pinned_ = nullptr;
  size_t meta_pinned_bytes_ = 0;
  Scratch scratch_;
  const void* scratch_base_ = nullptr;
  float* logits_ = nullptr;   // [n_out, V] in scratch, this step's
  int32_t* out_ids_ = nullptr;
  float* out_lp_ = nullptr;
  Plan plan_;
  std::map<GraphKey, std::unique_ptr<Graph>> graphs_;
  std::map<GraphKey, int> seen_;  // decode shapes run eagerly once, captured the next time
};

}  // namespace cuda
}  // namespace ew
