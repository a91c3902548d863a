// For the CUDA tests: a device is required (EW_REQUIRE_CUDA=1: a GPU host, where a missing
// device, a missing CUDA build or a probe that answers wrong must fail the run) or its
// absence skips the test.
#pragma once
#include <cstdlib>
#include <cstring>

#include "test.h"
#ifdef EW_WITH_CUDA
#include "util/cuda/cuda_util.h"
#endif

namespace ewtest {

inline bool cuda_required() {
  const char* v = std::getenv("EW_REQUIRE_CUDA");
  return v && std::strcmp(v, "1") == 0;
}

// Returns when a CUDA device is usable; otherwise skips the test, or fails it under EW_REQUIRE_CUDA=1.
inline void need_cuda_device() {
#ifdef EW_WITH_CUDA
  if (ew::cuda::device_available()) return;
  if (cuda_required()) throw Failure("EW_REQUIRE_CUDA=1 but no CUDA device is available");
  SKIP("no CUDA device");
#else
  if (cuda_required()) throw Failure("EW_REQUIRE_CUDA=1 but this build has no CUDA backend (no nvcc at build time)");
  SKIP("this build has no CUDA backend");
#endif
}

}  // namespace ewtest
