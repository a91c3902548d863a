// The engine on tiny random checkpoints of every family beyond DeepSeek-V2 (qwen3_moe,
// mixtral, deepseek_v3; family_fixtures.h), on each CPU dispatch path the suite runs on:
// the bitwise invariants (prefill == token-by-token decode, a batch == each sequence
// alone, a mixed batch of the base and three adapters == each merged checkpoint), the KV
// entry each attention kind stores, V3's MTP layer skipped at load, and the families'
// adapter tensor names. Accuracy against the float64 references is the TS suite's
// (test/engine/family-reference.test.ts).
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "engine/engine.h"
#include "engine_fixtures.h"
#include "family_fixtures.h"
#include "test.h"
#include "util/error.h"

using namespace ew;
using namespace ewtest;

namespace {

using Selection = std::vector<std::pair<int64_t, std::vector<int64_t>>>;
constexpr Family kFamilies[] = {Family::Qwen3Moe, Family::Mixtral, Family::DeepseekV3};

bool bit_equal(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

std::vector<float> logits_of(Engine& e, int64_t seq, int32_t row, const std::vector<int32_t>& toks) {
  StepBatch b;
  b.tokens = toks;
  b.chunks = {chunk(seq, row, static_cast<int32_t>(toks.size()))};
  b.chunks[0].sample = false;
  b.return_logits = true;
  return e.Step(b).logits;
}

// Three selections over the model's MoE layers (dense layers skipped).
std::vector<Selection> selections(const ModelConfig& c) {
  std::vector<int64_t> moe;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    if (c.is_moe_layer(l)) moe.push_back(l);
  const int64_t M = c.n_routed_experts;
  return {{{moe[0], {0, 3}}, {moe.back(), {1}}}, {{moe.back(), {2, 5, M - 1}}}, {{moe[0], {1, 2, 4, 6}}}};
}

struct World {
  ScratchDir tmp;
  TinyModel base;
  std::vector<Selection> sels;
  std::vector<std::string> adapters, merged;
  explicit World(Family f) : tmp(std::string("family_") + family_name(f)), base(make_family_model(f, 21)) {
    write_model(tmp.sub("base"), base);
    sels = selections(base.cfg);
    for (size_t i = 0; i < sels.size(); ++i) {
      const uint32_t seed = 500 + static_cast<uint32_t>(i);
      const std::string a = "adapter" + std::to_string(i), m = "merged" + std::to_string(i);
      write_adapter(tmp.sub(a), base.cfg, sels[i], seed);
      write_model(tmp.sub(m), merged_model(base, sels[i], seed));
      adapters.push_back(tmp.path() + "/" + a);
      merged.push_back(tmp.path() + "/" + m);
    }
  }
  std::string dir() const { return tmp.path() + "/base"; }
};

}  // namespace

TEST(family_prefill_equals_decode_and_batches_equal_each_sequence_alone_bitwise) {
  for (Family f : kFamilies) {
    World w(f);
    auto e = Engine::Load(w.dir(), engine_options("cpu", 512, 0, 0));
    const int64_t V = e->config().vocab_size;
    const std::vector<int32_t> toks = prompt(11, 1);
    const std::vector<float> full = logits_of(*e, 1, 0, toks);
    CHECK_EQ(full.size(), toks.size() * size_t(V));
    bool finite = true;
    for (float x : full) finite = finite && std::isfinite(x);
    CHECK(finite);
    // Token by token, with a 3-token chunk in the middle, across 4-token cache blocks.
    for (size_t i = 0; i < toks.size();) {
      const size_t n = i == 4 ? 3 : 1;
      const auto part = logits_of(*e, 2, 0, std::vector<int32_t>(toks.begin() + i, toks.begin() + i + n));
      CHECK(bit_equal(part.data(), full.data() + i * V, n * V));
      i += n;
    }
    // Three sequences prefilled in one step equal each alone.
    StepBatch b;
    b.return_logits = true;
    std::vector<std::vector<float>> alone;
    for (int s = 0; s < 3; ++s) {
      const std::vector<int32_t> p = prompt(3 + 2 * s, 5 + s);
      alone.push_back(logits_of(*e, 10 + s, 0, p));
      b.tokens.insert(b.tokens.end(), p.begin(), p.end());
      b.chunks.push_back(chunk(20 + s, 0, static_cast<int32_t>(p.size())));
    }
    const std::vector<float> together = e->Step(b).logits;
    size_t at = 0;
    for (int s = 0; s < 3; ++s) {
      CHECK(bit_equal(together.data() + at, alone[s].data(), alone[s].size()));
      at += alone[s].size();
    }
  }
}

TEST(family_mixed_batch_of_base_and_three_adapters_equals_each_merged_model_bitwise) {
  for (Family f : kFamilies) {
    World w(f);
    auto e = Engine::Load(w.dir(), engine_options("cpu", 512, 16, 4));
    const int64_t V = e->config().vocab_size;
    std::vector<int32_t> rows = {0};
    for (const std::string& a : w.adapters) rows.push_back(e->RegisterAdapter(a).row);
    std::vector<std::vector<int32_t>> prompts;
    StepBatch b;
    b.return_logits = true;
    for (size_t r = 0; r < rows.size(); ++r) {
      prompts.push_back(prompt(9 + static_cast<int>(r), 3));
      b.tokens.insert(b.tokens.end(), prompts[r].begin(), prompts[r].end());
      b.chunks.push_back(chunk(100 + static_cast<int64_t>(r), rows[r], static_cast<int32_t>(prompts[r].size())));
    }
    const std::vector<float> mixed = e->Step(b).logits;
    size_t at = 0;
    for (size_t r = 0; r < rows.size(); ++r) {
      auto ref = Engine::Load(r == 0 ? w.dir() : w.merged[r - 1], engine_options("cpu", 512, 0, 0));
      const std::vector<float> want = logits_of(*ref, 1, 0, prompts[r]);
      CHECK(bit_equal(mixed.data() + at, want.data(), want.size()));
      if (r > 0) {  // the adapter's experts are really used
        const std::vector<float> base = logits_of(*e, 900 + static_cast<int64_t>(r), 0, prompts[r]);
        CHECK(!bit_equal(base.data(), want.data(), want.size()));
      }
      at += prompts[r].size() * V;
    }
  }
}

TEST(family_kv_entry_holds_gqa_heads_or_the_mla_latent) {
  for (Family f : kFamilies) {
    World w(f);
    auto e = Engine::Load(w.dir(), engine_options("cpu", 64, 0, 0));
    const ModelConfig& c = e->config();
    // qwen3 tiny: 2 KV heads of 16; mixtral tiny: 2 of 8; V3 tiny: latent 16 + rope 4.
    const int64_t want = f == Family::Qwen3Moe ? 2 * 2 * 16 : f == Family::Mixtral ? 2 * 2 * 8 : 16 + 4;
    CHECK_EQ(c.kv_cache_width(), want);
    CHECK_EQ(e->kv_stats().bytes_per_token_layer, want * 2);  // the CPU default: a bf16 cache
  }
}

TEST(family_v3_skips_the_mtp_layer_but_refuses_layers_past_it) {
  World w(Family::DeepseekV3);
  auto e = Engine::Load(w.dir(), engine_options("cpu", 64, 0, 0));  // model.layers.3.* (MTP) present
  CHECK_EQ(e->config().num_hidden_layers, int64_t(3));
  // A tensor of a layer past the declared MTP layers is a mismatch, not MTP.
  TinyModel extra = w.base;
  extra.tensors.push_back(extra.tensors.back());
  extra.tensors.back().name = "model.layers.4.enorm.weight";
  write_model(w.tmp.sub("extra"), extra);
  CHECK_THROWS_WITH(Engine::Load(w.tmp.path() + "/extra", engine_options("cpu", 64, 0, 0)),
                    "model.layers.4.enorm.weight");
  // Without num_nextn_predict_layers the MTP layer's tensors are unexplained.
  TinyModel no_mtp = w.base;
  const std::string key = "\"num_nextn_predict_layers\": 1";
  no_mtp.config_json.replace(no_mtp.config_json.find(key), key.size(), "\"num_nextn_predict_layers\": 0");
  write_model(w.tmp.sub("no_mtp"), no_mtp);
  CHECK_THROWS_WITH(Engine::Load(w.tmp.path() + "/no_mtp", engine_options("cpu", 64, 0, 0)), "not used by config.json");
  // An adapter naming the MTP layer is refused before anything changes.
  auto a = Engine::Load(w.dir(), engine_options("cpu", 64, 8, 2));
  write_adapter(w.tmp.sub("mtp_adapter"), w.base.cfg, {{3, {0}}}, 9);
  CHECK_THROWS_WITH(a->RegisterAdapter(w.tmp.path() + "/mtp_adapter"), "lists layer 3, which is not a MoE layer");
  CHECK(a->adapters().empty());
}

TEST(family_adapters_use_the_familys_expert_names) {
  // Mixtral's adapter tensors are block_sparse_moe.experts.E.{w1,w3,w2}; DeepSeek / Qwen3
  // names in a Mixtral adapter are refused, naming the tensor.
  World w(Family::Mixtral);
  auto e = Engine::Load(w.dir(), engine_options("cpu", 64, 8, 2));
  CHECK(e->RegisterAdapter(w.adapters[0]).row > 0);
  ModelConfig v2_names = w.base.cfg;
  v2_names.family = ModelFamily::DeepseekV2;  // writes mlp.experts.E.gate_proj ...
  write_adapter(w.tmp.sub("wrong_names"), v2_names, {{1, {2}}}, 7);
  CHECK_THROWS_WITH(e->RegisterAdapter(w.tmp.path() + "/wrong_names"),
                    "missing tensor model.layers.1.block_sparse_moe.experts.2.w1.weight");
  // Qwen3's dense layer (mlp_only_layers [0]) takes no adapter experts.
  World q(Family::Qwen3Moe);
  auto qe = Engine::Load(q.dir(), engine_options("cpu", 64, 8, 2));
  write_adapter(q.tmp.sub("dense_layer"), q.base.cfg, {{0, {1}}}, 7);
  CHECK_THROWS_WITH(qe->RegisterAdapter(q.tmp.path() + "/dense_layer"), "MoE layers 1-3");
}
