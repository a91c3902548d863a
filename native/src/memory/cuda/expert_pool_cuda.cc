#include "memory/cuda/expert_pool_cuda.h"

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <vector>

#include "memory/page_refcount.h"
#include "util/error.h"

namespace ew {
namespace {

// The driver calls this pool needs, resolved once through the runtime.
struct Driver {
  PFN_cuDeviceGet_v2000 DeviceGet = nullptr;
  PFN_cuDeviceGetAttribute_v2000 DeviceGetAttribute = nullptr;
  PFN_cuMemGetAllocationGranularity_v10020 GetGranularity = nullptr;
  PFN_cuMemAddressReserve_v10020 AddressReserve = nullptr;
  PFN_cuMemAddressFree_v10020 AddressFree = nullptr;
  PFN_cuMemCreate_v10020 Create = nullptr;
  PFN_cuMemRelease_v10020 Release = nullptr;
  PFN_cuMemMap_v10020 Map = nullptr;
  PFN_cuMemUnmap_v10020 Unmap = nullptr;
  PFN_cuMemSetAccess_v10020 SetAccess = nullptr;
};

// cudaGetDriverEntryPointByVersion (CUDA >= 12.5) asks for the ABI version the PFN typedef
// names. Older toolkits have only cudaGetDriverEntryPoint, which returns the version the
// runtime was built against: the same ABI for every call used here (none changed since
// 10.2). EW_CUDA_LEGACY_ENTRY_POINTS forces that path (to compile-check it on a new toolkit).
template <typename Fn>
void resolve(const char* name, unsigned version, Fn* out) {
  void* fn = nullptr;
#if CUDART_VERSION >= 12000
  cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050 && !defined(EW_CUDA_LEGACY_ENTRY_POINTS)
  const cudaError_t err = cudaGetDriverEntryPointByVersion(name, &fn, version, cudaEnableDefault, &q);
#else
  const cudaError_t err = cudaGetDriverEntryPoint(name, &fn, cudaEnableDefault, &q);
#endif
  const bool found = q == cudaDriverEntryPointSuccess;
#else  // 11.3 - 11.8: no query result
  const cudaError_t err = cudaGetDriverEntryPoint(name, &fn, cudaEnableDefault);
  const bool found = true;
#endif
  if (err != cudaSuccess || !found || !fn)
    fail("CUDA expert pool: driver entry point ", name, " (v", version, ") unavailable: ", cudaGetErrorString(err));
  *out = reinterpret_cast<Fn>(fn);
}

const Driver& driver() {
  static const Driver d = [] {
    Driver x;
    resolve("cuDeviceGet", 2000, &x.DeviceGet);
    resolve("cuDeviceGetAttribute", 2000, &x.DeviceGetAttribute);
    resolve("cuMemGetAllocationGranularity", 10020, &x.GetGranularity);
    resolve("cuMemAddressReserve", 10020, &x.AddressReserve);
    resolve("cuMemAddressFree", 10020, &x.AddressFree);
    resolve("cuMemCreate", 10020, &x.Create);
    resolve("cuMemRelease", 10020, &x.Release);
    resolve("cuMemMap", 10020, &x.Map);
    resolve("cuMemUnmap", 10020, &x.Unmap);
    resolve("cuMemSetAccess", 10020, &x.SetAccess);
    return x;
  }();
  return d;
}

void check(CUresult r, const char* what) {
  if (r != CUDA_SUCCESS) fail("CUDA expert pool: ", what, " failed (CUresult ", static_cast<int>(r), ")");
}

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

}  // namespace

struct ExpertPoolCuda::Impl {
  struct Handle {
    CUmemGenericAllocationHandle h = 0;
    CUdeviceptr va = 0;
    size_t size = 0;
    int live_pages = 0;  // pages of this handle still referenced by a mapped slot
  };
  // One matrix of one layer: the reserved range and its pages.
  struct Region {
    CUdeviceptr va = 0;
    size_t reserved = 0;
    size_t stride = 0;
    PageRefCounts refs{0};             // mapped slots touching each page (shared with the CPU pool)
    std::vector<int32_t> page_handle;  // index into handles, -1 when unbacked
  };
  // A page run this map call created: rolled back in reverse on failure.
  struct NewRun {
    int region;
    size_t first_page, n_pages;
    int handle;
  };

  int device = 0;
  CUdevice cu_device = 0;
  size_t page = 0;
  std::vector<Region> regions;           // [layer * 3 + matrix]
  std::vector<Handle> handles;           // slots reused through free_handles
  std::vector<int> free_handles;
  std::vector<std::vector<uint8_t>> slot_state;  // per layer: 0 free, 1 allocated, 2 mapped
  int64_t mapped_slots = 0;

  CUmemAllocationProp prop() const {
    CUmemAllocationProp p{};
    p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    p.location.id = cu_device;
    return p;
  }

  // Pages [first, end) of a region touched by slots [slot, slot + count).
  void page_range(const Region& r, int slot, int count, size_t* first, size_t* end) const {
    *first = static_cast<size_t>(slot) * r.stride / page;
    *end = (static_cast<size_t>(slot + count) * r.stride + page - 1) / page;
  }

  // The pages of one slot, as the CPU pool counts them (one acquire per slot).
  PageRun slot_pages(const Region& r, int slot) const {
    return PageRefCounts::pages_of(static_cast<size_t>(slot) * r.stride, static_cast<size_t>(slot + 1) * r.stride, page);
  }

  int new_handle(size_t size) {
    Handle h;
    h.size = size;
    const CUmemAllocationProp p = prop();
    check(driver().Create(&h.h, size, &p, 0), "cuMemCreate");
    if (!free_handles.empty()) {
      const int i = free_handles.back();
      free_handles.pop_back();
      handles[i] = h;
      return i;
    }
    handles.push_back(h);
    return static_cast<int>(handles.size()) - 1;
  }

  // Unmaps (when mapped) and releases a handle; used by rollback and unmap, never throws
  // so teardown and rollback always run to the end. Returns false if the driver refused.
  bool drop_handle(int i) {
    Handle& h = handles[i];
    bool ok = true;
    if (h.va) ok &= driver().Unmap(h.va, h.size) == CUDA_SUCCESS;
    ok &= driver().Release(h.h) == CUDA_SUCCESS;
    h = Handle{};
    free_handles.push_back(i);
    return ok;
  }

  // Backs pages [first, end) of region ri that are unbacked: the edge pages (which a
  // neighbour may share) get one handle each, the pages strictly inside one handle.
  void back_pages(int ri, size_t first, size_t end, std::vector<NewRun>* runs) {
    Region& r = regions[ri];
    size_t lo = end, hi = first;  // the newly backed span, for one cuMemSetAccess
    auto back = [&](size_t p0, size_t n) {
      const int hi_ = new_handle(n * page);
      runs->push_back({ri, p0, n, hi_});
      Handle& h = handles[hi_];
      check(driver().Map(r.va + p0 * page, n * page, 0, h.h, 0), "cuMemMap");
      h.va = r.va + p0 * page;
      lo = std::min(lo, p0);
      hi = std::max(hi, p0 + n);
    };
    if (r.page_handle[first] < 0) back(first, 1);
    if (end - first > 2) back(first + 1, end - first - 2);
    if (end - first > 1 && r.page_handle[end - 1] < 0) back(end - 1, 1);
    if (lo < hi) {
      CUmemAccessDesc access{};
      access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
      access.location.id = cu_device;
      access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
      check(driver().SetAccess(r.va + lo * page, (hi - lo) * page, &access, 1), "cuMemSetAccess");
    }
  }
};

ExpertPoolCuda::ExpertPoolCuda(int device, int n_layers, int n_base, int max_adapter_slots, int64_t H, int64_t I,
                               DType dtype)
    : impl_(std::make_unique<Impl>()), n_layers_(n_layers), n_base_(n_base),
      capacity_(n_base + max_adapter_slots), H_(H), I_(I), dtype_(dtype) {
  if (n_layers <= 0 || n_base <= 0 || max_adapter_slots < 0 || H <= 0 || I <= 0)
    fail("CUDA expert pool: bad geometry (", n_layers, " layers, ", n_base, " experts, ", max_adapter_slots,
         " adapter slots, H ", H, ", I ", I, ")");
  Impl& im = *impl_;
  im.device = device;
  if (cudaSetDevice(device) != cudaSuccess || cudaFree(nullptr) != cudaSuccess)
    fail("CUDA expert pool: cannot initialise device ", device);
  const Driver& d = driver();
  check(d.DeviceGet(&im.cu_device, device), "cuDeviceGet");
  int vmm = 0;
  check(d.DeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, im.cu_device),
        "cuDeviceGetAttribute");
  if (!vmm) fail("CUDA expert pool: device ", device, " does not support virtual memory management");
  const CUmemAllocationProp p = im.prop();
  check(d.GetGranularity(&im.page, &p, CU_MEM_ALLOC_GRANULARITY_MINIMUM), "cuMemGetAllocationGranularity");

  im.slot_state.assign(n_layers, std::vector<uint8_t>(capacity_, 0));
  im.regions.resize(static_cast<size_t>(n_layers) * kExpertMats);
  try {
    for (int l = 0; l < n_layers; ++l)
      for (int m = 0; m < kExpertMats; ++m) {
        Impl::Region& r = im.regions[l * kExpertMats + m];
        r.stride = mat_bytes(static_cast<ExpertMat>(m));
        r.reserved = round_up(static_cast<size_t>(capacity_) * r.stride, im.page);
        check(d.AddressReserve(&r.va, r.reserved, im.page, 0, 0), "cuMemAddressReserve");
        r.refs = PageRefCounts(r.reserved / im.page);
        r.page_handle.assign(r.reserved / im.page, -1);
      }
  } catch (...) {
    for (auto& r : im.regions)
      if (r.va) d.AddressFree(r.va, r.reserved);
    throw;
  }
}

ExpertPoolCuda::~ExpertPoolCuda() {
  Impl& im = *impl_;
  for (size_t i = 0; i < im.handles.size(); ++i)
    if (im.handles[i].h) im.drop_handle(static_cast<int>(i));
  for (auto& r : im.regions)
    if (r.va) driver().AddressFree(r.va, r.reserved);
}

size_t ExpertPoolCuda::mat_bytes(ExpertMat) const { return static_cast<size_t>(H_ * I_) * dtype_size(dtype_); }

size_t ExpertPoolCuda::page_size() const { return impl_->page; }

const uint8_t* ExpertPoolCuda::base(int layer, ExpertMat m) const {
  if (layer < 0 || layer >= n_layers_) fail("CUDA expert pool: layer ", layer, " out of range");
  return reinterpret_cast<const uint8_t*>(impl_->regions[layer * kExpertMats + static_cast<int>(m)].va);
}

int ExpertPoolCuda::alloc_slots(int layer, int count) {
  if (layer < 0 || layer >= n_layers_ || count <= 0)
    fail("CUDA expert pool: alloc_slots(layer ", layer, ", count ", count, ") out of range");
  const std::vector<uint8_t>& st = impl_->slot_state[layer];
  int run = 0;
  for (int s = n_base_; s < capacity_; ++s) {
    run = st[s] == 0 ? run + 1 : 0;
    if (run == count) {
      for (int i = s - count + 1; i <= s; ++i) impl_->slot_state[layer][i] = 1;
      return s - count + 1;
    }
  }
  return -1;
}

void ExpertPoolCuda::map_slots(int layer, int first, int count) {
  Impl& im = *impl_;
  if (layer < 0 || layer >= n_layers_ || first < 0 || count <= 0 || first + count > capacity_)
    fail("CUDA expert pool: map_slots(layer ", layer, ", ", first, ", ", count, ") out of range");
  for (int s = first; s < first + count; ++s)
    if (im.slot_state[layer][s] == 2) fail("CUDA expert pool: slot ", s, " of layer ", layer, " is already mapped");

  std::vector<Impl::NewRun> runs;
  try {
    for (int m = 0; m < kExpertMats; ++m) {
      const int ri = layer * kExpertMats + m;
      size_t p0, p1;
      im.page_range(im.regions[ri], first, count, &p0, &p1);
      im.back_pages(ri, p0, p1, &runs);
    }
  } catch (...) {
    for (auto it = runs.rbegin(); it != runs.rend(); ++it) im.drop_handle(it->handle);
    throw;
  }
  // Commit: the new handles own their pages, every touched page gains this range.
  for (const Impl::NewRun& run : runs) {
    Impl::Region& r = im.regions[run.region];
    for (size_t p = run.first_page; p < run.first_page + run.n_pages; ++p) r.page_handle[p] = run.handle;
  }
  for (int m = 0; m < kExpertMats; ++m) {
    Impl::Region& r = im.regions[layer * kExpertMats + m];
    std::vector<PageRun> live;
    for (int s = first; s < first + count; ++s) r.refs.acquire(im.slot_pages(r, s), &live);
    for (const PageRun& run : live)
      for (size_t p = run.first; p < run.first + run.count; ++p) ++im.handles[r.page_handle[p]].live_pages;
  }
  for (int s = first; s < first + count; ++s) im.slot_state[layer][s] = 2;
  im.mapped_slots += count;
}

void ExpertPoolCuda::unmap_slots(int layer, int first, int count) {
  Impl& im = *impl_;
  if (layer < 0 || layer >= n_layers_ || first < 0 || count <= 0 || first + count > capacity_)
    fail("CUDA expert pool: unmap_slots(layer ", layer, ", ", first, ", ", count, ") out of range");
  // Only mapped slots hold page references (a failed registration may unmap a range
  // that was allocated but never mapped).
  bool driver_ok = true;
  int n_mapped = 0;
  for (int s = first; s < first + count; ++s) n_mapped += im.slot_state[layer][s] == 2;
  for (int m = 0; m < kExpertMats && n_mapped > 0; ++m) {
    Impl::Region& r = im.regions[layer * kExpertMats + m];
    std::vector<PageRun> freed;
    for (int s = first; s < first + count; ++s)
      if (im.slot_state[layer][s] == 2) r.refs.release(im.slot_pages(r, s), &freed);
    for (const PageRun& run : freed)
      for (size_t p = run.first; p < run.first + run.count; ++p) {
        const int h = r.page_handle[p];
        r.page_handle[p] = -1;
        if (--im.handles[h].live_pages == 0) driver_ok &= im.drop_handle(h);
      }
  }
  im.mapped_slots -= n_mapped;
  for (int s = first; s < first + count; ++s) im.slot_state[layer][s] = 0;
  if (!driver_ok) fail("CUDA expert pool: the driver refused to unmap or release pages of layer ", layer);
}

void ExpertPoolCuda::write_slot(int layer, ExpertMat m, int slot, const TensorView& src) {
  if (layer < 0 || layer >= n_layers_ || slot < 0 || slot >= capacity_ || impl_->slot_state[layer][slot] != 2)
    fail("CUDA expert pool: write to unmapped slot ", slot, " of layer ", layer);
  const TensorView dst = slot_view(layer, m, slot);
  if (src.dtype != dtype_ || src.shape != dst.shape)
    fail("CUDA expert pool: slot write of ", dtype_name(src.dtype), " ", shape_str(src.shape), ", expected ",
         dtype_name(dtype_), " ", shape_str(dst.shape));
  // From pageable memory cudaMemcpy may return before the DMA lands, and the legacy
  // stream does not order with the engine's compute stream: wait for it, so the slot is
  // complete before the reroute table can point at it.
  cudaError_t err = cudaMemcpy(const_cast<void*>(dst.data), src.data, dst.nbytes(), cudaMemcpyHostToDevice);
  if (err == cudaSuccess) err = cudaStreamSynchronize(cudaStreamLegacy);
  if (err != cudaSuccess) fail("CUDA expert pool: copy into slot ", slot, " failed: ", cudaGetErrorString(err));
}

ExpertPoolStats ExpertPoolCuda::stats() const {
  const Impl& im = *impl_;
  ExpertPoolStats s;
  for (const Impl::Region& r : im.regions) {
    s.reserved_bytes += r.reserved;
    s.backed_bytes += r.refs.live_pages() * im.page;
  }
  s.used_slots = im.mapped_slots;
  s.expert_bytes = static_cast<size_t>(im.mapped_slots) * mat_bytes(ExpertMat::Gate) * kExpertMats;
  return s;
}

}  // namespace ew
