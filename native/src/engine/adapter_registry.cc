#include "engine/adapter_registry.h"

#include "engine/adapter.h"
#include "util/error.h"

namespace ew {

AdapterRegistry::AdapterRegistry(const ModelConfig& cfg, ExpertStore& pool, RerouteTables& tables)
    : cfg_(cfg), pool_(pool), tables_(tables), rows_(tables.n_rows()) {
  if (tables.n_layers() != pool.n_layers() || tables.n_experts() != pool.n_base())
    fail("AdapterRegistry: reroute tables [", tables.n_layers(), " layers x ", tables.n_experts(),
         " experts] do not match the expert pool [", pool.n_layers(), " x ", pool.n_base(), "]");
}

AdapterInfo AdapterRegistry::register_adapter(const std::string& dir) {
  // Everything that can be checked is checked before any state changes.
  AdapterSpec spec = load_adapter(dir, cfg_, pool_.dtype());
  if (static_cast<int>(spec.layers.size()) != pool_.n_layers())
    fail("adapter ", dir, ": has ", spec.layers.size(), " MoE layers, the expert pool ", pool_.n_layers());

  int32_t row = -1;
  {
    std::lock_guard<std::mutex> lk(reg_mu_);
    for (int32_t r = 1; r < static_cast<int32_t>(rows_.size()) && row < 0; ++r)
      if (rows_[r].state == RowState::Free) row = r;
    if (row < 0)
      fail("adapter ", dir, ": no free adapter row (all ", rows_.size() - 1,
           " in use; raise max_adapters or unregister one)");
    rows_[row].state = RowState::Loading;
  }

  std::vector<Block> blocks;
  size_t backed = 0;
  try {
    {
      std::lock_guard<std::mutex> lk(pool_mu_);
      const size_t before = pool_.stats().backed_bytes;
      for (int l = 0; l < pool_.n_layers(); ++l) {
        const int count = static_cast<int>(spec.layers[l].size());
        if (count == 0) continue;
        const int first = pool_.alloc_slots(l, count);
        if (first < 0)
          fail("adapter ", dir, ": MoE layer ", l, " has no free run of ", count, " expert slots (",
               pool_.capacity() - pool_.n_base(), " adapter slots per layer; raise max_adapter_slots)");
        blocks.push_back({l, first, count});
        pool_.map_slots(l, first, count);
      }
      backed = pool_.stats().backed_bytes - before;
    }
    // The row is not visible to any step yet, so the copy needs no step lock.
    for (const Block& b : blocks)
      for (int i = 0; i < b.count; ++i) {
        const AdapterExpert& x = spec.layers[b.layer][i];
        pool_.write_slot(b.layer, ExpertMat::Gate, b.first + i, x.gate);
        pool_.write_slot(b.layer, ExpertMat::Up, b.first + i, x.up);
        pool_.write_slot(b.layer, ExpertMat::Down, b.first + i, x.down);
      }
    std::lock_guard<std::mutex> lk(step_mu_);
    for (const Block& b : blocks)
      for (int i = 0; i < b.count; ++i) tables_.set(b.layer, row, spec.layers[b.layer][i].expert, b.first + i);
  } catch (...) {
    unmap_blocks(blocks);
    tables_.reset_row(row);
    std::lock_guard<std::mutex> lk(reg_mu_);
    rows_[row].state = RowState::Free;
    throw;
  }

  std::lock_guard<std::mutex> lk(reg_mu_);
  Row& r = rows_[row];
  r.state = RowState::Active;
  r.blocks = std::move(blocks);
  r.info = AdapterInfo{row, dir, spec.n_experts, spec.expert_bytes, backed, false, 0};
  return r.info;
}

void AdapterRegistry::unregister_adapter(int32_t row) {
  // The step lock orders this against a step that admitted a new sequence on the row
  // but has not noted it yet: after it, every sequence on the row is counted.
  std::lock_guard<std::mutex> step(step_mu_);
  std::lock_guard<std::mutex> lk(reg_mu_);
  if (row <= 0 || row >= static_cast<int32_t>(rows_.size()))
    fail("unregister adapter: row ", row, " is not an adapter row (1..", rows_.size() - 1, ")");
  Row& r = rows_[row];
  if (r.state != RowState::Active)
    fail("unregister adapter: row ", row, r.state == RowState::Draining ? " is already unregistered" : " holds no adapter");
  r.state = RowState::Draining;
  r.info.draining = true;
  if (r.info.live_sequences == 0) finish_draining(row);
}

void AdapterRegistry::finish_draining(int32_t row) {
  // No live sequence uses the row and no new one may start on it, so no step reads
  // its table entries or its slots: both can go without waiting for the step lock.
  Row& r = rows_[row];
  tables_.reset_row(row);
  unmap_blocks(r.blocks);
  r = Row{};
}

void AdapterRegistry::unmap_blocks(const std::vector<Block>& blocks) {
  std::lock_guard<std::mutex> lk(pool_mu_);
  for (const Block& b : blocks) pool_.unmap_slots(b.layer, b.first, b.count);
}

std::vector<AdapterInfo> AdapterRegistry::adapters() const {
  std::lock_guard<std::mutex> lk(reg_mu_);
  std::vector<AdapterInfo> out;
  for (const Row& r : rows_)
    if (r.state == RowState::Active || r.state == RowState::Draining) out.push_back(r.info);
  return out;
}

void AdapterRegistry::check_chunk(int64_t seq, int32_t row) const {
  std::lock_guard<std::mutex> lk(reg_mu_);
  auto it = seq_rows_.find(seq);
  if (it != seq_rows_.end()) {
    // A sequence keeps its row to the end, a draining row included.
    if (it->second != row)
      fail("sequence ", seq, " runs on adapter row ", it->second, " and cannot switch to row ", row);
    return;
  }
  if (row == 0) return;
  if (row < 0 || row >= static_cast<int32_t>(rows_.size()))
    fail("sequence ", seq, ": adapter row ", row, " out of range [0, ", rows_.size(), ")");
  const RowState st = rows_[row].state;
  if (st == RowState::Draining) fail("sequence ", seq, ": adapter row ", row, " is being unregistered");
  if (st != RowState::Active) fail("sequence ", seq, ": adapter row ", row, " holds no adapter");
}

void AdapterRegistry::note_sequence(int64_t seq, int32_t row) {
  std::lock_guard<std::mutex> lk(reg_mu_);
  if (seq_rows_.emplace(seq, row).second && row > 0) ++rows_.at(row).info.live_sequences;
}

void AdapterRegistry::release_sequence(int64_t seq) {
  std::lock_guard<std::mutex> lk(reg_mu_);
  auto it = seq_rows_.find(seq);
  if (it == seq_rows_.end()) return;
  const int32_t row = it->second;
  seq_rows_.erase(it);
  if (row == 0) return;
  Row& r = rows_[row];
  if (--r.info.live_sequences == 0 && r.state == RowState::Draining) finish_draining(row);
}

}  // namespace ew
