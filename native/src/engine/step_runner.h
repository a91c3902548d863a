// StepRunner: runs one validated step's tokens through the model on one device. The
// engine (engine.cc) validates, reserves cache room and samples; a runner only computes.
// Both run the one ForwardPass (engine/forward.h): CpuRunner (engine/cpu_runner.h) on
// CpuOps, CudaRunner (engine/cuda/cuda_runner.h) on CudaOps with everything on the GPU.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/step_metadata.h"
#include "engine/reroute_table.h"
#include "memory/kv_cache.h"

namespace ew {

// Logits of a step's logit rows (StepTokens::logit_rows order). A row comes back whole
// when it was asked for whole (sampling with temperature, logits for tests); any other
// row may come back as its greedy token (argmax, ties to the lower id) and that token's
// log-probability only, which is all greedy decoding needs.
struct StepLogits {
  std::vector<float> rows;            // whole rows, [rows.size() / vocab, vocab]
  std::vector<int64_t> row_of;        // per logit row: its index in `rows`, or -1
  std::vector<int32_t> greedy;        // per logit row with row_of == -1: the argmax
  std::vector<float> greedy_logprob;  // and its log-probability
};

class StepRunner {
 public:
  virtual ~StepRunner() = default;
  virtual std::string device_name() const = 0;
  // Writes every token's latent KV entries (room reserved in kv) and returns the logits.
  // need_whole[i]: logit row i must come back whole.
  virtual StepLogits run(const StepTokens& st, const std::vector<uint8_t>& need_whole, KvCache& kv,
                         const RerouteTables& tables) = 0;
  virtual RunnerStats stats() const { return {}; }
};

}  // namespace ew
