// ExpertPool: the routed experts of every MoE layer in expert-indexed tensors.
//
// Per MoE layer there are three tensors, slot-major, one uniform stride each:
//   gate [capacity, I, H]   up [capacity, I, H]   down [capacity, H, I]
// Slot e < n_base holds base expert e. Slots >= n_base hold adapter experts.
// The whole [capacity] range is reserved once as virtual memory (mmap PROT_NONE
// on the CPU) and only slots that hold an expert are backed with pages, so adapters
// come and go without moving anything. Pages at the boundary between two slot
// ranges are shared and reference counted: the only waste is page rounding.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "engine/tensor.h"

namespace ew {

enum class ExpertMat : uint8_t { Gate = 0, Up = 1, Down = 2 };
constexpr int kExpertMats = 3;

struct ExpertPoolStats {
  size_t reserved_bytes = 0;  // virtual address space reserved
  size_t backed_bytes = 0;    // physical pages committed
  size_t expert_bytes = 0;    // bytes of the experts actually stored
  int64_t used_slots = 0;     // mapped slots over all layers, base slots included
};

class ExpertPool {
 public:
  // n_layers MoE layers, n_base base experts each; capacity = n_base + max_adapter_slots
  // slots per layer. H = hidden size, I = expert width. dtype is the experts' storage type.
  ExpertPool(int n_layers, int n_base, int max_adapter_slots, int64_t H, int64_t I, DType dtype);
  ~ExpertPool();
  ExpertPool(const ExpertPool&) = delete;
  ExpertPool& operator=(const ExpertPool&) = delete;

  int n_layers() const { return n_layers_; }
  int n_base() const { return n_base_; }
  int capacity() const { return capacity_; }
  DType dtype() const { return dtype_; }
  int64_t hidden() const { return H_; }
  int64_t width() const { return I_; }
  size_t mat_bytes(ExpertMat m) const;  // bytes of one slot of that matrix (its stride)

  // Start of the tensor of one matrix of one layer (slot 0); slot s is at + s * mat_bytes(m).
  const uint8_t* base(int layer, ExpertMat m) const;
  const void* slot_data(int layer, ExpertMat m, int slot) const {
    return base(layer, m) + static_cast<size_t>(slot) * mat_bytes(m);
  }
  TensorView slot_view(int layer, ExpertMat m, int slot) const;

  // Slot ranges of the adapter region [n_base, capacity): contiguous first fit.
  // Returns the first slot, or -1 when no free run of `count` slots exists in that layer.
  int alloc_slots(int layer, int count);
  // Backs slots [first, first + count) of all three matrices with pages (ref-counted),
  // so they can be written. Each slot must be allocated (base slots always are) and not
  // yet mapped. Throws ew::Error, changing nothing, if the OS refuses memory.
  void map_slots(int layer, int first, int count);
  // Releases the pages only these slots used (shared boundary pages stay while a
  // neighbour holds them) and returns the range to the free list. Slots that were
  // allocated but never mapped are just freed (so a failed registration can roll back);
  // base slots stay the model's and can be mapped again without alloc_slots.
  void unmap_slots(int layer, int first, int count);
  // Copies one expert matrix into a mapped slot; src must have this pool's dtype and shape.
  void write_slot(int layer, ExpertMat m, int slot, const TensorView& src);

  ExpertPoolStats stats() const;
  static size_t page_size();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int n_layers_, n_base_, capacity_;
  int64_t H_, I_;
  DType dtype_;
};

}  // namespace ew
