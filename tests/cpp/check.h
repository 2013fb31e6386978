// A minimal test harness for the C++ tests (no external test framework needed): CHECK records a failure and goes
// on; finish() prints "N passed, N failed" and returns the process exit code.
#pragma once

#include <cmath>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

namespace capxai_test {

struct Registry {
  int passed = 0;
  int failed = 0;
};

inline Registry& registry() {
  static Registry instance;
  return instance;
}

inline void check(bool condition, const std::string& what) {
  if (condition) {
    ++registry().passed;
  } else {
    ++registry().failed;
    std::cerr << "FAILED: " << what << "\n";
  }
}

inline void check_close(double actual, double expected, double tolerance, const std::string& what) {
  check(std::abs(actual - expected) <= tolerance * std::max(1.0, std::abs(expected)),
        what + ": got " + std::to_string(actual) + ", expected " + std::to_string(expected));
}

// Runs `body` and checks that it throws a c10::Error whose message contains `needle`.
template <typename Body>
void check_throws(Body body, const std::string& needle, const std::string& what) {
  try {
    body();
    check(false, what + ": no exception");
  } catch (const std::exception& error) {
    const std::string message = error.what();
    check(message.find(needle) != std::string::npos, what + ": message lacks '" + needle + "': " + message);
  }
}

inline int finish() {
  std::cout << registry().passed << " passed, " << registry().failed << " failed\n";
  return registry().failed == 0 ? 0 : 1;
}

}  // namespace capxai_test
