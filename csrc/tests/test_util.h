// Shared helpers of the C++ unit tests: a failure counter, a non-fatal EXPECT that prints where and why, and the
// relative L2 error ||a - b|| / ||b|| every kernel test reports against its naive double-precision reference.
#pragma once

#include <cmath>
#include <cstdio>
#include <vector>

inline int g_failures = 0;

#define EXPECT(cond, ...)                                         \
  do {                                                            \
    if (!(cond)) {                                                \
      std::printf("FAIL %s:%d: %s — ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                                   \
      std::printf("\n");                                          \
      ++g_failures;                                               \
    }                                                             \
  } while (0)

inline double rel_err(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / (den > 0 ? den : 1));
}
