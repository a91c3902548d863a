// The DeepSeek-V2 forward pass over one step's tokens, written once against Backend.
// Tokens of many sequences (prefill chunks and decode tokens alike) go through every
// layer together; each token carries its sequence, position and adapter row.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/config.h"
#include "engine/reroute_table.h"
#include "engine/weights.h"
#include "kernels/backend.h"
#include "kernels/cpu/rope.h"
#include "memory/kv_cache.h"

namespace ew {

struct StepTokens {
  std::vector<int32_t> ids;           // token ids
  std::vector<int64_t> seq;           // sequence of each token
  std::vector<int64_t> pos;           // position of each token in its sequence
  std::vector<int32_t> adapter_rows;  // reroute-table row of each token
  std::vector<int64_t> logit_rows;    // tokens whose logits are wanted, in output order
};

// The config's routing rule (softmax top-k, groups, weight normalisation) for the router kernels.
RouterParams router_params(const ModelConfig& cfg);

class ForwardPass {
 public:
  ForwardPass(const ModelConfig& cfg, const ModelWeights& w, Backend& backend);
  // Writes every token's latent KV entries into `kv` (room must be reserved) and returns
  // the logits of the logit_rows, [logit_rows.size(), vocab].
  std::vector<float> run(const StepTokens& st, KvCache& kv, const RerouteTables& tables);

  const RopeTable& rope() const { return rope_; }
  // Distinct (MoE layer, expert slot) pairs the last run() computed: with the
  // non-expert weights, what a step has to read from memory (the benchmark's figure).
  int64_t last_expert_groups() const { return expert_groups_; }

 private:
  void attention(int layer, const std::vector<float>& xn, const StepTokens& st, KvCache& kv, float* out);
  void ffn(int layer, const std::vector<float>& xn, const StepTokens& st, const RerouteTables& tables, float* out);

  const ModelConfig& cfg_;
  const ModelWeights& w_;
  Backend& be_;
  RopeTable rope_;
  RouterParams router_;
  int64_t expert_groups_ = 0;
};

}  // namespace ew
