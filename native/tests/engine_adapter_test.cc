// The correctness contract of adapter serving: logits served through the expert pool
// and the reroute tables equal, bit for bit, those of the merged model (the base with
// the adapter's experts copied in) loaded as a separate engine; a mixed batch equals
// each request alone; registering and unregistering adapters between steps changes
// no running sequence's logits.
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "engine_fixtures.h"
#include "model_fixtures.h"
#include "test.h"

using namespace ew;
using namespace ewtest;

namespace {

using Selection = std::vector<std::pair<int64_t, std::vector<int64_t>>>;

EngineOptions options(int adapter_slots, int adapters) { return engine_options("cpu", 256, adapter_slots, adapters); }

// One sequence's run: the prompt as one chunk, then n_decode greedy tokens, each fed
// back. Returns every position's logits, concatenated.
struct Run {
  std::vector<float> logits;
  std::vector<int32_t> inputs;  // every token fed, prompt then decoded
};

Run run_alone(Engine& eng, int64_t seq, int32_t row, const std::vector<int32_t>& p, int n_decode) {
  Run r;
  StepBatch b;
  b.tokens = p;
  b.chunks = {chunk(seq, row, static_cast<int32_t>(p.size()))};
  b.return_logits = true;
  StepResult res = eng.Step(b);
  r.inputs = p;
  r.logits = res.logits;
  for (int i = 0; i < n_decode; ++i) {
    StepBatch d;
    d.tokens = {res.tokens[0]};
    d.chunks = {chunk(seq, row, 1)};
    d.return_logits = true;
    r.inputs.push_back(res.tokens[0]);
    res = eng.Step(d);
    r.logits.insert(r.logits.end(), res.logits.begin(), res.logits.end());
  }
  eng.FreeSequence(seq);
  return r;
}

bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

struct World {
  ScratchDir tmp{"engine_adapter"};
  TinyModel base = make_tiny_model(7);
  // A and B overlap in layer 1; C takes many experts of layer 2.
  std::vector<Selection> sels = {{{1, {0, 3, 5}}, {2, {2}}}, {{1, {3, 4}}, {2, {0, 1, 6}}},
                                 {{2, {0, 1, 2, 3, 4, 5}}}};
  std::vector<std::string> adapter_dirs, merged_dirs;
  World() {
    write_model(tmp.sub("base"), base);
    for (size_t i = 0; i < sels.size(); ++i) {
      const std::string name = "adapter" + std::to_string(i);
      write_adapter(tmp.sub(name), base.cfg, sels[i], 100 + static_cast<uint32_t>(i));
      adapter_dirs.push_back(tmp.path() + "/" + name);
      write_model(tmp.sub("merged" + std::to_string(i)), merged_model(base, sels[i], 100 + static_cast<uint32_t>(i)));
      merged_dirs.push_back(tmp.path() + "/merged" + std::to_string(i));
    }
  }
};

}  // namespace

TEST(engine_adapter_logits_equal_the_merged_models_bit_for_bit) {
  World w;
  auto eng = Engine::Load(w.tmp.path() + "/base", options(16, 4));
  std::vector<int32_t> rows;
  for (const std::string& d : w.adapter_dirs) rows.push_back(eng->RegisterAdapter(d).row);
  const Run base_run = run_alone(*eng, 1, 0, prompt(9, 0), 4);
  for (size_t i = 0; i < rows.size(); ++i) {
    auto merged = Engine::Load(w.merged_dirs[i], options(0, 0));
    const std::vector<int32_t> p = prompt(9, 0);
    const Run served = run_alone(*eng, 10 + static_cast<int64_t>(i), rows[i], p, 4);
    const Run reference = run_alone(*merged, 1, 0, p, 4);
    CHECK(served.inputs == reference.inputs);
    CHECK(bit_equal(served.logits, reference.logits));
    CHECK(!bit_equal(served.logits, base_run.logits));  // the adapter's experts are really used
  }
}

TEST(engine_adapter_mixed_batch_equals_each_request_alone) {
  World w;
  auto eng = Engine::Load(w.tmp.path() + "/base", options(16, 4));
  std::vector<int32_t> rows = {0};
  for (const std::string& d : w.adapter_dirs) rows.push_back(eng->RegisterAdapter(d).row);
  // Base, A, B, C and A again with different prompts and lengths.
  const std::vector<int32_t> row_of = {rows[0], rows[1], rows[2], rows[3], rows[1]};
  const std::vector<int> len = {5, 9, 3, 7, 1};
  const int n_decode = 3;
  std::vector<Run> alone;
  for (size_t s = 0; s < row_of.size(); ++s)
    alone.push_back(run_alone(*eng, 100 + static_cast<int64_t>(s), row_of[s], prompt(len[s], static_cast<int>(s)),
                              n_decode));
  const int64_t V = 64;

  // The prefills in one step, then every decode step together, fed the same tokens.
  StepBatch b;
  b.return_logits = true;
  for (size_t s = 0; s < row_of.size(); ++s) {
    const std::vector<int32_t> p = prompt(len[s], static_cast<int>(s));
    b.tokens.insert(b.tokens.end(), p.begin(), p.end());
    b.chunks.push_back(chunk(200 + static_cast<int64_t>(s), row_of[s], len[s]));
  }
  StepResult res = eng->Step(b);
  int64_t offset = 0;
  for (size_t s = 0; s < row_of.size(); ++s) {
    const std::vector<float> got(res.logits.begin() + offset * V, res.logits.begin() + (offset + len[s]) * V);
    const std::vector<float> want(alone[s].logits.begin(), alone[s].logits.begin() + len[s] * V);
    CHECK(bit_equal(got, want));
    offset += len[s];
  }
  for (int step = 0; step < n_decode; ++step) {
    StepBatch d;
    d.return_logits = true;
    for (size_t s = 0; s < row_of.size(); ++s) {
      d.tokens.push_back(alone[s].inputs[len[s] + step]);
      d.chunks.push_back(chunk(200 + static_cast<int64_t>(s), row_of[s], 1));
    }
    res = eng->Step(d);
    for (size_t s = 0; s < row_of.size(); ++s) {
      const std::vector<float> got(res.logits.begin() + s * V, res.logits.begin() + (s + 1) * V);
      const auto at = alone[s].logits.begin() + (len[s] + step) * V;
      CHECK(bit_equal(got, std::vector<float>(at, at + V)));
    }
  }
}

TEST(engine_adapter_churn_leaves_running_sequences_unchanged) {
  World w;
  auto eng = Engine::Load(w.tmp.path() + "/base", options(16, 3));
  const AdapterInfo a_info = eng->RegisterAdapter(w.adapter_dirs[0]);
  const int32_t a = a_info.row;
  const std::vector<int32_t> p = prompt(6, 3);
  const int n_decode = 6;
  const Run ref_a = run_alone(*eng, 1, a, p, n_decode);
  const Run ref_base = run_alone(*eng, 2, 0, p, n_decode);
  const ExpertPoolStats idle = eng->expert_stats();

  // Sequences on A and on the base decode while B and C come and go, and A itself is
  // unregistered (it must keep serving its running sequence until that one is freed).
  StepBatch b;
  b.return_logits = true;
  b.tokens = p;
  b.tokens.insert(b.tokens.end(), p.begin(), p.end());
  b.chunks = {chunk(10, a, 6), chunk(11, 0, 6)};
  StepResult res = eng->Step(b);
  std::vector<float> got_a(res.logits.begin(), res.logits.begin() + 6 * 64);
  std::vector<float> got_base(res.logits.begin() + 6 * 64, res.logits.end());
  int32_t b_row = -1, c_row = -1;
  for (int step = 0; step < n_decode; ++step) {
    switch (step) {
      case 0: b_row = eng->RegisterAdapter(w.adapter_dirs[1]).row; break;
      case 1: eng->UnregisterAdapter(a); break;
      case 2: eng->UnregisterAdapter(b_row); break;
      case 3: c_row = eng->RegisterAdapter(w.adapter_dirs[2]).row; break;
      case 4: eng->UnregisterAdapter(c_row); break;
      default: break;
    }
    StepBatch d;
    d.return_logits = true;
    d.tokens = {ref_a.inputs[6 + step], ref_base.inputs[6 + step]};
    d.chunks = {chunk(10, a, 1), chunk(11, 0, 1)};
    if (step == 5) {
      // A registration copying experts on another thread while this step runs.
      std::thread t([&] { c_row = eng->RegisterAdapter(w.adapter_dirs[2]).row; });
      res = eng->Step(d);
      t.join();
    } else {
      res = eng->Step(d);
    }
    got_a.insert(got_a.end(), res.logits.begin(), res.logits.begin() + 64);
    got_base.insert(got_base.end(), res.logits.begin() + 64, res.logits.end());
  }
  CHECK(bit_equal(got_a, ref_a.logits));
  CHECK(bit_equal(got_base, ref_base.logits));
  // A new sequence may not start on the unregistered row; freeing the last one releases it.
  StepBatch n;
  n.tokens = {5};
  n.chunks = {chunk(12, a, 1)};
  const StepResult refused = eng->Step(n);
  CHECK(refused.errors.at(0).find("being unregistered") != std::string::npos);
  CHECK_EQ(refused.tokens.at(0), -1);
  CHECK_EQ(eng->SequenceLength(12), int64_t{-1});
  CHECK_EQ(eng->adapters().size(), size_t{2});  // A (draining) and C
  eng->FreeSequence(10);
  eng->FreeSequence(11);
  CHECK_EQ(eng->adapters().size(), size_t{1});  // C, registered during step 5
  eng->UnregisterAdapter(c_row);
  CHECK(eng->adapters().empty());
  CHECK_EQ(eng->expert_stats().backed_bytes, idle.backed_bytes - a_info.backed_bytes);
}
