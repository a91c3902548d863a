// HugePageCopies: each copy holds its source's bytes, one copy per source, and dropping a
// file mapping's pages loses nothing (they come back from the file); other memory is
// never touched.
#include "memory/huge_page_copies.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "st_writer.h"
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
  for (const std::string& s : src) dst.push_back(c.copy(s.data(), s.size(), false));
  for (size_t i = 0; i < src.size(); ++i) {
    CHECK(dst[i] != src[i].data());
    CHECK_EQ(std::memcmp(dst[i], src[i].data(), src[i].size()), 0);
    CHECK_EQ(reinterpret_cast<uintptr_t>(dst[i]) % 64, uintptr_t{0});
    CHECK(c.copy(src[i].data(), src[i].size(), false) == dst[i]);  // the same source: the same copy
  }
  size_t total = 0;
  for (size_t n : sizes) total += n;
  CHECK_EQ(c.bytes_copied(), total);
  // Heap sources (not a file mapping) keep their bytes.
  for (size_t i = 0; i < src.size(); ++i) CHECK(src[i] == pattern(sizes[i], static_cast<uint32_t>(i)));
  CHECK(c.copy(nullptr, 0, false) == nullptr);
}

TEST(huge_page_copies_drop_a_file_mappings_pages_without_losing_them) {
  ewtest::st::TempDir dir("hpc");
  const std::string bytes = pattern(5 << 20, 7);
  ewtest::st::write_bytes(dir.file("w.bin"), bytes);
  const int fd = ::open(dir.file("w.bin").c_str(), O_RDONLY);
  CHECK(fd >= 0);
  void* map = ::mmap(nullptr, bytes.size(), PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  CHECK(map != MAP_FAILED);
  const char* m = static_cast<const char*>(map);
  HugePageCopies c;
  // A tensor starting mid-page: only its whole pages are dropped, the neighbours' bytes stay.
  const size_t off = 1000, n = (3 << 20) + 123;
  const void* copy = c.copy(m + off, n, true);
  CHECK_EQ(std::memcmp(copy, bytes.data() + off, n), 0);
  CHECK_EQ(std::memcmp(m, bytes.data(), bytes.size()), 0);  // the mapping reads the file again
  ::munmap(map, bytes.size());
}
