#include "memory/expert_store.h"

#include "util/error.h"

namespace ew {

TensorView ExpertStore::slot_view(int layer, ExpertMat m, int slot) const {
  if (slot < 0 || slot >= capacity()) fail("expert store: slot ", slot, " out of range [0, ", capacity(), ")");
  TensorView v;
  v.data = slot_data(layer, m, slot);
  v.dtype = dtype();
  v.shape = m == ExpertMat::Down ? std::vector<int64_t>{hidden(), width()} : std::vector<int64_t>{width(), hidden()};
  return v;
}

}  // namespace ew
