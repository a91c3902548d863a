// safetensors files read through mmap: one file or a sharded set with
// model.safetensors.index.json. Headers and every tensor's byte range are
// validated before anything is read; bad files throw ew::Error, never crash.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "util/tensor.h"

namespace ew {

// One mmap'd .safetensors file.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);  // throws on open/parse/validation errors
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  const TensorView& get(const std::string& name) const;  // throws naming file and tensor
  std::vector<std::string> names() const;
  // Whether p points into this file's mapping.
  bool maps(const void* p) const {
    const auto* b = static_cast<const char*>(map_);
    return b && static_cast<const char*>(p) >= b && static_cast<const char*>(p) < b + map_size_;
  }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorView> tensors_;
};

// All tensors of a model or adapter directory: either model.safetensors.index.json
// (weight_map name -> shard) or every *.safetensors file in the directory.
class TensorStore {
 public:
  static std::unique_ptr<TensorStore> open_dir(const std::string& dir);
  static std::unique_ptr<TensorStore> open_file(const std::string& path);

  bool has(const std::string& name) const;
  // Throws "missing tensor NAME in DIR" when absent.
  const TensorView& get(const std::string& name) const;
  // get() plus a check of dtype class and exact shape; the error names tensor, expected and found shape.
  const TensorView& get_checked(const std::string& name, const std::vector<int64_t>& shape) const;
  std::vector<std::string> names() const;
  // Path of the file holding a tensor (throws like get() when absent).
  const std::string& file_of(const std::string& name) const;
  const std::string& origin() const { return origin_; }
  // Whether p points into one of the files' mappings.
  bool maps(const void* p) const;
  // Drops the whole pages of [data, data + bytes) from this process when they lie in a
  // file mapping (read-only and private: they fault back in from the file if read again),
  // once their bytes live elsewhere (the expert pool, the CPU runner's copies), so the
  // process holds the weights once. Other memory is left alone.
  void release_pages(const void* data, size_t bytes) const;

 private:
  std::string origin_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*> index_;
};

}  // namespace ew
