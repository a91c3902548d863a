#include "memory/cuda/device_arena.h"

#include <cuda_runtime_api.h>

#include "util/error.h"

namespace ew {
namespace {

class DeviceArenaMemory final : public ArenaMemory {
 public:
  void* allocate(size_t bytes) override {
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();
      fail("scratch arena: cudaMalloc of ", bytes, " bytes failed: ", cudaGetErrorString(e));
    }
    return p;
  }
  // cudaFree waits for work still using the memory.
  void release(void* p) override { cudaFree(p); }
};

}  // namespace

std::unique_ptr<ArenaMemory> device_arena_memory() { return std::make_unique<DeviceArenaMemory>(); }

}  // namespace ew
