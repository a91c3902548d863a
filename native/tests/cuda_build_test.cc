// Whether this run has the CUDA backend to test at all: compiled in every build, so a run
// without a CUDA build or device reports a skip here (and EW_REQUIRE_CUDA=1 a failure),
// whatever the CUDA test files (compiled only with CUDA) do.
#include <string>

#include "cuda_fixtures.h"
#include "test.h"

TEST(cuda_backend_built_and_device_present) {
  ewtest::need_cuda_device();
#ifdef EW_WITH_CUDA
  CHECK(ew::cuda::device_description().find("sm_") != std::string::npos);
#endif
}
