// HugePageCopies: the CPU runner's own copy of the checkpoint's dense tensors, in anonymous
// memory on transparent huge pages, instead of the file mapping's 4 KB page-cache pages.
// A decode step streams every dense matrix once; on the Xeon with AMX the lm_head GEMV
// (4 KB rows: one page per row) read 24 GB/s from the mapping and 28 from huge pages, 46%
// of a V2-Lite-width step. The caller drops the source's file pages afterwards
// (TensorStore::release_pages), so the weights stay one copy in the process's memory.
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
  // tied lm_head and embedding share one). Throws ew::Error when the memory is refused.
  const void* copy(const void* data, size_t bytes);
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
