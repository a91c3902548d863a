// KvCache: the KV cache in fixed-size blocks from one pool, for any attention: per token
// per layer it stores `width` floats (ModelConfig::kv_cache_width): MLA's latent (the
// normed c_kv, kv_lora_rank, then the rotated k_pe, qk_rope_head_dim) or GQA's keys then
// values (2 * kv_heads * head_dim).
// Sequences own lists of blocks (a block table), so sequences of any length share the pool.
// Without host storage the object only keeps the block tables and lengths: the CUDA
// engine keeps the blocks themselves in device memory with the same layout.
#pragma once
#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

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
  KvCache(int n_layers, int64_t width, int block_size, int n_blocks, bool host_storage = true);

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
  // Entry of one token of one layer: width() floats. Throws for an unknown sequence,
  // a bad layer, pos outside [0, reserved capacity), or a cache without host storage.
  float* entry(int layer, int64_t seq, int64_t pos);
  const float* entry(int layer, int64_t seq, int64_t pos) const;

  // Unchecked block access for kernels that walk a whole sequence: token p of `seq`
  // in layer l is block_layer(block_table(seq)[p / block_size()], l) + (p % block_size()) * width().
  const std::vector<int32_t>& block_table(int64_t seq) const;  // throws for an unknown sequence
  float* block_layer(int32_t block, int layer) {
    return data_.data() + (static_cast<size_t>(block) * n_layers_ + layer) * block_size_ * width_;
  }
  const float* block_layer(int32_t block, int layer) const {
    return data_.data() + (static_cast<size_t>(block) * n_layers_ + layer) * block_size_ * width_;
  }

  bool has_host_storage() const { return host_storage_; }
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

  int n_layers_;
  int64_t width_;
  int block_size_;
  std::vector<float> data_;  // [n_blocks][n_layers][block_size][width]
  std::vector<int32_t> free_list_;
  std::unordered_map<int64_t, Seq> seqs_;
  int total_blocks_;
  bool host_storage_;
};

}  // namespace ew
