// CudaRunner: the StepRunner of one GPU. It holds no model math: the forward pass is
// engine/forward.h's, run on CudaOps. What it owns is the device side:
//  - the weights (uploaded from the checkpoint by upload_model_tensors, gate and up of each
//    MLP in one buffer so matmul_pair reads them in one launch; the routed experts stay in
//    the ExpertPoolCuda the engine loaded them into), the latent KV cache (kv's geometry in
//    device memory; kv itself keeps the block tables) and the reroute tables (refreshed
//    when their version changes);
//  - a step's metadata (engine/step_metadata.h), staged in pinned memory and moved in one copy;
//  - the scratch arena (device memory, memory/arena.h);
//  - CUDA graphs: a decode step (one token per sequence) of a shape (tokens, logit rows,
//    context bucket) runs eagerly the first time (sizing the arena), is captured the next
//    time and replayed after that. A capture that fails is counted, logged once per shape,
//    and that shape runs eagerly from then on; stats() says what happened;
//  - collection: greedy rows come back as (token, logprob) from the argmax op, rows sampled
//    with temperature come back whole and are drawn by the host sampler (engine/sampler.h),
//    so a seed draws the same token on any device.
// The same class runs the engine (engine.cc) and the GPU benchmark
// (native/bench/gpu_decode.cc, random weights made on the device), so the benchmark times
// exactly the daemon's code. Plain C++ interface: callers need no CUDA headers.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "engine/config.h"
#include "engine/forward.h"
#include "engine/step_runner.h"
#include "engine/weights.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/rope_rows.h"
#include "memory/arena.h"
#include "util/cuda/cuda_util.h"

namespace ew {

// Copies the checkpoint's non-expert weights to the device and points the MoE layers at
// its expert store (which must be in device memory). `storage` keeps the copies alive.
ModelTensors upload_model_tensors(const ModelWeights& w, std::vector<cuda::DeviceBuffer>& storage);

class CudaRunner final : public StepRunner {
 public:
  // tensors: in device memory, kept alive by `storage` (or by the caller). n_reroute_rows:
  // rows of the reroute tables the engine will pass (fixed for the engine's life).
  CudaRunner(const ModelConfig& cfg, ModelTensors tensors, const KvCache& kv, int n_reroute_rows,
             std::vector<cuda::DeviceBuffer> storage = {});
  ~CudaRunner() override;

  std::string device_name() const override;
  StepLogits run(const StepTokens& st, const std::vector<uint8_t>& need_whole, KvCache& kv,
                 const RerouteTables& tables) override;
  RunnerStats stats() const override { return stats_; }

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
  using GraphKey = std::tuple<int64_t, int64_t, int64_t>;  // T, n_out, max_ctx
  struct Graph;
  struct Outputs {  // where the step's results are (arena memory)
    float* logits = nullptr;
    int32_t* ids = nullptr;
    float* logprob = nullptr;
  };

  Outputs forward_step(const SlotObserver* observe);  // enqueues the prepared step
  void begin_step();                                  // resets the arena; a moved arena drops the graphs
  bool capture(const GraphKey& key);                  // captures and launches; false: failed (counted, logged)

  ModelConfig cfg_;
  ModelTensors tensors_;
  std::vector<cuda::DeviceBuffer> storage_;
  RopeTable rope_;
  cuda::Stream stream_;
  cuda::CudaOps ops_;
  ForwardPass forward_;
  Arena arena_;
  uint64_t graph_generation_ = 0;  // arena generation the graphs were captured in
  PagedKvCache cache_;
  cuda::DeviceBuffer cache_buf_;   // [blocks][layers][block_size][width] floats
  cuda::DeviceBuffer reroute_;     // [moe layer][row][expert] int32
  int n_rows_ = 0;
  uint64_t reroute_version_ = ~uint64_t(0);
  cuda::DeviceBuffer meta_;        // this step's metadata (fixed address: graphs read it)
  void* meta_pinned_ = nullptr;
  size_t meta_pinned_bytes_ = 0;
  StepInputs inputs_;
  bool decode_ = false;            // the prepared step has one token per sequence: graph-capturable
  Outputs out_;
  std::map<GraphKey, std::unique_ptr<Graph>> graphs_;
  std::map<GraphKey, int> seen_;   // decode shapes run eagerly once, captured the next time
  RunnerStats stats_;
};

}  // namespace ew
