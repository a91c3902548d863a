// HugePageCopies: each copy holds its source's bytes, one copy per source, and the
// sources are left as they were.
#include "memory/huge_page_copies.h"

#include <cstring>
#include <vector>

#include "test.h"

using namespace ew;

namespace {

std::string pattern(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 2654435761u + seed) >> 13);
  return s;
}

}  // namespace

TEST(huge_page_copies_hold_the_source_bytes_once_per_source) {
  HugePageCopies c;
  // Sizes around page and region boundaries, and one larger than a 64 MB region.
  const std::vector<size_t> sizes = {1, 63, 4096, 4097, (size_t{64} << 20) - 100, 3 << 20, (size_t{65} << 20) + 7};
  std::vector<std::string> src;
  std::vector<const void*> dst;
  for (size_t i = 0; i < sizes.size(); ++i) src.push_back(pattern(sizes[i], static_cast<uint32_t>(i)));
  for (const std::string& s : src) dst.push_back(c.copy(s.data(), s.size()));
  for (size_t i = 0; i < src.size(); ++i) {
    CHECK(dst[i] != src[i].data());
    CHECK_EQ(std::memcmp(dst[i], src[i].data(), src[i].size()), 0);
    CHECK_EQ(reinterpret_cast<uintptr_t>(dst[i]) % 64, uintptr_t{0});
    CHECK(c.copy(src[i].data(), src[i].size()) == dst[i]);  // the same source: the same copy
  }
  size_t total = 0;
  for (size_t n : sizes) total += n;
  CHECK_EQ(c.bytes_copied(), total);
  // The sources keep their bytes.
  for (size_t i = 0; i < src.size(); ++i) CHECK(src[i] == pattern(sizes[i], static_cast<uint32_t>(i)));
  CHECK(c.copy(nullptr, 0) == nullptr);
}
