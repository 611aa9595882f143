// A tiny self-contained test harness for the C++ tests under CTest (no gtest: no downloads).
//
//   FASTCL_CHECK(cond) << "context";        // records a failure with file:line and context
//   FASTCL_CHECK_CLOSE(got, want, rtol, atol) << "context";
//   return fastcl_test::report("name");     // prints a summary; exit code 1 on any failure
//
// A check does not abort the test: every failure is printed (the first 50 in full).
#pragma once

#include <cmath>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>

namespace fastcl_test {

inline int& failures() {
  static int n = 0;
  return n;
}
inline int& checks() {
  static int n = 0;
  return n;
}

// Collects the context streamed after a failed check and prints it when destroyed.
class Failure {
 public:
  Failure(const char* file, int line, const std::string& what) {
    ++failures();
    if (failures() <= 50) os_ << file << ":" << line << ": FAILED " << what;
  }
  ~Failure() {
    if (failures() <= 50) std::cerr << os_.str() << std::endl;
  }
  template <typename T>
  Failure& operator<<(const T& v) {
    if (failures() <= 50) os_ << " " << v;
    return *this;
  }

 private:
  std::ostringstream os_;
};

// Equal within atol + rtol*|want|; nan equals nan, inf equals inf of the same sign.
inline bool close(double got, double want, double rtol, double atol) {
  if (std::isnan(want) || std::isnan(got)) return std::isnan(want) && std::isnan(got);
  if (std::isinf(want) || std::isinf(got)) return got == want;
  return std::fabs(got - want) <= atol + rtol * std::fabs(want);
}

inline std::string describe_close(double got, double want) {
  std::ostringstream os;
  os.precision(17);
  os << "got " << got << ", want " << want;
  return os.str();
}

inline int report(const char* name) {
  if (failures() == 0) {
    std::printf("%s: all %d checks passed\n", name, checks());
    return 0;
  }
  std::printf("%s: %d of %d checks FAILED\n", name, failures(), checks());
  return 1;
}

}  // namespace fastcl_test

// switch (0) case 0: default: keeps an outer if/else unambiguous (as gtest does).
#define FASTCL_CHECK(cond)                                   \
  switch (0)                                                 \
  case 0:                                                    \
  default:                                                   \
    if ((++::fastcl_test::checks(), (cond)))                   \
    {                                                        \
    }                                                        \
  else                                                       \
    ::fastcl_test::Failure(__FILE__, __LINE__, "CHECK(" #cond ")")

#define FASTCL_CHECK_CLOSE(got, want, rtol, atol)                                               \
  switch (0)                                                                                    \
  case 0:                                                                                       \
  default:                                                                                      \
    if ((++::fastcl_test::checks(),                                                              \
       ::fastcl_test::close(static_cast<double>(got), static_cast<double>(want), rtol, atol)))  \
    {                                                                                           \
    }                                                                                           \
  else                                                                                          \
    ::fastcl_test::Failure(__FILE__, __LINE__,                                                  \
                           std::string("CHECK_CLOSE(" #got ", " #want "): ") +                  \
                               ::fastcl_test::describe_close(static_cast<double>(got),          \
                                                             static_cast<double>(want)))
