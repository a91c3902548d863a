// What the native benchmark programs share: a wall clock and the "--batches 1,8,32" list parser.
#pragma once
#include <chrono>
#include <cstdlib>
#include <vector>

namespace ew::bench {

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// "1,8,32" -> {1, 8, 32}.
inline std::vector<int> parse_list(const char* s) {
  std::vector<int> v;
  for (const char* p = s; *p;) {
    v.push_back(std::atoi(p));
    while (*p && *p != ',') ++p;
    if (*p == ',') ++p;
  }
  return v;
}

}  // namespace ew::bench
