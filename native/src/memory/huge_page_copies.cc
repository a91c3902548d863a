#include "memory/huge_page_copies.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "util/error.h"

namespace ew {
namespace {

constexpr size_t kHuge = size_t{2} << 20, kRegion = size_t{64} << 20, kAlign = 64;

size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

}  // namespace

HugePageCopies::~HugePageCopies() {
  for (const Region& r : regions_) ::munmap(r.base, r.size);
}

const void* HugePageCopies::copy(const void* data, size_t bytes) {
  if (!data || bytes == 0) return data;
  if (auto it = by_source_.find(data); it != by_source_.end()) return it->second;
  // Tensors laid end to end in 64 MB regions (a larger tensor gets its own); only the
  // touched part of a region is ever backed.
  if (regions_.empty() || regions_.back().size - regions_.back().used < bytes) {
    const size_t size = round_up(std::max(bytes, kRegion), kHuge);
    void* p = ::mmap(nullptr, size + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) fail("cannot map ", size, " bytes for the CPU's weight copies: ", std::strerror(errno));
    // A 2 MB-aligned start, so the first tensor's pages can be huge too.
    uint8_t* raw = static_cast<uint8_t*>(p);
    uint8_t* base = reinterpret_cast<uint8_t*>(round_up(reinterpret_cast<uintptr_t>(raw), kHuge));
    if (base > raw) ::munmap(raw, static_cast<size_t>(base - raw));
    ::munmap(base + size, kHuge - static_cast<size_t>(base - raw));
    ::madvise(base, size, MADV_HUGEPAGE);  // best effort: without THP the copy still works
    regions_.push_back({base, size, 0});
  }
  Region& r = regions_.back();
  uint8_t* dst = r.base + r.used;
  std::memcpy(dst, data, bytes);
  r.used = round_up(r.used + bytes, kAlign);
  copied_ += bytes;
  by_source_.emplace(data, dst);
  return dst;
}

}  // namespace ew
