// ExpertStore: what the engine and the adapter registry need from an expert pool,
// whichever memory it lives in. Two implementations share the slot layout:
//   ExpertPool      (memory/expert_pool.h)        host memory, mmap reservations;
//   ExpertPoolCuda  (memory/cuda/expert_pool_cuda.h) device memory, CUDA VMM.
// Per MoE layer and matrix there is one slot-indexed tensor, one stride per matrix:
//   gate [capacity, I, H]   up [capacity, I, H]   down [capacity, H, I]
// Slot e < n_base holds base expert e; slots >= n_base hold adapter experts. Only
// mapped slots are backed, and addresses never move while the store lives.
#pragma once
#include <cstddef>
#include <cstdint>

#include "util/tensor.h"

namespace ew {

enum class ExpertMat : uint8_t { Gate = 0, Up = 1, Down = 2 };
constexpr int kExpertMats = 3;

struct ExpertPoolStats {
  size_t reserved_bytes = 0;  // virtual address space reserved
  size_t backed_bytes = 0;    // physical pages committed
  size_t expert_bytes = 0;    // bytes of the experts actually stored
  int64_t used_slots = 0;     // mapped slots over all layers, base slots included
};

class ExpertStore {
 public:
  virtual ~ExpertStore() = default;

  virtual int n_layers() const = 0;
  virtual int n_base() const = 0;
  virtual int capacity() const = 0;
  virtual DType dtype() const = 0;
  virtual int64_t hidden() const = 0;
  virtual int64_t width() const = 0;
  virtual size_t mat_bytes(ExpertMat m) const = 0;  // bytes of one slot of that matrix (its stride)
  // True when base() addresses device memory (not readable by the host).
  virtual bool device_memory() const = 0;

  // Slot 0 of one matrix of one layer; slot s is at + s * mat_bytes(m).
  virtual const uint8_t* base(int layer, ExpertMat m) const = 0;
  const void* slot_data(int layer, ExpertMat m, int slot) const {
    return base(layer, m) + static_cast<size_t>(slot) * mat_bytes(m);
  }
  // A slot's matrix as a tensor: [I, H] for gate and up, [H, I] for down (in the
  // store's memory: device memory when device_memory()). Throws for a slot out of range.
  TensorView slot_view(int layer, ExpertMat m, int slot) const;

  // Contiguous first fit in the adapter region [n_base, capacity): the first slot,
  // or -1 when no free run of `count` slots exists in that layer.
  virtual int alloc_slots(int layer, int count) = 0;
  // Backs [first, first + count) of all three matrices (boundary pages shared and
  // reference counted). Throws ew::Error, changing nothing, when memory is refused.
  virtual void map_slots(int layer, int first, int count) = 0;
  // Releases the pages only these slots used and returns the range to the free list.
  // The caller guarantees no computation still reads the slots.
  virtual void unmap_slots(int layer, int first, int count) = 0;
  // Copies one host expert matrix (this store's dtype and shape) into a mapped slot.
  virtual void write_slot(int layer, ExpertMat m, int slot, const TensorView& src) = 0;

  virtual ExpertPoolStats stats() const = 0;
};

}  // namespace ew
