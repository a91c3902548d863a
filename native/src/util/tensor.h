// Element types as stored in safetensors, and a non-owning view of a stored tensor.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ew {

enum class DType : uint8_t { F32 = 0, F16 = 1, BF16 = 2 };

inline size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }
const char* dtype_name(DType t);

// A tensor whose bytes live elsewhere (an mmap'd file or the expert pool).
// Row-major; linear weights are [out, in] as in PyTorch.
struct TensorView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  int64_t dim(size_t i) const { return shape.at(i); }
};

std::string shape_str(const std::vector<int64_t>& shape);

}  // namespace ew
