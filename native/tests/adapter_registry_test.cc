// AdapterRegistry over a real ExpertPool and RerouteTables: registration maps and
// fills slots and points the row; refusals and failures leave no trace; unregistering
// returns every page and slot, at once or after the row's last sequence.
#include <cstring>
#include <filesystem>
#include <memory>

#include "adapter_fixtures.h"
#include "engine/adapter.h"
#include "engine/adapter_registry.h"
#include "memory/expert_pool.h"
#include "esft_selections.h"
#include "test.h"

using namespace ew;
using namespace ewtest;

namespace {

using Selection = std::vector<std::pair<int64_t, std::vector<int64_t>>>;

struct Rig {
  ModelConfig cfg;
  ExpertPool pool;
  RerouteTables tables;
  AdapterRegistry reg;
  Rig(int64_t layers, int64_t M, int64_t H, int64_t I, int max_slots, int rows)
      : cfg(small_moe_config(layers, M, H, I)),
        pool(static_cast<int>(cfg.num_moe_layers()), static_cast<int>(M), max_slots, H, I, DType::BF16),
        tables(static_cast<int>(cfg.num_moe_layers()), rows, static_cast<int>(M)),
        reg(cfg, pool, tables) {
    for (int l = 0; l < pool.n_layers(); ++l) pool.map_slots(l, 0, pool.n_base());  // the base experts
  }
};

bool identity_row(const RerouteTables& t, int row) {
  for (int l = 0; l < t.n_layers(); ++l)
    for (int e = 0; e < t.n_experts(); ++e)
      if (t.get(l, row, e) != e) return false;
  return true;
}

bool stats_equal(const ExpertPoolStats& a, const ExpertPoolStats& b) {
  return a.reserved_bytes == b.reserved_bytes && a.backed_bytes == b.backed_bytes &&
         a.expert_bytes == b.expert_bytes && a.used_slots == b.used_slots;
}

// Every listed expert's row entry points at a slot holding exactly its bytes; every
// other entry is the base id.
void check_row_serves(const Rig& rig, int row, const Selection& sel, uint32_t seed) {
  const int64_t H = rig.cfg.hidden_size, I = rig.cfg.moe_intermediate_size;
  std::vector<std::vector<bool>> listed(rig.tables.n_layers(), std::vector<bool>(rig.tables.n_experts(), false));
  for (const auto& [layer, ids] : sel) {
    const int ml = static_cast<int>(layer - rig.cfg.first_k_dense_replace);
    for (int64_t e : ids) {
      listed[ml][e] = true;
      const int32_t slot = rig.tables.get(ml, row, static_cast<int>(e));
      CHECK(slot >= rig.pool.n_base() && slot < rig.pool.capacity());
      for (int m = 0; m < 3; ++m) {
        const auto want = expert_matrix_bytes(layer, e, m, seed, m == 2 ? H : I, m == 2 ? I : H, DType::BF16);
        CHECK(std::memcmp(rig.pool.slot_data(ml, static_cast<ExpertMat>(m), slot), want.data(), want.size()) == 0);
      }
    }
  }
  for (int l = 0; l < rig.tables.n_layers(); ++l)
    for (int e = 0; e < rig.tables.n_experts(); ++e)
      if (!listed[l][e]) CHECK_EQ(rig.tables.get(l, row, e), e);
}

const Selection kSelA = {{1, {3, 0}}, {3, {7}}};
const Selection kSelB = {{1, {3, 5, 6}}, {2, {1}}, {3, {0, 7}}};

}  // namespace

TEST(registry_registers_two_adapters_side_by_side) {
  ScratchDir tmp("registry");
  Rig rig(4, 8, 16, 12, 8, 4);
  write_adapter(tmp.sub("a"), rig.cfg, kSelA, 1);
  write_adapter(tmp.sub("b"), rig.cfg, kSelB, 2);
  const ExpertPoolStats s0 = rig.pool.stats();
  const AdapterInfo a = rig.reg.register_adapter(tmp.path() + "/a");
  const ExpertPoolStats s1 = rig.pool.stats();
  const AdapterInfo b = rig.reg.register_adapter(tmp.path() + "/b");
  const ExpertPoolStats s2 = rig.pool.stats();

  CHECK_EQ(a.row, 1);
  CHECK_EQ(b.row, 2);
  CHECK_EQ(a.experts, int64_t{3});
  CHECK_EQ(b.experts, int64_t{6});
  const size_t expert = 3 * 16 * 12 * 2;
  CHECK_EQ(a.expert_bytes, 3 * expert);
  CHECK_EQ(s1.backed_bytes - s0.backed_bytes, a.backed_bytes);
  CHECK_EQ(s2.backed_bytes - s1.backed_bytes, b.backed_bytes);
  CHECK_EQ(s2.used_slots - s0.used_slots, int64_t{9});
  CHECK_EQ(s2.expert_bytes - s0.expert_bytes, 9 * expert);
  check_row_serves(rig, 1, kSelA, 1);
  check_row_serves(rig, 2, kSelB, 2);
  CHECK(identity_row(rig.tables, 0) && identity_row(rig.tables, 3));
  // Contiguous blocks: A's two experts of layer 1 (ids 0, 3) sit in slots 8, 9; B's follow.
  CHECK_EQ(rig.tables.get(0, 1, 0), 8);
  CHECK_EQ(rig.tables.get(0, 1, 3), 9);
  CHECK_EQ(rig.tables.get(0, 2, 3), 10);
  CHECK_EQ(rig.reg.adapters().size(), size_t{2});
}

TEST(registry_refusals_change_nothing) {
  ScratchDir tmp("registry");
  Rig rig(4, 8, 16, 12, 8, 3);
  write_adapter(tmp.sub("ok"), rig.cfg, kSelA, 1);
  rig.reg.register_adapter(tmp.path() + "/ok");
  const ExpertPoolStats before = rig.pool.stats();

  std::vector<std::pair<std::string, std::string>> bad;  // dir, expected message part
  {
    const std::string d = tmp.sub("shared");
    write_adapter(d, rig.cfg, kSelB, 2);
    write_text(d + "/expert_cfg.json", expert_cfg_json(kSelB, true));
    bad.push_back({d, "shared_experts"});
  }
  {
    const std::string d = tmp.sub("nonexpert");
    write_adapter(d, rig.cfg, kSelB, 2);
    write_text(d + "/expert_cfg.json", expert_cfg_json(kSelB, false, true));
    bad.push_back({d, "non_expert_modules"});
  }
  {
    const std::string d = tmp.sub("range");
    write_adapter(d, rig.cfg, kSelB, 2);
    write_text(d + "/expert_cfg.json", R"({"experts": {"1": [3, 5, 6, 9]}})");
    bad.push_back({d, "outside [0, 8)"});
  }
  {
    const std::string d = tmp.sub("layer");
    write_adapter(d, rig.cfg, kSelB, 2);
    write_text(d + "/expert_cfg.json", R"({"experts": {"0": [1]}})");
    bad.push_back({d, "not a MoE layer"});
  }
  {
    const std::string d = tmp.sub("missing");
    write_adapter(d, rig.cfg, kSelB, 2);
    write_text(d + "/expert_cfg.json", R"({"experts": {"1": [3, 5, 6, 2], "2": [1], "3": [0, 7]}})");
    bad.push_back({d, "missing tensor"});
  }
  {
    const std::string d = tmp.sub("extra");
    write_adapter(d, rig.cfg, kSelB, 2);
    write_text(d + "/expert_cfg.json", R"({"experts": {"1": [3, 5, 6], "3": [0, 7]}})");
    bad.push_back({d, "does not list"});
  }
  {
    const std::string d = tmp.sub("truncated");
    write_adapter(d, rig.cfg, kSelB, 2);
    std::filesystem::resize_file(d + "/adapter.safetensors", 40);
    bad.push_back({d, "adapter.safetensors"});
  }
  {
    const std::string d = tmp.sub("dtype");
    std::vector<StTensor> t;
    for (const auto& [layer, ids] : kSelB)
      for (int64_t e : ids) add_expert(&t, rig.cfg, layer, e, 2, DType::F32);
    write_text(d + "/expert_cfg.json", expert_cfg_json(kSelB));
    write_safetensors(d + "/adapter.safetensors", t);
    bad.push_back({d, "dtype"});
  }
  {
    const std::string d = tmp.sub("shape");
    std::vector<StTensor> t;
    for (const auto& [layer, ids] : kSelB)
      for (int64_t e : ids) add_expert(&t, rig.cfg, layer, e, 2);
    t.back().shape = {12, 16};
    write_text(d + "/expert_cfg.json", expert_cfg_json(kSelB));
    write_safetensors(d + "/adapter.safetensors", t);
    bad.push_back({d, "expected [16, 12]"});
  }
  for (const auto& [dir, needle] : bad) {
    CHECK_THROWS_WITH(rig.reg.register_adapter(dir), needle);
    CHECK(stats_equal(rig.pool.stats(), before));
    CHECK_EQ(rig.reg.adapters().size(), size_t{1});
    CHECK(identity_row(rig.tables, 2));
  }
  check_row_serves(rig, 1, kSelA, 1);
  // Nothing leaked: the next adapter gets row 2 and the slots right after A's.
  write_adapter(tmp.sub("b"), rig.cfg, kSelB, 2);
  CHECK_EQ(rig.reg.register_adapter(tmp.path() + "/b").row, 2);
  CHECK_EQ(rig.tables.get(0, 2, 3), 10);
  check_row_serves(rig, 2, kSelB, 2);
}

TEST(registry_rolls_back_when_a_later_layer_is_full) {
  ScratchDir tmp("registry");
  Rig rig(4, 8, 16, 12, 3, 4);  // 3 adapter slots per layer
  write_adapter(tmp.sub("a"), rig.cfg, {{3, {1, 2}}}, 1);
  rig.reg.register_adapter(tmp.path() + "/a");
  const ExpertPoolStats before = rig.pool.stats();
  // Layers 1 and 2 fit, layer 3 has one slot left for two experts.
  write_adapter(tmp.sub("b"), rig.cfg, {{1, {0, 1, 2}}, {2, {4}}, {3, {5, 6}}}, 2);
  CHECK_THROWS_WITH(rig.reg.register_adapter(tmp.path() + "/b"), "no free run of 2 expert slots");
  CHECK(stats_equal(rig.pool.stats(), before));
  CHECK(identity_row(rig.tables, 2));
  CHECK_EQ(rig.reg.adapters().size(), size_t{1});
  check_row_serves(rig, 1, {{3, {1, 2}}}, 1);
  // Layer 1's three slots are free again.
  write_adapter(tmp.sub("c"), rig.cfg, {{1, {5, 6, 7}}}, 3);
  CHECK_EQ(rig.reg.register_adapter(tmp.path() + "/c").row, 2);
  CHECK_EQ(rig.tables.get(0, 2, 5), 8);
}

TEST(registry_refuses_when_every_row_is_taken) {
  ScratchDir tmp("registry");
  Rig rig(4, 8, 16, 12, 8, 2);  // one adapter row
  write_adapter(tmp.sub("a"), rig.cfg, kSelA, 1);
  write_adapter(tmp.sub("b"), rig.cfg, kSelB, 2);
  rig.reg.register_adapter(tmp.path() + "/a");
  const ExpertPoolStats before = rig.pool.stats();
  CHECK_THROWS_WITH(rig.reg.register_adapter(tmp.path() + "/b"), "no free adapter row");
  CHECK(stats_equal(rig.pool.stats(), before));
}

TEST(registry_unregister_returns_pages_and_reuses_slots) {
  ScratchDir tmp("registry");
  Rig rig(4, 8, 16, 12, 8, 4);
  write_adapter(tmp.sub("a"), rig.cfg, kSelA, 1);
  write_adapter(tmp.sub("b"), rig.cfg, kSelB, 2);
  const ExpertPoolStats s0 = rig.pool.stats();
  const AdapterInfo a = rig.reg.register_adapter(tmp.path() + "/a");
  const ExpertPoolStats s1 = rig.pool.stats();
  const AdapterInfo b = rig.reg.register_adapter(tmp.path() + "/b");
  rig.reg.unregister_adapter(b.row);
  CHECK(stats_equal(rig.pool.stats(), s1));
  CHECK(identity_row(rig.tables, b.row));
  rig.reg.unregister_adapter(a.row);
  CHECK(stats_equal(rig.pool.stats(), s0));
  CHECK(identity_row(rig.tables, a.row));
  CHECK(rig.reg.adapters().empty());
  CHECK_THROWS_WITH(rig.reg.unregister_adapter(a.row), "holds no adapter");
  CHECK_THROWS_WITH(rig.reg.unregister_adapter(0), "not an adapter row");

  // Register in the other order: row 1 and slot 8 onwards are reused, B is served right.
  const AdapterInfo b2 = rig.reg.register_adapter(tmp.path() + "/b");
  CHECK_EQ(b2.row, 1);
  CHECK_EQ(rig.tables.get(0, 1, 3), 8);
  check_row_serves(rig, 1, kSelB, 2);
  // Dropping the first of two neighbours keeps the shared boundary page for the second.
  const AdapterInfo a2 = rig.reg.register_adapter(tmp.path() + "/a");
  rig.reg.unregister_adapter(b2.row);
  check_row_serves(rig, a2.row, kSelA, 1);
  rig.reg.unregister_adapter(a2.row);
  CHECK(stats_equal(rig.pool.stats(), s0));
}

TEST(registry_unregister_waits_for_the_rows_last_sequence) {
  ScratchDir tmp("registry");
  Rig rig(4, 8, 16, 12, 8, 3);
  write_adapter(tmp.sub("a"), rig.cfg, kSelA, 1);
  const ExpertPoolStats s0 = rig.pool.stats();
  const AdapterInfo a = rig.reg.register_adapter(tmp.path() + "/a");
  const ExpertPoolStats s1 = rig.pool.stats();

  rig.reg.check_chunk(10, a.row);
  rig.reg.note_sequence(10, a.row);
  rig.reg.note_sequence(11, a.row);
  rig.reg.note_sequence(12, 0);
  CHECK_THROWS_WITH(rig.reg.check_chunk(10, 0), "cannot switch");
  CHECK_THROWS_WITH(rig.reg.check_chunk(12, a.row), "cannot switch");
  CHECK_THROWS_WITH(rig.reg.check_chunk(13, 2), "holds no adapter");
  CHECK_THROWS_WITH(rig.reg.check_chunk(13, 3), "out of range");

  rig.reg.unregister_adapter(a.row);
  CHECK_THROWS_WITH(rig.reg.check_chunk(13, a.row), "being unregistered");  // no new sequences
  rig.reg.check_chunk(10, a.row);                                            // running ones go on
  CHECK(stats_equal(rig.pool.stats(), s1));
  check_row_serves(rig, a.row, kSelA, 1);
  const auto listed = rig.reg.adapters();
  CHECK(listed.size() == 1 && listed[0].draining && listed[0].live_sequences == 2);
  CHECK_THROWS_WITH(rig.reg.unregister_adapter(a.row), "already unregistered");

  rig.reg.release_sequence(10);
  rig.reg.release_sequence(12);
  CHECK(stats_equal(rig.pool.stats(), s1));
  rig.reg.release_sequence(11);  // the last one: the row and its pages go
  CHECK(stats_equal(rig.pool.stats(), s0));
  CHECK(identity_row(rig.tables, a.row));
  CHECK(rig.reg.adapters().empty());
  rig.reg.release_sequence(11);  // unknown ids are ignored
  CHECK_EQ(rig.reg.register_adapter(tmp.path() + "/a").row, a.row);
}

TEST(registry_serves_the_four_published_esft_selections) {
  // DeepSeek-V2-Lite's layer and expert counts at toy width: 27 layers, 64 experts.
  ScratchDir tmp("registry");
  Rig rig(27, 64, 16, 8, 4 * 9, 5);
  const ExpertPoolStats s0 = rig.pool.stats();
  std::vector<Selection> sels;
  int64_t total = 0;
  for (int i = 0; i < 4; ++i) {
    const ExpertSelection parsed = parse_expert_selection(kEsftSelections[i].json, kEsftSelections[i].task);
    sels.push_back(parsed.layers);
    const std::string dir = tmp.sub(kEsftSelections[i].task);
    write_adapter(dir, rig.cfg, parsed.layers, 100 + i);
    const AdapterInfo info = rig.reg.register_adapter(dir);
    CHECK_EQ(info.row, i + 1);
    total += info.experts;
  }
  CHECK_EQ(total, int64_t{124 + 153 + 128 + 83});
  CHECK_EQ(rig.pool.stats().used_slots, s0.used_slots + total);
  for (int i = 0; i < 4; ++i) check_row_serves(rig, i + 1, sels[i], 100 + i);
  for (int i = 0; i < 4; ++i) rig.reg.unregister_adapter(i + 1);
  CHECK(stats_equal(rig.pool.stats(), s0));
}
