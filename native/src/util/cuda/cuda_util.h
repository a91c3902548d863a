// Device utilities of the CUDA backend with a plain C++ interface (no CUDA headers):
// a device probe that never aborts, errors with file/line/call, a stream, device
// buffers and a bump-allocated scratch arena reused across steps.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ew {
namespace cuda {

// True when a CUDA driver and at least one device are usable. Never throws or aborts:
// a missing libcuda, an old driver or no device all answer false. Cached after the first call.
bool device_available();
// "name (sm_XY, N SMs, G GiB)" of the current device; throws when there is none.
std::string device_description();

// Throws ew::Error "CUDA error <name> (<text>) in <call> at <file>:<line>" when code != 0.
void check_status(int code, const char* call, const char* file, int line);
// Checks the last launch error (and with EW_CUDA_SYNC_CHECK defined, synchronises too).
void check_launch(const char* kernel, const char* file, int line);

// A non-blocking stream owned by this object.
class Stream {
 public:
  Stream();
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  void* get() const { return s_; }  // a cudaStream_t
  void sync() const;

 private:
  void* s_ = nullptr;
};

// Owned device memory (cudaMalloc). Moves, never copies.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* data() const { return p_; }
  template <typename T>
  T* as() const { return static_cast<T*>(p_); }
  size_t bytes() const { return n_; }
  // Blocking, on the legacy default stream; done when they return, so kernels on any stream
  // launched afterwards see the data. download does not wait for other streams: synchronise
  // the stream that wrote the buffer first.
  void upload(const void* host, size_t bytes, size_t offset = 0);
  void download(void* host, size_t bytes, size_t offset = 0) const;
  void fill_bytes(uint8_t value);  // e.g. 0xFF: every fp32 element becomes NaN

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

// Scratch for the intermediates of one step: take() bumps a pointer (256-byte aligned),
// reset() starts over. Grows (reallocating) only when reset() finds the last step needed
// more than it held, so steady-state steps never call cudaMalloc.
class Scratch {
 public:
  void* take(size_t bytes);
  template <typename T>
  T* take_n(size_t n) { return static_cast<T*>(take(n * sizeof(T))); }
  void reset();  // call between steps, after the stream finished using the memory
  size_t capacity() const { return buf_.bytes(); }
  const void* base() const { return buf_.data(); }  // changes when reset() grows the arena

 private:
  DeviceBuffer buf_;
  size_t used_ = 0, wanted_ = 0;
  std::vector<DeviceBuffer> overflow_;  // allocations past capacity within one step
};

}  // namespace cuda
}  // namespace ew

#define EW_CUDA_CHECK(call) ::ew::cuda::check_status(static_cast<int>(call), #call, __FILE__, __LINE__)
#define EW_CUDA_CHECK_LAUNCH(name) ::ew::cuda::check_launch(name, __FILE__, __LINE__)
