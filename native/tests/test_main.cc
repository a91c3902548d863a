#include <cstdio>
#include <cstring>
#include <exception>

#include "test.h"

namespace ewtest {
std::vector<Case>& registry() {
  static std::vector<Case> r;
  return r;
}
}  // namespace ewtest

int main(int argc, char** argv) {
  const char* filter = argc > 1 ? argv[1] : nullptr;
  int passed = 0, failed = 0, skipped = 0;
  for (auto& c : ewtest::registry()) {
    if (filter && !std::strstr(c.name, filter)) continue;
    try {
      c.fn();
      ++passed;
      std::printf("ok   %s\n", c.name);
    } catch (const ewtest::Skipped& e) {
      ++skipped;
      std::printf("skip %s\n     %s\n", c.name, e.what());
    } catch (const std::exception& e) {
      ++failed;
      std::printf("FAIL %s\n     %s\n", c.name, e.what());
    }
    std::fflush(stdout);
  }
  std::printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
  return failed == 0 ? 0 : 1;
}
