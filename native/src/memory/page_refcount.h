// Reference counts of the pages of one reserved range, shared by the CPU and CUDA
// expert pools. A slot covers a run of pages; neighbouring slots whose sizes are not
// page multiples share their boundary page, so a page is backed when the first slot
// touching it is mapped and released when the last one goes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace ew {

// A run of pages [first, first + count).
struct PageRun {
  size_t first = 0;
  size_t count = 0;
};

class PageRefCounts {
 public:
  explicit PageRefCounts(size_t n_pages) : refs_(n_pages, 0) {}

  size_t n_pages() const { return refs_.size(); }
  int32_t refs(size_t page) const { return refs_.at(page); }
  size_t live_pages() const { return live_; }

  // Pages covering bytes [begin, end) of the range (end > begin).
  static PageRun pages_of(size_t begin, size_t end, size_t page_size) {
    return {begin / page_size, (end + page_size - 1) / page_size - begin / page_size};
  }

  // One more user of each page of `run`. Pages that go from 0 to 1 user are appended
  // to `became_live`, merged with its last run when adjacent.
  void acquire(PageRun run, std::vector<PageRun>* became_live);
  // One user less of each page of `run` (every page must be in use). Pages that
  // drop to 0 users are appended to `became_free`, merged when adjacent.
  void release(PageRun run, std::vector<PageRun>* became_free);

 private:
  std::vector<int32_t> refs_;
  size_t live_ = 0;
};

}  // namespace ew
