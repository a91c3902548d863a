#include "engine/reroute_table.h"

#include "util/error.h"

namespace ew {

RerouteTables::RerouteTables(int n_moe_layers, int n_rows, int n_experts)
    : n_layers_(n_moe_layers), n_rows_(n_rows), n_experts_(n_experts),
      data_(static_cast<size_t>(n_moe_layers) * n_rows * n_experts) {
  if (n_rows < 1) fail("RerouteTables: need at least the base row, got ", n_rows, " rows");
  for (int r = 0; r < n_rows_; ++r) reset_row(r);
}

RerouteTableView RerouteTables::view(int moe_layer) const {
  if (moe_layer < 0 || moe_layer >= n_layers_) fail("RerouteTables: MoE layer ", moe_layer, " out of range");
  return {data_.data() + static_cast<size_t>(moe_layer) * n_rows_ * n_experts_, n_rows_, n_experts_};
}

int32_t RerouteTables::get(int moe_layer, int row, int expert) const {
  return data_.at((static_cast<size_t>(moe_layer) * n_rows_ + row) * n_experts_ + expert);
}

void RerouteTables::set(int moe_layer, int row, int expert, int32_t slot) {
  if (row == 0) fail("RerouteTables: row 0 is the base model and stays the identity");
  data_.at((static_cast<size_t>(moe_layer) * n_rows_ + row) * n_experts_ + expert) = slot;
  ++version_;
}

void RerouteTables::reset_row(int row) {
  if (row < 0 || row >= n_rows_) fail("RerouteTables: row ", row, " out of range [0, ", n_rows_, ")");
  for (int l = 0; l < n_layers_; ++l)
    for (int e = 0; e < n_experts_; ++e)
      data_[(static_cast<size_t>(l) * n_rows_ + row) * n_experts_ + e] = e;
  ++version_;
}

}  // namespace ew
