// RerouteTables: per MoE layer, table[row * M + e] = the expert slot that serves
// base expert id e for adapter row `row`. Row 0 is the base model (identity);
// rows of unregistered adapters are identity too. The fused router step reads a
// layer's view; registration rewrites rows between steps (the engine serializes
// table writes against steps, so a step always sees a consistent table).
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/ops.h"

namespace ew {

class RerouteTables {
 public:
  RerouteTables() = default;
  RerouteTables(int n_moe_layers, int n_rows, int n_experts);

  int n_layers() const { return n_layers_; }
  int n_rows() const { return n_rows_; }
  int n_experts() const { return n_experts_; }

  RerouteTableView view(int moe_layer) const;
  // All layers, [layer][row][expert], and a counter bumped by every change, so a
  // device copy knows when to refresh.
  const std::vector<int32_t>& data() const { return data_; }
  uint64_t version() const { return version_; }
  int32_t get(int moe_layer, int row, int expert) const;
  void set(int moe_layer, int row, int expert, int32_t slot);
  // Points every entry of `row` back at the base experts.
  void reset_row(int row);

 private:
  int n_layers_ = 0, n_rows_ = 0, n_experts_ = 0;
  std::vector<int32_t> data_;  // [layer][row][expert]
  uint64_t version_ = 0;
};

}  // namespace ew
