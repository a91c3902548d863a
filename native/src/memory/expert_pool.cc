#include "memory/expert_pool.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>

#include "memory/page_refcount.h"
#include "util/error.h"

namespace ew {
namespace {

// Slot life cycle: Free (adapter region only) -> Allocated (alloc_slots; base slots
// start here, owned by the model) -> Mapped (map_slots) -> back via unmap_slots.
enum SlotState : uint8_t { kFree = 0, kAllocated = 1, kMapped = 2 };

// One matrix of one layer: [capacity] slots of one stride in one reserved range.
struct Region {
  uint8_t* base = nullptr;
  size_t bytes = 0;
  PageRefCounts refs;
  Region(uint8_t* b, size_t n, size_t pages) : base(b), bytes(n), refs(pages) {}
};

}  // namespace

struct ExpertPool::Impl {
  size_t page = 0;
  size_t mat_bytes[kExpertMats] = {0, 0, 0};
  std::vector<Region> regions;             // [layer * kExpertMats + mat]
  std::vector<std::vector<uint8_t>> slots;  // per layer: SlotState of each slot
  int64_t mapped = 0;
  mutable std::mutex mu;

  Region& region(int layer, int m) { return regions[static_cast<size_t>(layer) * kExpertMats + m]; }
  PageRun slot_pages(int m, int slot) const {
    const size_t b = static_cast<size_t>(slot) * mat_bytes[m];
    return PageRefCounts::pages_of(b, b + mat_bytes[m], page);
  }
  // Gives back pages no slot uses any more: their contents are dropped and any
  // access faults again, as before they were first mapped.
  void release_pages(Region& r, const std::vector<PageRun>& runs, const char** err) {
    for (const PageRun& run : runs) {
      uint8_t* p = r.base + run.first * page;
      const size_t n = run.count * page;
      if (::madvise(p, n, MADV_DONTNEED) != 0 || ::mprotect(p, n, PROT_NONE) != 0) *err = std::strerror(errno);
    }
  }
  // Drops the page references of the Mapped slots in [first, first + count).
  void unref(int layer, int first, int count, const char** err) {
    for (int m = 0; m < kExpertMats; ++m) {
      Region& r = region(layer, m);
      std::vector<PageRun> freed;
      for (int s = first; s < first + count; ++s)
        if (slots[layer][s] == kMapped) r.refs.release(slot_pages(m, s), &freed);
      release_pages(r, freed, err);
    }
  }
};

size_t ExpertPool::page_size() { return static_cast<size_t>(::sysconf(_SC_PAGESIZE)); }

ExpertPool::ExpertPool(int n_layers, int n_base, int max_adapter_slots, int64_t H, int64_t I, DType dtype)
    : impl_(std::make_unique<Impl>()),
      n_layers_(n_layers),
      n_base_(n_base),
      capacity_(0),
      H_(H),
      I_(I),
      dtype_(dtype) {
  if (n_layers < 0 || n_base <= 0 || max_adapter_slots < 0 || H <= 0 || I <= 0)
    fail("ExpertPool: invalid geometry (", n_layers, " layers, ", n_base, " base experts, ", max_adapter_slots,
         " adapter slots, H ", H, ", I ", I, ")");
  if (max_adapter_slots > std::numeric_limits<int>::max() - n_base)
    fail("ExpertPool: ", n_base, " + ", max_adapter_slots, " slots per layer is too many");
  capacity_ = n_base + max_adapter_slots;
  Impl& im = *impl_;
  im.page = page_size();
  const size_t mat = static_cast<size_t>(H) * static_cast<size_t>(I) * dtype_size(dtype);
  for (size_t& b : im.mat_bytes) b = mat;  // gate, up [I, H] and down [H, I] have the same size
  if (mat / static_cast<size_t>(H) / dtype_size(dtype) != static_cast<size_t>(I) ||
      mat > (std::numeric_limits<size_t>::max() / 2) / static_cast<size_t>(capacity_))
    fail("ExpertPool: ", capacity_, " slots of ", H, "x", I, " do not fit in the address space");

  im.regions.reserve(static_cast<size_t>(n_layers) * kExpertMats);
  im.slots.resize(static_cast<size_t>(n_layers));
  for (int l = 0; l < n_layers; ++l) {
    im.slots[l].assign(static_cast<size_t>(capacity_), kFree);
    for (int s = 0; s < n_base; ++s) im.slots[l][s] = kAllocated;
    for (int m = 0; m < kExpertMats; ++m) {
      const size_t pages = (static_cast<size_t>(capacity_) * im.mat_bytes[m] + im.page - 1) / im.page;
      const size_t bytes = pages * im.page;
      // NORESERVE: address space only; no memory is committed or charged until mapped.
      void* p = ::mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED)
        fail("ExpertPool: cannot reserve ", bytes, " bytes of address space for MoE layer ", l, ": ",
             std::strerror(errno));
      // Transparent huge pages where the kernel can: fewer faults while loading and
      // fewer TLB misses when the grouped kernels stream expert weights. Pages become
      // huge only inside committed (read-write) ranges, so this never backs unused slots.
      ::madvise(p, bytes, MADV_HUGEPAGE);
      im.regions.emplace_back(static_cast<uint8_t*>(p), bytes, pages);
    }
  }
}

ExpertPool::~ExpertPool() {
  for (Region& r : impl_->regions) ::munmap(r.base, r.bytes);
}

size_t ExpertPool::mat_bytes(ExpertMat m) const { return impl_->mat_bytes[static_cast<int>(m)]; }

const uint8_t* ExpertPool::base(int layer, ExpertMat m) const {
  if (layer < 0 || layer >= n_layers_) fail("ExpertPool: MoE layer ", layer, " out of range [0, ", n_layers_, ")");
  return impl_->regions[static_cast<size_t>(layer) * kExpertMats + static_cast<int>(m)].base;
}

int ExpertPool::alloc_slots(int layer, int count) {
  if (layer < 0 || layer >= n_layers_) fail("ExpertPool: MoE layer ", layer, " out of range [0, ", n_layers_, ")");
  if (count <= 0) fail("ExpertPool: cannot allocate ", count, " slots");
  std::lock_guard<std::mutex> lk(impl_->mu);
  std::vector<uint8_t>& st = impl_->slots[layer];
  int run = 0;
  for (int s = n_base_; s < capacity_; ++s) {
    run = st[s] == kFree ? run + 1 : 0;
    if (run == count) {
      const int first = s - count + 1;
      for (int k = first; k <= s; ++k) st[k] = kAllocated;
      return first;
    }
  }
  return -1;
}

namespace {
void check_range(int n_layers, int capacity, int layer, int first, int count, const char* what) {
  if (layer < 0 || layer >= n_layers)
    fail("ExpertPool::", what, ": MoE layer ", layer, " out of range [0, ", n_layers, ")");
  if (count <= 0 || first < 0 || first > capacity - count)
    fail("ExpertPool::", what, ": slots [", first, ", ", static_cast<int64_t>(first) + count, ") of layer ", layer,
         " outside [0, ", capacity, ")");
}
}  // namespace

void ExpertPool::map_slots(int layer, int first, int count) {
  check_range(n_layers_, capacity_, layer, first, count, "map_slots");
  Impl& im = *impl_;
  std::lock_guard<std::mutex> lk(im.mu);
  std::vector<uint8_t>& st = im.slots[layer];
  for (int s = first; s < first + count; ++s)
    if (st[s] != kAllocated)
      fail("ExpertPool::map_slots: slot ", s, " of layer ", layer,
           st[s] == kMapped ? " is already mapped" : " is not allocated (alloc_slots first)");

  const char* err = nullptr;
  int done = 0;  // slots whose pages are referenced, for the rollback
  for (int m = 0; m < kExpertMats && !err; ++m) {
    Region& r = im.region(layer, m);
    std::vector<PageRun> fresh;
    for (int s = first; s < first + count; ++s) r.refs.acquire(im.slot_pages(m, s), &fresh);
    done = m + 1;
    for (const PageRun& run : fresh)
      if (::mprotect(r.base + run.first * im.page, run.count * im.page, PROT_READ | PROT_WRITE) != 0) {
        err = std::strerror(errno);
        break;
      }
  }
  if (err) {
    // Undo this call's references in the matrices already processed; their freshly
    // committed pages go back to PROT_NONE.
    const char* ignored = nullptr;
    for (int m = 0; m < done; ++m) {
      Region& r = im.region(layer, m);
      std::vector<PageRun> freed;
      for (int s = first; s < first + count; ++s) r.refs.release(im.slot_pages(m, s), &freed);
      im.release_pages(r, freed, &ignored);
    }
    fail("ExpertPool::map_slots: cannot commit memory for slots [", first, ", ", first + count, ") of MoE layer ",
         layer, ": ", err);
  }
  for (int s = first; s < first + count; ++s) st[s] = kMapped;
  im.mapped += count;
}

void ExpertPool::unmap_slots(int layer, int first, int count) {
  check_range(n_layers_, capacity_, layer, first, count, "unmap_slots");
  Impl& im = *impl_;
  std::lock_guard<std::mutex> lk(im.mu);
  std::vector<uint8_t>& st = im.slots[layer];
  for (int s = first; s < first + count; ++s)
    if (st[s] == kFree) fail("ExpertPool::unmap_slots: slot ", s, " of layer ", layer, " is not allocated");
  const char* err = nullptr;
  im.unref(layer, first, count, &err);
  for (int s = first; s < first + count; ++s) {
    if (st[s] == kMapped) --im.mapped;
    st[s] = s < n_base_ ? kAllocated : kFree;  // base slots stay the model's
  }
  if (err) fail("ExpertPool::unmap_slots: cannot release pages of layer ", layer, ": ", err);
}

void ExpertPool::write_slot(int layer, ExpertMat m, int slot, const TensorView& src) {
  check_range(n_layers_, capacity_, layer, slot, 1, "write_slot");
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    if (impl_->slots[layer][slot] != kMapped)
      fail("ExpertPool::write_slot: slot ", slot, " of MoE layer ", layer, " is not mapped");
  }
  const std::vector<int64_t> want = m == ExpertMat::Down ? std::vector<int64_t>{H_, I_} : std::vector<int64_t>{I_, H_};
  if (src.dtype != dtype_ || src.shape != want)
    fail("ExpertPool::write_slot: source is ", dtype_name(src.dtype), " ", shape_str(src.shape), ", slot holds ",
         dtype_name(dtype_), " ", shape_str(want));
  std::memcpy(const_cast<void*>(slot_data(layer, m, slot)), src.data, mat_bytes(m));
}

ExpertPoolStats ExpertPool::stats() const {
  const Impl& im = *impl_;
  std::lock_guard<std::mutex> lk(im.mu);
  ExpertPoolStats s;
  for (const Region& r : im.regions) {
    s.reserved_bytes += r.bytes;
    s.backed_bytes += r.refs.live_pages() * im.page;
  }
  s.used_slots = im.mapped;
  s.expert_bytes = static_cast<size_t>(im.mapped) * (im.mat_bytes[0] + im.mat_bytes[1] + im.mat_bytes[2]);
  return s;
}

}  // namespace ew
