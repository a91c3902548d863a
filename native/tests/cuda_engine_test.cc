// The engine on --device cuda (CudaRunner: weights, latent cache, expert pool and reroute
// tables on the GPU, the one forward pass on CudaOps) against the same engine on the CPU:
// logits within bf16 tolerance, greedy tokens equal (except where the CPU's top two are a
// near tie), decode steps replayed from CUDA graphs (counted: at least one replay, no
// failed capture) and equal to eager steps, adapters registered and removed between steps.
// Without a CUDA device every test skips (EW_REQUIRE_CUDA=1: fails).
#ifdef EW_WITH_CUDA
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <sstream>
#include <vector>

#include "cuda_fixtures.h"
#include "engine/engine.h"
#include "engine_fixtures.h"
#include "family_fixtures.h"
#include "model_fixtures.h"
#include "test.h"

using namespace ew;
using namespace ewtest;

namespace {

using Selection = std::vector<std::pair<int64_t, std::vector<int64_t>>>;
constexpr double kTol = 1e-2;  // bf16 weights, fp32 accumulation in a different order

EngineOptions options(const char* device) { return engine_options(device, 512, 16, 4); }

// max |a - b| / max |b| over rows of V; infinity when a has a non-finite value.
double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double num = 0, den = 1e-12;
  for (size_t i = 0; i < b.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num = std::max(num, double(std::fabs(a[i] - b[i])));
    den = std::max(den, double(std::fabs(b[i])));
  }
  return num / den;
}

// True when the row's best two logits are closer than the tolerance allows to order.
bool near_tie(const float* row, int64_t V) {
  float top = -INFINITY, second = -INFINITY, scale = 1e-12f;
  for (int64_t v = 0; v < V; ++v) {
    scale = std::max(scale, std::fabs(row[v]));
    if (row[v] > top) second = top, top = row[v];
    else if (row[v] > second) second = row[v];
  }
  return top - second < 2 * kTol * scale;
}

void expect_close(double err, int line, const std::string& what) {
  if (err < kTol) return;
  std::ostringstream os;
  os << what << ": relative difference " << err << " >= " << kTol;
  ewtest::fail_at(__FILE__, line, os.str());
}

struct World {
  ScratchDir tmp{"cuda_engine"};
  TinyModel base = make_tiny_model(11, 3, 32, 4);  // 32 experts: the CUDA router's smallest width
  std::vector<Selection> sels = {{{1, {0, 3, 5, 31}}, {2, {2}}}, {{1, {3, 4}}, {2, {0, 1, 6, 17, 30}}}};
  std::vector<std::string> adapters;
  World() {
    write_model(tmp.sub("base"), base);
    for (size_t i = 0; i < sels.size(); ++i) {
      const std::string name = "adapter" + std::to_string(i);
      write_adapter(tmp.sub(name), base.cfg, sels[i], 300 + static_cast<uint32_t>(i));
      adapters.push_back(tmp.path() + "/" + name);
    }
  }
  std::string dir() const { return tmp.path() + "/base"; }
};

// Steps `batch` on both engines: the CPU one returns logits, the CUDA one too when
// logits is set (else only its device-chosen greedy tokens). Checks the logits agree
// and every sampled token equals the CPU's unless the CPU row is a near tie. Returns
// the CPU's tokens (what both engines are fed next).
std::vector<int32_t> step_both(Engine& cpu, Engine& gpu, StepBatch batch, bool logits, const std::string& what) {
  const int64_t V = cpu.config().vocab_size;
  batch.return_logits = true;
  const StepResult c = cpu.Step(batch);
  batch.return_logits = logits;
  const StepResult g = gpu.Step(batch);
  if (logits) expect_close(rel_diff(g.logits, c.logits), __LINE__, what + " logits");
  // Row of chunk i's last token in the CPU's all-token logits.
  int64_t last = -1;
  for (size_t i = 0; i < batch.chunks.size(); ++i) {
    last += batch.chunks[i].n_tokens;
    if (g.tokens[i] != c.tokens[i] && !near_tie(&c.logits[last * V], V)) {
      std::ostringstream os;
      os << what << ": chunk " << i << " (sequence " << batch.chunks[i].seq_id << ") cuda token " << g.tokens[i]
         << " != cpu token " << c.tokens[i];
      ewtest::fail_at(__FILE__, __LINE__, os.str());
    }
  }
  return c.tokens;
}

}  // namespace

TEST(cuda_engine_logits_and_greedy_tokens_match_the_cpu_engine) {
  ewtest::need_cuda_device();
  World w;
  auto cpu = Engine::Load(w.dir(), options("cpu"));
  auto gpu = Engine::Load(w.dir(), options("cuda"));
  CHECK(gpu->device_name().find("cuda") == 0);
  // Prefill of 13 tokens, then 12 decode steps: the first few eager, later ones from
  // captured graphs (one token per sequence), logits compared at every step.
  StepBatch b;
  b.tokens = prompt(13, 1);
  b.chunks = {chunk(1, 0, 13)};
  std::vector<int32_t> next = step_both(*cpu, *gpu, b, true, "prefill");
  for (int i = 0; i < 12; ++i) {
    StepBatch d;
    d.tokens = {next[0]};
    d.chunks = {chunk(1, 0, 1)};
    next = step_both(*cpu, *gpu, d, i % 3 == 0, "decode step " + std::to_string(i));
  }
  CHECK_EQ(gpu->SequenceLength(1), int64_t{25});
  // One decode shape (T 1, one logit row, one context bucket) runs eagerly once, is
  // captured the next time and replayed from then on; a capture failure would run eagerly.
  const RunnerStats rs = gpu->runner_stats();
  CHECK_EQ(rs.capture_failures, int64_t{0});
  CHECK(rs.graph_captures >= 1);
  CHECK(rs.graph_replays >= 8);
}

TEST(cuda_engine_mixed_adapter_batch_matches_the_cpu_engine) {
  ewtest::need_cuda_device();
  World w;
  auto cpu = Engine::Load(w.dir(), options("cpu"));
  auto gpu = Engine::Load(w.dir(), options("cuda"));
  std::vector<int32_t> rows = {0};
  for (const std::string& a : w.adapters) {
    const AdapterInfo ci = cpu->RegisterAdapter(a), gi = gpu->RegisterAdapter(a);
    CHECK_EQ(ci.row, gi.row);
    CHECK_EQ(ci.experts, gi.experts);
    rows.push_back(gi.row);
  }
  // Three sequences (base, adapter 0, adapter 1) prefilled together, then decoded together.
  StepBatch b;
  std::vector<int32_t> lens = {9, 5, 12};
  for (int s = 0; s < 3; ++s) {
    const auto p = prompt(lens[s], 10 + s);
    b.tokens.insert(b.tokens.end(), p.begin(), p.end());
    b.chunks.push_back(chunk(100 + s, rows[s], lens[s]));
  }
  std::vector<int32_t> next = step_both(*cpu, *gpu, b, true, "mixed prefill");
  for (int i = 0; i < 10; ++i) {
    StepBatch d;
    for (int s = 0; s < 3; ++s) {
      d.tokens.push_back(next[s]);
      d.chunks.push_back(chunk(100 + s, rows[s], 1));
    }
    next = step_both(*cpu, *gpu, d, i == 9, "mixed decode step " + std::to_string(i));
  }
}

TEST(cuda_engine_adapter_churn_between_graph_replays) {
  ewtest::need_cuda_device();
  World w;
  auto cpu = Engine::Load(w.dir(), options("cpu"));
  auto gpu = Engine::Load(w.dir(), options("cuda"));
  // The tiny model's expert regions sit inside the pages the base already backs, so
  // backed_bytes need not move: the slots and expert bytes stored must.
  const ExpertPoolStats stats0 = gpu->expert_stats();
  const int32_t a = gpu->RegisterAdapter(w.adapters[0]).row;
  CHECK_EQ(cpu->RegisterAdapter(w.adapters[0]).row, a);
  StepBatch b;
  b.tokens = prompt(6, 3);
  b.chunks = {chunk(1, a, 6)};
  std::vector<int32_t> next = step_both(*cpu, *gpu, b, true, "prefill");
  for (int i = 0; i < 8; ++i) {
    if (i == 4) {  // a second adapter arrives while sequence 1 decodes (reroute tables change)
      const int32_t r = gpu->RegisterAdapter(w.adapters[1]).row;
      CHECK_EQ(cpu->RegisterAdapter(w.adapters[1]).row, r);
      const ExpertPoolStats now = gpu->expert_stats();
      CHECK(now.used_slots > stats0.used_slots);
      CHECK(now.expert_bytes > stats0.expert_bytes);
      CHECK(now.backed_bytes >= stats0.backed_bytes);
    }
    StepBatch d;
    d.tokens = {next[0]};
    d.chunks = {chunk(1, a, 1)};
    next = step_both(*cpu, *gpu, d, true, "decode step " + std::to_string(i));
  }
  gpu->FreeSequence(1);
  cpu->FreeSequence(1);
  for (const AdapterInfo& info : gpu->adapters()) gpu->UnregisterAdapter(info.row);
  CHECK_EQ(gpu->expert_stats().backed_bytes, stats0.backed_bytes);
  CHECK_EQ(gpu->expert_stats().used_slots, stats0.used_slots);
  CHECK_EQ(gpu->expert_stats().expert_bytes, stats0.expert_bytes);
  CHECK(gpu->adapters().empty());
  // The reroute tables changed under captured graphs (they live in device memory): replays went on.
  CHECK(gpu->runner_stats().graph_replays >= 4);
  CHECK_EQ(gpu->runner_stats().capture_failures, int64_t{0});
}

TEST(cuda_engine_temperature_sampling_draws_what_the_cpu_draws) {
  ewtest::need_cuda_device();
  World w;
  auto cpu = Engine::Load(w.dir(), options("cpu"));
  auto gpu = Engine::Load(w.dir(), options("cuda"));
  // The device returns whole rows for these chunks and the host sampler draws: the same
  // seed gives the same token unless the draw falls within float error of a boundary.
  int same = 0, n = 0;
  for (int s = 0; s < 8; ++s) {
    StepBatch b;
    b.tokens = prompt(5 + s, 20 + s);
    SeqChunk c = chunk(200 + s, 0, static_cast<int32_t>(b.tokens.size()));
    c.sampling.temperature = 0.9f;
    c.sampling.top_p = 0.95f;
    c.sampling.seed = 1000 + s;
    c.logprobs = true;
    b.chunks = {c};
    for (int i = 0; i < 5; ++i) {
      const StepResult rc = cpu->Step(b), rg = gpu->Step(b);
      same += rc.tokens[0] == rg.tokens[0];
      ++n;
      CHECK(std::isfinite(rg.logprobs[0]));
      b.tokens = {rc.tokens[0]};
      b.chunks[0].n_tokens = 1;
    }
  }
  CHECK(same >= n * 9 / 10);
}

// Every other family on the GPU: GQA attention with Qwen3's q/k norms (qwen3_moe), Mixtral's
// block_sparse_moe, DeepSeek-V3's sigmoid noaux_tc routing (32 experts in 4 groups: whole
// lanes of the CUDA router); a mixed step of the base and two adapters, then decode steps
// from captured graphs, against the CPU engine.
TEST(cuda_engine_every_family_with_adapters_matches_the_cpu_engine) {
  ewtest::need_cuda_device();
  for (Family f : {Family::Qwen3Moe, Family::Mixtral, Family::DeepseekV3}) {
    ScratchDir tmp(std::string("cuda_family_") + family_name(f));
    const TinyModel base = make_family_model(f, 31, 32);
    write_model(tmp.sub("base"), base);
    std::vector<int64_t> moe;
    for (int64_t l = 0; l < base.cfg.num_hidden_layers; ++l)
      if (base.cfg.is_moe_layer(l)) moe.push_back(l);
    const std::vector<Selection> sels = {{{moe[0], {0, 5, 31}}}, {{moe.back(), {1, 2, 17}}}};
    std::vector<std::string> adapters;
    for (size_t i = 0; i < sels.size(); ++i) {
      write_adapter(tmp.sub("a" + std::to_string(i)), base.cfg, sels[i], 700 + static_cast<uint32_t>(i));
      adapters.push_back(tmp.path() + "/a" + std::to_string(i));
    }
    auto cpu = Engine::Load(tmp.path() + "/base", options("cpu"));
    auto gpu = Engine::Load(tmp.path() + "/base", options("cuda"));
    std::vector<int32_t> rows = {0};
    for (const std::string& a : adapters) {
      rows.push_back(gpu->RegisterAdapter(a).row);
      CHECK_EQ(cpu->RegisterAdapter(a).row, rows.back());
    }
    const std::string fam = family_name(f);
    StepBatch b;
    for (int s = 0; s < 3; ++s) {
      const auto p = prompt(6 + 3 * s, 40 + s);
      b.tokens.insert(b.tokens.end(), p.begin(), p.end());
      b.chunks.push_back(chunk(10 + s, rows[s], static_cast<int32_t>(p.size())));
    }
    std::vector<int32_t> next = step_both(*cpu, *gpu, b, true, fam + " mixed prefill");
    for (int i = 0; i < 8; ++i) {
      StepBatch d;
      for (int s = 0; s < 3; ++s) {
        d.tokens.push_back(next[s]);
        d.chunks.push_back(chunk(10 + s, rows[s], 1));
      }
      next = step_both(*cpu, *gpu, d, i % 2 == 1, fam + " decode step " + std::to_string(i));
    }
    CHECK_EQ(gpu->runner_stats().capture_failures, int64_t{0});
    CHECK(gpu->runner_stats().graph_replays >= 4);
    CHECK_EQ(gpu->kv_stats().bytes_per_token_layer, cpu->kv_stats().bytes_per_token_layer);
  }
}

#endif  // EW_WITH_CUDA
