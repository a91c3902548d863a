// CpuRunner: the StepRunner of the CPU. The weights stay where the checkpoint's mmap and
// the host expert pool hold them, the latent cache is the KvCache's host storage, the
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

namespace ew {

// The checkpoint's tensors as the forward pass reads them on the host (views, no copies).
ModelTensors host_model_tensors(const ModelWeights& w);

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
  ModelTensors tensors_;
  RopeTable rope_;
  CpuOps ops_;
  ForwardPass forward_;
  Arena arena_;
  SlotObserver observe_;
};

}  // namespace ew
