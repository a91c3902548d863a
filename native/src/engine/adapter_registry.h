// AdapterRegistry: the engine's resident ESFT adapters. Registering one validates it
// (nothing changes on error), takes a free reroute-table row, copies its experts into
// contiguous expert-pool slots per MoE layer and only then points the row's table
// entries at them. Unregistering refuses new sequences on the row at once; the row and
// its slots are released when the last sequence using it is freed.
//
// The engine owns one registry beside its pool and tables and must:
//  - hold step_mutex() for the whole of every Step (table reads and expert reads);
//  - before a step changes anything, call check_chunk(seq, row) for each chunk (throws on
//    an unknown or draining row for a new sequence, or a sequence switching rows);
//  - after the step succeeded, call note_sequence(seq, row) for every chunk;
//  - call release_sequence(seq) whenever a sequence is freed.
// register_adapter / unregister_adapter may run on another thread while steps run.
#pragma once
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/config.h"
#include "engine/reroute_table.h"
#include "memory/expert_store.h"

namespace ew {

struct AdapterInfo {
  int32_t row = 0;           // reroute-table row: SeqChunk::adapter
  std::string dir;
  int64_t experts = 0;       // tuned experts over all MoE layers
  size_t expert_bytes = 0;   // bytes of those experts
  size_t backed_bytes = 0;   // pool pages this adapter newly committed when registered
  bool draining = false;     // unregistered, waiting for its last sequences
  int64_t live_sequences = 0;
};

class AdapterRegistry {
 public:
  // tables: one row per adapter plus row 0 (the base), M = pool.n_base() experts per row.
  AdapterRegistry(const ModelConfig& cfg, ExpertStore& pool, RerouteTables& tables);
  AdapterRegistry(const AdapterRegistry&) = delete;
  AdapterRegistry& operator=(const AdapterRegistry&) = delete;

  AdapterInfo register_adapter(const std::string& dir);
  // Throws for row 0, a free row or a row already draining.
  void unregister_adapter(int32_t row);
  std::vector<AdapterInfo> adapters() const;  // registered rows (draining included), by row

  std::mutex& step_mutex() { return step_mu_; }
  void check_chunk(int64_t seq, int32_t row) const;
  void note_sequence(int64_t seq, int32_t row);
  void release_sequence(int64_t seq);  // unknown ids are ignored

 private:
  enum class RowState : uint8_t { Free, Loading, Active, Draining };
  struct Block {
    int layer, first, count;
  };
  struct Row {
    RowState state = RowState::Free;
    AdapterInfo info;
    std::vector<Block> blocks;
  };
  void unmap_blocks(const std::vector<Block>& blocks);
  void finish_draining(int32_t row);  // reg_mu_ held

  const ModelConfig& cfg_;
  ExpertStore& pool_;
  RerouteTables& tables_;
  std::mutex step_mu_;  // held by the engine during a step
  std::mutex pool_mu_;  // serializes slot allocation, mapping and unmapping
  mutable std::mutex reg_mu_;  // rows_, seq_rows_
  std::vector<Row> rows_;
  std::unordered_map<int64_t, int32_t> seq_rows_;  // every live sequence -> its row
};

}  // namespace ew
