// ExpertPoolCuda: the ExpertPool layout (memory/expert_pool.h) in device memory via the
// CUDA driver's virtual memory management. Per MoE layer and matrix, capacity * stride
// bytes of address space are reserved once (rounded to the allocation granularity, the
// page); map_slots backs the pages a slot range covers with physical handles and maps
// them, unmap_slots releases the pages no other range still uses (reference counted).
// Addresses never move, so captured graphs and grouped kernels keep `base + slot * stride`.
//
// Handles: the first and last page of a mapped range may be shared with a neighbouring
// range, so each gets its own one-page handle; the pages strictly inside belong to this
// range alone and share one handle, mapped and unmapped together. All pages a call newly
// maps are contiguous and get one cuMemSetAccess.
//
// Synchronisation: unmap_slots frees memory at once. The caller must make sure no kernel
// still reads those slots: reset the reroute rows on the compute stream, then
// synchronise that stream (or wait on an event recorded after the last step that used
// them) before calling unmap_slots.
//
// Driver entry points come from cudaGetDriverEntryPointByVersion (cudaGetDriverEntryPoint
// before CUDA 12.5), never from linking libcuda.
// Plain C++ interface: callers need no CUDA headers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "memory/expert_store.h"
#include "util/tensor.h"

namespace ew {

class ExpertPoolCuda final : public ExpertStore {
 public:
  // Throws ew::Error when the device lacks VMM support or a driver call fails.
  ExpertPoolCuda(int device, int n_layers, int n_base, int max_adapter_slots, int64_t H, int64_t I, DType dtype);
  ~ExpertPoolCuda();
  ExpertPoolCuda(const ExpertPoolCuda&) = delete;
  ExpertPoolCuda& operator=(const ExpertPoolCuda&) = delete;

  int n_layers() const override { return n_layers_; }
  int n_base() const override { return n_base_; }
  int capacity() const override { return capacity_; }
  DType dtype() const override { return dtype_; }
  int64_t hidden() const override { return H_; }
  int64_t width() const override { return I_; }
  size_t mat_bytes(ExpertMat m) const override;

  // Device address of slot 0 of one matrix of one layer; slot s is at + s * mat_bytes(m).
  const uint8_t* base(int layer, ExpertMat m) const override;
  bool device_memory() const override { return true; }

  int alloc_slots(int layer, int count) override;
  // Backs and maps [first, first + count) in all three matrices; on failure rolls back
  // everything this call did and throws.
  void map_slots(int layer, int first, int count) override;
  // See the synchronisation note above. Returns the range to the free list.
  void unmap_slots(int layer, int first, int count) override;
  // Copies a host tensor (this pool's dtype and shape) into a mapped slot (synchronous).
  void write_slot(int layer, ExpertMat m, int slot, const TensorView& src) override;

  ExpertPoolStats stats() const override;
  size_t page_size() const;  // the allocation granularity

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int n_layers_, n_base_, capacity_;
  int64_t H_, I_;
  DType dtype_;
};

}  // namespace ew
