// One error type for the whole core: a message that says what failed and where.
// The addon turns it into a JS Error; C++ tests match on its text.
#pragma once
#include <stdexcept>
#include <string>

namespace ew {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// Concatenates its arguments into a string / an ew::Error message.
template <typename... Args>
std::string concat(const Args&... args);
template <typename... Args>
[[noreturn]] void fail(const Args&... args);

}  // namespace ew

#include <sstream>
namespace ew {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(concat(args...));
}
}  // namespace ew
