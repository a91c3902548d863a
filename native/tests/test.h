// Minimal C++ test harness: TEST(name) { CHECK(...); } in any native/tests/*.cc.
// ew_native_tests [filter] runs every test whose name contains filter and prints
// "N passed, N failed, N skipped" as its last line. SKIP(reason) ends a test as skipped
// (reported as such, never as a pass); it exits 1 only on failures.
#pragma once
#include <cmath>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ewtest {

struct Case {
  const char* name;
  std::function<void()> fn;
};
std::vector<Case>& registry();

struct Register {
  Register(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct Skipped : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void fail_at(const char* file, int line, const std::string& what) {
  std::ostringstream os;
  os << file << ":" << line << ": " << what;
  throw Failure(os.str());
}

}  // namespace ewtest

#define EW_CAT2(a, b) a##b
#define EW_CAT(a, b) EW_CAT2(a, b)
#define TEST(name)                                                          \
  static void EW_CAT(test_fn_, name)();                                     \
  static ::ewtest::Register EW_CAT(test_reg_, name)(#name, EW_CAT(test_fn_, name)); \
  static void EW_CAT(test_fn_, name)()

#define SKIP(reason) throw ::ewtest::Skipped(reason)

#define CHECK(cond)                                                         \
  do {                                                                      \
    if (!(cond)) ::ewtest::fail_at(__FILE__, __LINE__, "CHECK(" #cond ") failed"); \
  } while (0)

#define CHECK_EQ(a, b)                                                      \
  do {                                                                      \
    auto ew_a_ = (a);                                                       \
    auto ew_b_ = (b);                                                       \
    if (!(ew_a_ == ew_b_)) {                                                \
      std::ostringstream ew_os_;                                            \
      ew_os_ << "CHECK_EQ(" #a ", " #b ") failed: " << ew_a_ << " vs " << ew_b_; \
      ::ewtest::fail_at(__FILE__, __LINE__, ew_os_.str());                  \
    }                                                                       \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                               \
  do {                                                                      \
    double ew_a_ = (a), ew_b_ = (b);                                        \
    if (!(std::fabs(ew_a_ - ew_b_) <= (tol))) {                             \
      std::ostringstream ew_os_;                                            \
      ew_os_ << "CHECK_NEAR(" #a ", " #b ") failed: " << ew_a_ << " vs " << ew_b_ << " tol " << (tol); \
      ::ewtest::fail_at(__FILE__, __LINE__, ew_os_.str());                  \
    }                                                                       \
  } while (0)

// Expects `stmt` to throw ew::Error (or any std::exception) whose message contains `needle`.
#define CHECK_THROWS_WITH(stmt, needle)                                     \
  do {                                                                      \
    bool ew_threw_ = false;                                                 \
    try {                                                                   \
      stmt;                                                                 \
    } catch (const ::ewtest::Failure&) {                                    \
      throw;                                                                \
    } catch (const std::exception& ew_e_) {                                 \
      ew_threw_ = true;                                                     \
      if (std::string(ew_e_.what()).find(needle) == std::string::npos)     \
        ::ewtest::fail_at(__FILE__, __LINE__,                               \
                          std::string("error message lacks '") + (needle) + "': " + ew_e_.what()); \
    }                                                                       \
    if (!ew_threw_) ::ewtest::fail_at(__FILE__, __LINE__, "expected an error from " #stmt); \
  } while (0)
