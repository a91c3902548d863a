// KvCache: the KV cache in fixed-size blocks from one pool, for any attention: per token
// per layer it stores `width` elements (ModelConfig::kv_cache_width): MLA's latent (the
// normed c_kv, kv_lora_rank, then the rotated k_pe, qk_rope_head_dim) or GQA's keys then
// values (2 * kv_heads * head_dim). The element type is a parameter of the cache, not of
// its users: F32, or BF16 (half the bytes per token; written rounded to nearest even, read
// back into fp32 arithmetic).
// Sequences own lists of blocks (a block table), so sequences of any length share the pool.
// Without host storage the object only keeps the block tables and lengths: the CUDA
// engine keeps the blocks themselves in device memory with the same layout.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "util/tensor.h"

namespace ew {

struct KvStats {
  int64_t bytes_per_token_layer = 0;  // one token's entry in one layer
  int block_size = 0;
  int total_blocks = 0;
  int free_blocks = 0;
  int sequences = 0;
};

class KvCache {
 public:
  // dtype: F32 or BF16.
  KvCache(int n_layers, int64_t width, int block_size, int n_blocks, bool host_storage = true,
          DType dtype = DType::F32);

  // Makes room for `new_len` tokens of sequence `seq` (creating it if new).
  // Returns false, changing nothing, when the pool has too few free blocks.
  bool reserve(int64_t seq, int64_t new_len);
  // Drops a sequence and returns its blocks at once. Unknown ids are ignored.
  void free(int64_t seq);
  // Returns the blocks a sequence holds beyond its length (undoes a reserve whose
  // step failed). Unknown ids are ignored.
  void trim(int64_t seq);
  bool has(int64_t seq) const { return seqs_.count(seq) != 0; }
  // Tokens whose entries are written (the next position to fill).
  int64_t length(int64_t seq) const;
  void set_length(int64_t seq, int64_t len);
  // Entry of one token of one layer: width() elements of dtype(). Throws for an unknown
  // sequence, a bad layer, pos outside [0, reserved capacity), or a cache without host storage.
  void* entry(int layer, int64_t seq, int64_t pos);
  const void* entry(int layer, int64_t seq, int64_t pos) const;

  // Unchecked block access for kernels that walk a whole sequence: token p of `seq` in
  // layer l starts (p % block_size()) * width() elements after
  // block_layer(block_table(seq)[p / block_size()], l).
  const std::vector<int32_t>& block_table(int64_t seq) const;  // throws for an unknown sequence
  void* block_layer(int32_t block, int layer) {
    return data_.get() + (static_cast<size_t>(block) * n_layers_ + layer) * block_size_ * width_ * elem_;
  }
  const void* block_layer(int32_t block, int layer) const {
    return data_.get() + (static_cast<size_t>(block) * n_layers_ + layer) * block_size_ * width_ * elem_;
  }

  bool has_host_storage() const { return host_storage_; }
  DType dtype() const { return dtype_; }
  // Bytes one token takes over all layers.
  size_t bytes_per_token() const { return static_cast<size_t>(n_layers_) * width_ * elem_; }
  int n_layers() const { return n_layers_; }
  int total_blocks() const { return total_blocks_; }
  int64_t width() const { return width_; }
  int block_size() const { return block_size_; }
  KvStats stats() const;
  // Blocks needed to hold n tokens.
  int blocks_for(int64_t n) const { return static_cast<int>((n + block_size_ - 1) / block_size_); }

 private:
  struct Seq {
    std::vector<int32_t> blocks;
    int64_t length = 0;
  };
  const Seq& seq_or_fail(int64_t seq, const char* what) const;

  struct FreeBytes {
    void operator()(uint8_t* p) const;
  };
  int n_layers_;
  int64_t width_;
  int block_size_;
  DType dtype_;
  size_t elem_;                              // bytes per element
  std::unique_ptr<uint8_t[], FreeBytes> data_;  // [n_blocks][n_layers][block_size][width], 64-byte aligned
  std::vector<int32_t> free_list_;
  std::unordered_map<int64_t, Seq> seqs_;
  int total_blocks_;
  bool host_storage_;
};

}  // namespace ew
