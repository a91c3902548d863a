#include <cuda_runtime.h>

#include <sstream>

#include "util/cuda/cuda_util.h"
#include "util/error.h"

namespace ew {
namespace cuda {

bool device_available() {
  static const bool ok = [] {
    int n = 0;
    // With the static runtime, a missing libcuda.so shows up here as an error code.
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
      cudaGetLastError();  // clear it so later calls do not report it
      return false;
    }
    return n > 0;
  }();
  return ok;
}

std::string device_description() {
  if (!device_available()) fail("CUDA: no device available");
  int dev = 0;
  EW_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp p{};
  EW_CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
  std::ostringstream os;
  os << p.name << " (sm_" << p.major << p.minor << ", " << p.multiProcessorCount << " SMs, "
     << (p.totalGlobalMem >> 30) << " GiB)";
  return os.str();
}

void check_status(int code, const char* call, const char* file, int line) {
  if (code == 0) return;
  const auto e = static_cast<cudaError_t>(code);
  fail("CUDA error ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ") in ", call, " at ", file, ":", line);
}

void check_launch(const char* kernel, const char* file, int line) {
  cudaError_t e = cudaGetLastError();
#ifdef EW_CUDA_SYNC_CHECK
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
#endif
  if (e != cudaSuccess)
    fail("CUDA kernel ", kernel, " failed: ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ") at ", file, ":",
         line);
}

Stream::Stream() {
  cudaStream_t s = nullptr;
  EW_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  s_ = s;
}
Stream::~Stream() {
  if (s_) cudaStreamDestroy(static_cast<cudaStream_t>(s_));
}
void Stream::sync() const { EW_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(s_))); }

DeviceBuffer::DeviceBuffer(size_t bytes) : n_(bytes) {
  if (bytes) EW_CUDA_CHECK(cudaMalloc(&p_, bytes));
}
DeviceBuffer::~DeviceBuffer() {
  if (p_) cudaFree(p_);
}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (p_) cudaFree(p_);
    p_ = o.p_, n_ = o.n_;
    o.p_ = nullptr, o.n_ = 0;
  }
  return *this;
}
// upload and fill_bytes run on the legacy default stream, which does not order with the
// non-blocking streams the kernels use, and cudaMemcpy from pageable memory (like cudaMemset)
// may return before the data has landed: wait for it, so any stream sees it afterwards.
void DeviceBuffer::upload(const void* host, size_t bytes, size_t offset) {
  if (offset + bytes > n_) fail("DeviceBuffer::upload: ", bytes, " bytes at ", offset, " past ", n_);
  EW_CUDA_CHECK(cudaMemcpy(static_cast<char*>(p_) + offset, host, bytes, cudaMemcpyHostToDevice));
  EW_CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
}
void DeviceBuffer::download(void* host, size_t bytes, size_t offset) const {
  if (offset + bytes > n_) fail("DeviceBuffer::download: ", bytes, " bytes at ", offset, " past ", n_);
  EW_CUDA_CHECK(cudaMemcpy(host, static_cast<const char*>(p_) + offset, bytes, cudaMemcpyDeviceToHost));
}

void DeviceBuffer::fill_bytes(uint8_t value) {
  if (!n_) return;
  EW_CUDA_CHECK(cudaMemset(p_, value, n_));
  EW_CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
}

void* Scratch::take(size_t bytes) {
  const size_t aligned = (bytes + 255) & ~size_t(255);
  wanted_ += aligned;
  if (used_ + aligned <= buf_.bytes()) {
    void* p = static_cast<char*>(buf_.data()) + used_;
    used_ += aligned;
    return p;
  }
  overflow_.emplace_back(aligned);
  return overflow_.back().data();
}

void Scratch::reset() {
  overflow_.clear();
  if (wanted_ > buf_.bytes()) {
    buf_ = DeviceBuffer();  // free first: the grown buffer may need the memory
    buf_ = DeviceBuffer(wanted_ + wanted_ / 4);
  }
  used_ = wanted_ = 0;
}

}  // namespace cuda
}  // namespace ew
