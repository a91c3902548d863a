// ExpertPool: the ExpertStore (memory/expert_store.h) in host memory. The whole
// [capacity] range of each matrix is reserved once as address space (mmap PROT_NONE)
// and only slots that hold an expert are committed, so adapters come and go without
// moving anything. Pages at the boundary between two slot ranges are shared and
// reference counted: the only waste is page rounding.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "util/tensor.h"
#include "memory/expert_store.h"

namespace ew {

class ExpertPool final : public ExpertStore {
 public:
  // n_layers MoE layers, n_base base experts each; capacity = n_base + max_adapter_slots
  // slots per layer. H = hidden size, I = expert width. dtype is the experts' storage type.
  ExpertPool(int n_layers, int n_base, int max_adapter_slots, int64_t H, int64_t I, DType dtype);
  ~ExpertPool();
  ExpertPool(const ExpertPool&) = delete;
  ExpertPool& operator=(const ExpertPool&) = delete;

  int n_layers() const override { return n_layers_; }
  int n_base() const override { return n_base_; }
  int capacity() const override { return capacity_; }
  DType dtype() const override { return dtype_; }
  int64_t hidden() const override { return H_; }
  int64_t width() const override { return I_; }
  size_t mat_bytes(ExpertMat m) const override;  // bytes of one slot of that matrix (its stride)

  // Start of the tensor of one matrix of one layer (slot 0); slot s is at + s * mat_bytes(m).
  const uint8_t* base(int layer, ExpertMat m) const override;
  bool device_memory() const override { return false; }

  // Slot ranges of the adapter region [n_base, capacity): contiguous first fit.
  // Returns the first slot, or -1 when no free run of `count` slots exists in that layer.
  int alloc_slots(int layer, int count) override;
  // Backs slots [first, first + count) of all three matrices with pages (ref-counted),
  // so they can be written. Each slot must be allocated (base slots always are) and not
  // yet mapped. Throws ew::Error, changing nothing, if the OS refuses memory.
  void map_slots(int layer, int first, int count) override;
  // Releases the pages only these slots used (shared boundary pages stay while a
  // neighbour holds them) and returns the range to the free list. Slots that were
  // allocated but never mapped are just freed (so a failed registration can roll back);
  // base slots stay the model's and can be mapped again without alloc_slots.
  void unmap_slots(int layer, int first, int count) override;
  // Copies one expert matrix into a mapped slot; src must have this pool's dtype and shape.
  void write_slot(int layer, ExpertMat m, int slot, const TensorView& src) override;

  ExpertPoolStats stats() const override;
  static size_t page_size();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int n_layers_, n_base_, capacity_;
  int64_t H_, I_;
  DType dtype_;
};

}  // namespace ew
