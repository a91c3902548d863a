// HugePageCopies: the CPU runner's own copy of the checkpoint's dense tensors, in anonymous
// memory on transparent huge pages, instead of the file mapping's 4 KB page-cache pages.
// A decode step streams every dense matrix once; on the Xeon with AMX the lm_head GEMV
// (4 KB rows: one page per row) read 24 GB/s from the mapping and 28 from huge pages, 46%
// of a V2-Lite-width step. After each copy the file mapping's pages of the source are
// dropped from this process (MADV_DONTNEED; the kernel's page cache keeps them only as
// reclaimable cache), so the weights stay one copy in the process's memory.
#pragma once
#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace ew {

class HugePageCopies {
 public:
  HugePageCopies() = default;
  ~HugePageCopies();
  HugePageCopies(const HugePageCopies&) = delete;
  HugePageCopies& operator=(const HugePageCopies&) = delete;

  // The copy of [data, data + bytes), made on the first call for that source address (a
  // tied lm_head and embedding share one). from_file_mapping: the source lies in a private
  // read-only file mapping, whose pages are then dropped (they fault back in from the file
  // should anything read them again); never for other memory, which that would zero.
  // Throws ew::Error when the memory is refused.
  const void* copy(const void* data, size_t bytes, bool from_file_mapping);
  size_t bytes_copied() const { return copied_; }

 private:
  struct Region {
    uint8_t* base;
    size_t size, used;
  };
  std::vector<Region> regions_;
  std::unordered_map<const void*, const void*> by_source_;
  size_t copied_ = 0;
};

}  // namespace ew
