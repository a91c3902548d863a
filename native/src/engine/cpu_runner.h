// CpuRunner: the StepRunner of the CPU. The dense weights are the runner's own copies on
// huge pages (memory/huge_page_copies.h; the file mapping's pages dropped), the routed
// experts stay in the host expert pool, the latent cache is the KvCache's host storage, the
// step's metadata is packed on the host (engine/step_metadata.h) and the forward pass
// (engine/forward.h) runs on CpuOps over a host arena. Every logit row comes back whole
// (the engine's sampler picks greedy tokens too).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "engine/forward.h"
#include "engine/step_runner.h"
#include "engine/weights.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/rope_rows.h"
#include "memory/arena.h"
#include "memory/huge_page_copies.h"

namespace ew {

// The checkpoint's tensors as the forward pass reads them on the host: the dense ones
// copied into `copies`, the routed experts in their pool.
ModelTensors host_model_tensors(const ModelWeights& w, HugePageCopies& copies);

class CpuRunner final : public StepRunner {
 public:
  // path: the CPU kernels' dispatch path (kernels/cpu/cpu_kernels.h).
  CpuRunner(const ModelConfig& cfg, const ModelWeights& w, CpuPath path = cpu_path());
  std::string device_name() const override { return "cpu"; }
  // kv must have host storage.
  StepLogits run(const StepTokens& st, const std::vector<uint8_t>& need_whole, KvCache& kv,
                 const RerouteTables& tables) override;
  // Benchmarks: see every MoE layer's expert slots (host memory) as the steps run.
  void set_slot_observer(SlotObserver observe) { observe_ = std::move(observe); }

 private:
  HugePageCopies copies_;  // before tensors_, which points into it
  ModelTensors tensors_;
  RopeTable rope_;
  CpuOps ops_;
  ForwardPass forward_;
  Arena arena_;
  SlotObserver observe_;
};

}  // namespace ew
