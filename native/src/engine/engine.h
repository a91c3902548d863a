// Engine: the whole model on one device. Loads a model directory, runs batched
// steps (any mix of prefill chunks and decode tokens of many sequences), owns the
// KV cache and the expert pool. It never queues: the scheduler (TypeScript) decides
// what goes into each step. Thread-safety: Step/FreeSequence calls are serialized by
// the caller (the addon runs one step at a time); stats are safe to read any time.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/adapter_registry.h"
#include "engine/config.h"
#include "memory/expert_store.h"
#include "memory/kv_cache.h"

namespace ew {

struct EngineOptions {
  std::string device = "cpu";  // "cpu" | "cuda" | "auto"
  int n_threads = 0;           // 0: all hardware threads
  int kv_block_size = 16;      // tokens per KV block
  int64_t kv_cache_tokens = 0; // capacity in tokens over all sequences; 0: a default by model size
  int max_adapter_slots = 0;   // per MoE layer, reserved for adapters (issue: ESFT adapters)
  int max_adapters = 0;        // adapter rows in the reroute tables (row 0 is the base)
  // Element type of the latent KV cache: "f32", "bf16", or "" (default: bf16 on the CPU, half
  // the bytes per token; f32 on CUDA, whose cache is fp32 only).
  std::string kv_cache_dtype;
  // The CPU kernels' dispatch path (kernels/cpu/cpu_kernels.h): "" (EW_CPU_PATH, else the best
  // fp32 path), or a name: "portable", "avx2", "avx512", "avx512-bf16", "amx".
  std::string cpu_path;
};

// What the step runner did with the steps (CUDA graphs; all zero on the CPU).
struct RunnerStats {
  int64_t eager_steps = 0;       // steps enqueued op by op
  int64_t graph_captures = 0;    // decode shapes captured as CUDA graphs
  int64_t graph_replays = 0;     // steps run by replaying a captured graph
  int64_t capture_failures = 0;  // captures that failed (logged; those shapes then run eagerly)
};

struct SamplingParams {
  float temperature = 0.f;  // below kMinTemperature (0 included): greedy, ties to the lower token id
  int32_t top_k = 0;        // 0: off
  float top_p = 1.f;        // 1: off
  uint64_t seed = 0;        // with the position, fixes the draw: same seed, same output, any batch
  // OpenAI's penalties over the sequence's generated tokens (SeqChunk::output_counts):
  // logit[t] -= count[t] * frequency_penalty + (count[t] > 0 ? presence_penalty : 0).
  float presence_penalty = 0.f;
  float frequency_penalty = 0.f;
  int32_t top_logprobs = 0;  // also return this many most likely tokens (0..kMaxTopLogprobs)
};
constexpr int32_t kMaxTopLogprobs = 20;

// Temperatures this small would overflow 1/T; like vLLM, they mean greedy.
constexpr float kMinTemperature = 1e-5f;
inline bool is_greedy(const SamplingParams& p) { return !(p.temperature >= kMinTemperature); }

// One sequence's part of a step: n_tokens consecutive tokens starting at the
// sequence's current length (a prefill chunk, or 1 token when decoding).
struct SeqChunk {
  int64_t seq_id = 0;
  int32_t adapter = 0;      // adapter row in the reroute tables (0: base model)
  int32_t n_tokens = 0;
  bool sample = true;       // sample a next token after the chunk's last token
  bool logprobs = false;    // also return that token's log-probability
  SamplingParams sampling;
  std::vector<std::pair<int32_t, float>> logit_bias;       // added to those tokens' logits before the draw
  std::vector<std::pair<int32_t, int32_t>> output_counts;  // tokens generated so far and how often (penalties)
};

struct StepBatch {
  std::vector<int32_t> tokens;  // all chunks' tokens, concatenated in chunk order
  std::vector<SeqChunk> chunks;
  bool return_logits = false;   // tests: logits of every token, [tokens.size(), vocab]
};

struct StepResult {
  std::vector<int32_t> tokens;   // per chunk: the sampled token, or -1 when !sample or failed
  std::vector<float> logprobs;   // per chunk: log p(token) when asked, else 0
  std::vector<std::string> errors;  // per chunk: why it did not run ("" when it ran)
  // Per sampled chunk with top_logprobs = k: its k most likely tokens (probability order,
  // ties to the lower id) and their log-probabilities, concatenated in chunk order.
  std::vector<int32_t> top_ids;
  std::vector<float> top_logprobs;
  std::vector<float> logits;     // when return_logits
};

class Engine {
 public:
  static std::unique_ptr<Engine> Load(const std::string& model_dir, const EngineOptions& opts);
  virtual ~Engine() = default;

  virtual const ModelConfig& config() const = 0;
  virtual std::string device_name() const = 0;
  virtual DType expert_dtype() const = 0;  // storage type of the routed experts (ModelInfo.expertDtype)
  virtual DType kv_cache_dtype() const = 0;  // element type of the latent KV cache
  virtual std::string cpu_path() const = 0;  // the CPU kernels' path ("" when the CUDA runner runs)
  // Runs one forward step. A chunk whose own values cannot run (a token outside the
  // vocabulary, an unknown or draining adapter row, a sequence given twice or past the
  // context, bad sampling values, no room in the KV cache) fails alone: its error is in
  // StepResult::errors, its sequence is left as it was, and the other chunks run. Throws
  // ew::Error, leaving every sequence as it was, only when the batch itself is malformed
  // (chunk token counts that do not match the tokens) or the forward pass fails.
  virtual StepResult Step(const StepBatch& batch) = 0;
  virtual void FreeSequence(int64_t seq_id) = 0;
  virtual int64_t SequenceLength(int64_t seq_id) const = 0;  // -1 when unknown
  virtual KvStats kv_stats() const = 0;
  virtual RunnerStats runner_stats() const = 0;  // CUDA graph captures and replays (zero on the CPU)
  virtual ExpertPoolStats expert_stats() const = 0;

  // ESFT adapters, delegated to the engine's AdapterRegistry (engine/adapter_registry.h):
  // register validates first (no change on error) and returns the row for SeqChunk::adapter;
  // unregister refuses new sequences on the row at once and frees it after its last sequence.
  virtual AdapterInfo RegisterAdapter(const std::string& dir) = 0;
  virtual void UnregisterAdapter(int32_t row) = 0;
  virtual std::vector<AdapterInfo> adapters() const = 0;
};

}  // namespace ew
