#include "memory/page_refcount.h"

#include "util/error.h"

namespace ew {
namespace {
void append_page(std::vector<PageRun>* runs, size_t page) {
  if (!runs->empty() && runs->back().first + runs->back().count == page) {
    ++runs->back().count;
  } else {
    runs->push_back({page, 1});
  }
}
void check_run(PageRun run, size_t n) {
  if (run.first > n || run.count > n - run.first)
    fail("page run [", run.first, ", ", run.first + run.count, ") outside the ", n, " reserved pages");
}
}  // namespace

void PageRefCounts::acquire(PageRun run, std::vector<PageRun>* became_live) {
  check_run(run, refs_.size());
  for (size_t p = run.first; p < run.first + run.count; ++p)
    if (refs_[p]++ == 0) {
      ++live_;
      append_page(became_live, p);
    }
}

void PageRefCounts::release(PageRun run, std::vector<PageRun>* became_free) {
  check_run(run, refs_.size());
  for (size_t p = run.first; p < run.first + run.count; ++p)
    if (refs_[p] <= 0) fail("page ", p, " released more often than acquired");
  for (size_t p = run.first; p < run.first + run.count; ++p)
    if (--refs_[p] == 0) {
      --live_;
      append_page(became_free, p);
    }
}

}  // namespace ew
