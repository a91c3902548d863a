// Engine: owns weights, KV cache, reroute tables and adapters, and runs the forward
// pass through a StepRunner: CpuRunner, or CudaRunner (weights, cache and expert pool on
// the GPU) when built with CUDA and asked for.
// Step validates the whole batch before touching any sequence, then runs the
// forward pass and samples per chunk.
#include "engine/engine.h"

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <unordered_set>

#include "engine/cpu_runner.h"
#include "engine/reroute_table.h"
#include "engine/sampler.h"
#include "engine/step_runner.h"
#include "engine/weights.h"
#include "util/error.h"
#include "util/thread_pool.h"
#ifdef EW_WITH_CUDA
#include "engine/cuda/cuda_runner.h"
#include "memory/cuda/expert_pool_cuda.h"
#include "util/cuda/cuda_util.h"
#endif

namespace ew {
namespace {

constexpr int64_t kDefaultKvTokens = 4096;

// At most a quarter of physical memory goes to the default-sized cache.
int64_t default_kv_tokens(const ModelConfig& cfg, DType dtype) {
  const int64_t per_token = cfg.num_hidden_layers * cfg.kv_cache_width() * static_cast<int64_t>(dtype_size(dtype));
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page <= 0 || per_token <= 0) return kDefaultKvTokens;
  const int64_t cap = static_cast<int64_t>(pages) * page / 4 / per_token;
  return std::max<int64_t>(1, std::min(kDefaultKvTokens, cap));
}

class ModelEngine final : public Engine {
 public:
  ModelEngine(const std::string& dir, const EngineOptions& opts, bool cuda) : cfg_(load_model_config(dir)) {
    if (opts.kv_block_size <= 0) fail("engine options: kv_block_size must be positive, got ", opts.kv_block_size);
    if (opts.max_adapters < 0 || opts.max_adapter_slots < 0)
      fail("engine options: max_adapters and max_adapter_slots must be >= 0");
    if (opts.n_threads > 0) ThreadPool::set_global_threads(opts.n_threads);
    if (opts.kv_cache_dtype == "bf16") kv_dtype_ = DType::BF16;
    else if (opts.kv_cache_dtype == "f32" || (opts.kv_cache_dtype.empty() && cuda)) kv_dtype_ = DType::F32;
    else if (opts.kv_cache_dtype.empty()) kv_dtype_ = DType::BF16;
    else fail("engine options: kv_cache_dtype '", opts.kv_cache_dtype, "': expected 'f32' or 'bf16'");
    if (cuda && kv_dtype_ != DType::F32) fail("engine options: the CUDA KV cache is f32 (kv_cache_dtype bf16 is CPU-only)");
    if (!cuda) cpu_path_ = opts.cpu_path.empty() ? ew::cpu_path() : cpu_path_named(opts.cpu_path.c_str());
    PoolOptions po;
    po.max_adapter_slots = opts.max_adapter_slots;
#ifdef EW_WITH_CUDA
    if (cuda)  // routed experts straight into device memory, reserved per layer (CUDA VMM)
      po.make_store = [](int n_layers, int n_base, int slots, int64_t H, int64_t I, DType dt) {
        return std::unique_ptr<ExpertStore>(std::make_unique<ExpertPoolCuda>(0, n_layers, n_base, slots, H, I, dt));
      };
#endif
    w_ = load_model_weights(dir, cfg_, po);
    const int64_t tokens = opts.kv_cache_tokens > 0 ? opts.kv_cache_tokens : default_kv_tokens(cfg_, kv_dtype_);
    const int64_t blocks = (tokens + opts.kv_block_size - 1) / opts.kv_block_size;
    if (blocks > INT32_MAX) fail("engine options: kv_cache_tokens ", tokens, " is too large");
    kv_ = std::make_unique<KvCache>(static_cast<int>(cfg_.num_hidden_layers), cfg_.kv_cache_width(),
                                    opts.kv_block_size, static_cast<int>(blocks), /*host_storage=*/!cuda, kv_dtype_);
    tables_ = RerouteTables(static_cast<int>(cfg_.num_moe_layers()), opts.max_adapters + 1,
                            static_cast<int>(cfg_.n_routed_experts));
    if (w_.experts) registry_ = std::make_unique<AdapterRegistry>(cfg_, *w_.experts, tables_);
#ifdef EW_WITH_CUDA
    if (cuda) {
      if (!w_.experts) fail(dir, ": the CUDA backend serves MoE models; this one has no routed experts");
      std::vector<cuda::DeviceBuffer> storage;
      ModelTensors tensors = upload_model_tensors(w_, storage);
      runner_ = std::make_unique<CudaRunner>(cfg_, std::move(tensors), *kv_, tables_.n_rows(), std::move(storage));
      warm_up();
      return;
    }
#endif
    runner_ = std::make_unique<CpuRunner>(cfg_, w_, cpu_path_);
    cuda_ = false;
  }

  const ModelConfig& config() const override { return cfg_; }
  std::string device_name() const override { return runner_->device_name() + note_; }
  void set_device_note(const std::string& note) { note_ = note; }
  DType expert_dtype() const override { return w_.experts ? w_.experts->dtype() : w_.embed.dtype; }
  DType kv_cache_dtype() const override { return kv_dtype_; }
  std::string cpu_path() const override { return cuda_ ? "" : cpu_path_name(cpu_path_); }

  StepResult Step(const StepBatch& batch) override {
    std::unique_lock<std::mutex> lk;
    if (registry_) lk = std::unique_lock<std::mutex>(registry_->step_mutex());
    const int64_t V = cfg_.vocab_size;
    const size_t n_chunks = batch.chunks.size();

    // 1. The batch's shape is the caller's contract: a violation fails the whole step.
    int64_t total = 0;
    for (size_t c = 0; c < n_chunks; ++c) {
      const SeqChunk& ch = batch.chunks[c];
      if (ch.n_tokens < 1) fail("step: chunk ", c, " (sequence ", ch.seq_id, ") has n_tokens ", ch.n_tokens, " < 1");
      total += ch.n_tokens;
    }
    if (total != static_cast<int64_t>(batch.tokens.size()))
      fail("step: chunks cover ", total, " tokens but ", batch.tokens.size(), " were given");

    // 2. A chunk's own values (its tokens, adapter row, sampling, room in the cache) are
    // its request's: a bad one fails that chunk only, before any state changes, and the
    // rest of the step runs without it.
    StepResult res;
    res.errors.assign(n_chunks, std::string());
    std::vector<int64_t> offset(n_chunks);
    std::unordered_set<int64_t> seen;
    for (size_t c = 0, at = 0; c < n_chunks; at += batch.chunks[c].n_tokens, ++c) {
      offset[c] = static_cast<int64_t>(at);
      try {
        check_chunk(batch, c, at, seen);
      } catch (const Error& e) {
        res.errors[c] = e.what();
      }
    }

    // 3. Reserve cache room for every valid chunk; one that does not fit fails alone. A
    // failed forward pass undoes the lot: frees the sequences this step created and gives
    // back the blocks existing ones grew.
    std::vector<int64_t> created, grown;
    auto undo = [&] {
      for (int64_t s : created) kv_->free(s);
      for (int64_t s : grown) kv_->trim(s);
    };
    std::vector<int64_t> start_len(n_chunks, 0);
    for (size_t c = 0; c < n_chunks; ++c) {
      if (!res.errors[c].empty()) continue;
      const SeqChunk& ch = batch.chunks[c];
      const bool existed = kv_->has(ch.seq_id);
      const int64_t len = existed ? kv_->length(ch.seq_id) : 0;
      if (!kv_->reserve(ch.seq_id, len + ch.n_tokens)) {
        res.errors[c] = concat("step: KV cache full: sequence ", ch.seq_id, " needs room for ", len + ch.n_tokens,
                               " tokens (", kv_->stats().free_blocks, " free blocks of ", kv_->block_size(), " tokens)");
        continue;
      }
      start_len[c] = len;
      (existed ? grown : created).push_back(ch.seq_id);
    }

    // 4. Lay out the valid chunks' tokens and run the model.
    StepTokens st;
    st.ids.reserve(total);
    st.seq.reserve(total);
    st.pos.reserve(total);
    st.adapter_rows.reserve(total);
    std::vector<int64_t> chunk_last(n_chunks, -1);  // logit row of each sampling chunk, -1 otherwise
    std::vector<uint8_t> need_whole;                 // per logit row: sampled with temperature, or logits asked for
    std::vector<int64_t> token_of;                   // return_logits: batch token index of each run token
    for (size_t c = 0; c < n_chunks; ++c) {
      if (!res.errors[c].empty()) continue;
      const SeqChunk& ch = batch.chunks[c];
      for (int32_t i = 0; i < ch.n_tokens; ++i) {
        st.ids.push_back(batch.tokens[offset[c] + i]);
        st.seq.push_back(ch.seq_id);
        st.pos.push_back(start_len[c] + i);
        st.adapter_rows.push_back(ch.adapter);
        if (batch.return_logits) token_of.push_back(offset[c] + i);
      }
      const int64_t last = static_cast<int64_t>(st.seq.size()) - 1;
      if (batch.return_logits) {
        chunk_last[c] = ch.sample ? last : -1;
      } else if (ch.sample) {
        chunk_last[c] = static_cast<int64_t>(st.logit_rows.size());
        st.logit_rows.push_back(last);
        need_whole.push_back(!is_greedy(ch.sampling) || adjusts_logits(ch) || ch.sampling.top_logprobs > 0);
      }
    }
    const int64_t run_tokens = static_cast<int64_t>(st.ids.size());
    if (batch.return_logits) {
      for (int64_t t = 0; t < run_tokens; ++t) st.logit_rows.push_back(t);
      need_whole.assign(st.logit_rows.size(), 1);
    }

    StepLogits out;
    try {
      if (run_tokens > 0) out = runner_->run(st, need_whole, *kv_, tables_);
    } catch (...) {
      undo();
      throw;
    }

    // 5. Sample, then commit the new lengths.
    res.tokens.assign(n_chunks, -1);
    res.logprobs.assign(n_chunks, 0.f);
    std::vector<float> scratch;
    for (size_t c = 0; c < n_chunks; ++c) {
      if (!res.errors[c].empty()) continue;
      const SeqChunk& ch = batch.chunks[c];
      const int64_t new_len = start_len[c] + ch.n_tokens;
      const int64_t i = chunk_last[c];
      if (i >= 0 && out.row_of[i] >= 0) {
        // The draw sees the bias and penalties; the reported log-probabilities are the
        // model's own (vLLM's raw logprobs).
        const float* row = &out.rows[out.row_of[i] * V];
        res.tokens[c] = sample_token(draw_logits(row, V, ch, scratch), V, ch.sampling, new_len);
        if (ch.logprobs) res.logprobs[c] = token_logprob(row, V, res.tokens[c]);
        if (ch.sampling.top_logprobs > 0) top_logprobs(row, V, ch.sampling.top_logprobs, res.top_ids, res.top_logprobs);
      } else if (i >= 0) {  // greedy, chosen on the device
        res.tokens[c] = out.greedy[i];
        res.logprobs[c] = ch.logprobs ? out.greedy_logprob[i] : 0.f;
      }
      kv_->set_length(ch.seq_id, new_len);
      if (registry_) registry_->note_sequence(ch.seq_id, ch.adapter);
    }
    if (batch.return_logits) {
      // Rows of failed chunks' tokens stay zero: the layout is still [tokens.size(), vocab].
      res.logits.assign(static_cast<size_t>(total) * V, 0.f);
      for (int64_t t = 0; t < run_tokens; ++t)
        std::copy_n(&out.rows[t * V], V, &res.logits[token_of[t] * V]);
    }
    return res;
  }

  void FreeSequence(int64_t seq_id) override {
    std::unique_lock<std::mutex> lk;
    if (registry_) lk = std::unique_lock<std::mutex>(registry_->step_mutex());
    kv_->free(seq_id);
    if (registry_) registry_->release_sequence(seq_id);
  }
  int64_t SequenceLength(int64_t seq_id) const override {
    return kv_->has(seq_id) ? kv_->length(seq_id) : -1;
  }
  KvStats kv_stats() const override { return kv_->stats(); }
  RunnerStats runner_stats() const override { return runner_->stats(); }
  ExpertPoolStats expert_stats() const override { return w_.experts ? w_.experts->stats() : ExpertPoolStats{}; }

  AdapterInfo RegisterAdapter(const std::string& dir) override {
    if (!registry_) fail("register adapter ", dir, ": the model has no routed experts");
    return registry_->register_adapter(dir);
  }
  void UnregisterAdapter(int32_t row) override {
    if (!registry_) fail("unregister adapter row ", row, ": the model has no routed experts");
    registry_->unregister_adapter(row);
  }
  std::vector<AdapterInfo> adapters() const override {
    return registry_ ? registry_->adapters() : std::vector<AdapterInfo>{};
  }

 private:
  // Throws ew::Error naming chunk c when its own values cannot run.
  void check_chunk(const StepBatch& batch, size_t c, size_t at, std::unordered_set<int64_t>& seen) const {
    const SeqChunk& ch = batch.chunks[c];
    const int64_t V = cfg_.vocab_size;
    if (ch.adapter < 0 || ch.adapter >= tables_.n_rows())
      fail("step: chunk ", c, " (sequence ", ch.seq_id, ") has adapter row ", ch.adapter, " outside [0, ",
           tables_.n_rows(), ")");
    if (!seen.insert(ch.seq_id).second) fail("step: sequence ", ch.seq_id, " appears more than once");
    if (registry_) registry_->check_chunk(ch.seq_id, ch.adapter);
    const int64_t len = kv_->has(ch.seq_id) ? kv_->length(ch.seq_id) : 0;
    if (cfg_.max_position_embeddings > 0 && len + ch.n_tokens > cfg_.max_position_embeddings)
      fail("step: sequence ", ch.seq_id, " would reach ", len + ch.n_tokens, " tokens, over max_position_embeddings ",
           cfg_.max_position_embeddings);
    for (int32_t i = 0; i < ch.n_tokens; ++i) {
      const int32_t t = batch.tokens[at + i];
      if (t < 0 || t >= V)
        fail("step: token ", at + i, " (sequence ", ch.seq_id, ") has id ", t, " outside the vocabulary [0, ", V, ")");
    }
    check_sampling(ch, V, concat("step: chunk ", c, " (sequence ", ch.seq_id, ")"));
  }

  ModelConfig cfg_;
  ModelWeights w_;
  std::unique_ptr<KvCache> kv_;
  RerouteTables tables_;  // per MoE layer; rows filled by registry_ (row 0: base, identity)
  std::unique_ptr<AdapterRegistry> registry_;
  std::unique_ptr<StepRunner> runner_;  // last: destroyed before the weights and pool it reads
  std::string note_;
  DType kv_dtype_ = DType::F32;
  CpuPath cpu_path_ = CpuPath::Portable;
  bool cuda_ = true;  // false once the CPU runner is made

  // One greedy token on a scratch sequence: shapes the device kernels do not support and
  // kernels that cannot launch on this GPU fail here, at load, not on the first request.
  void warm_up() {
    constexpr int64_t kScratchSeq = INT64_MIN;
    StepBatch b;
    b.tokens = {0};
    SeqChunk c;
    c.seq_id = kScratchSeq;
    c.n_tokens = 1;
    b.chunks = {c};
    Step(b);
    FreeSequence(kScratchSeq);
  }
};

}  // namespace

std::unique_ptr<Engine> Engine::Load(const std::string& model_dir, const EngineOptions& opts) {
  if (opts.device != "cpu" && opts.device != "auto" && opts.device != "cuda")
    fail("device '", opts.device, "': expected 'cpu', 'cuda' or 'auto'");
#ifdef EW_WITH_CUDA
  if (opts.device == "cuda" && !cuda::device_available()) fail("device 'cuda': no CUDA device is available");
  if (opts.device == "cuda") return std::make_unique<ModelEngine>(model_dir, opts, true);
  std::string why;
  if (opts.device == "auto" && cuda::device_available()) {
    // auto: the GPU when it can serve this model, else the CPU, saying why in the device name.
    try {
      return std::make_unique<ModelEngine>(model_dir, opts, true);
    } catch (const Error& e) {
      why = std::string(" (CUDA not used: ") + e.what() + ")";
    }
  }
  auto engine = std::make_unique<ModelEngine>(model_dir, opts, false);
  engine->set_device_note(why);
  return engine;
#else
  if (opts.device == "cuda") fail("device 'cuda': this build has no CUDA backend");
  return std::make_unique<ModelEngine>(model_dir, opts, false);
#endif
}

}  // namespace ew
