#include "memory/kv_cache.h"

#include <cstdlib>
#include <cstring>
#include <limits>

#include "util/error.h"

namespace ew {

void KvCache::FreeBytes::operator()(uint8_t* p) const { std::free(p); }

KvCache::KvCache(int n_layers, int64_t width, int block_size, int n_blocks, bool host_storage, DType dtype)
    : n_layers_(n_layers), width_(width), block_size_(block_size), dtype_(dtype), elem_(dtype_size(dtype)),
      total_blocks_(n_blocks), host_storage_(host_storage) {
  if (n_layers <= 0 || width <= 0 || block_size <= 0 || n_blocks < 0)
    fail("KvCache: invalid geometry (", n_layers, " layers, width ", width, ", block size ", block_size, ", ", n_blocks,
         " blocks)");
  if (dtype != DType::F32 && dtype != DType::BF16)
    fail("KvCache: element type ", dtype_name(dtype), " (F32 and BF16 are supported)");
  const uint64_t block_elems = static_cast<uint64_t>(n_layers) * static_cast<uint64_t>(block_size) * width;
  if (n_blocks > 0 && block_elems > (std::numeric_limits<size_t>::max() - 64) / elem_ / n_blocks)
    fail("KvCache: ", n_blocks, " blocks of ", block_elems, " elements do not fit in memory");
  if (host_storage) {
    const size_t bytes = (static_cast<size_t>(block_elems) * n_blocks * elem_ + 63) / 64 * 64;
    data_.reset(static_cast<uint8_t*>(std::aligned_alloc(64, bytes > 0 ? bytes : 64)));
    if (!data_) fail("KvCache: cannot allocate ", bytes, " bytes for ", n_blocks, " blocks");
    std::memset(data_.get(), 0, bytes);
  }
  // A stack whose top is the lowest id: blocks are handed out in ascending order.
  free_list_.reserve(static_cast<size_t>(n_blocks));
  for (int b = n_blocks - 1; b >= 0; --b) free_list_.push_back(b);
}

bool KvCache::reserve(int64_t seq, int64_t new_len) {
  if (new_len < 0) fail("KvCache::reserve: sequence ", seq, ": negative length ", new_len);
  auto it = seqs_.find(seq);
  const size_t have = it == seqs_.end() ? 0 : it->second.blocks.size();
  const int64_t want = (new_len + block_size_ - 1) / block_size_;
  const int64_t need = want - static_cast<int64_t>(have);
  if (need > static_cast<int64_t>(free_list_.size())) return false;
  Seq& s = it == seqs_.end() ? seqs_[seq] : it->second;
  for (int64_t k = 0; k < need; ++k) {
    s.blocks.push_back(free_list_.back());
    free_list_.pop_back();
  }
  return true;
}

void KvCache::free(int64_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  // Returned in reverse so the lowest ids come out first again.
  for (auto b = it->second.blocks.rbegin(); b != it->second.blocks.rend(); ++b) free_list_.push_back(*b);
  seqs_.erase(it);
}

void KvCache::trim(int64_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  std::vector<int32_t>& blocks = it->second.blocks;
  const size_t keep = static_cast<size_t>(blocks_for(it->second.length));
  while (blocks.size() > keep) {
    free_list_.push_back(blocks.back());
    blocks.pop_back();
  }
}

const KvCache::Seq& KvCache::seq_or_fail(int64_t seq, const char* what) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) fail("KvCache::", what, ": unknown sequence ", seq);
  return it->second;
}

int64_t KvCache::length(int64_t seq) const { return seq_or_fail(seq, "length").length; }

void KvCache::set_length(int64_t seq, int64_t len) {
  const Seq& s = seq_or_fail(seq, "set_length");
  const int64_t cap = static_cast<int64_t>(s.blocks.size()) * block_size_;
  if (len < 0 || len > cap)
    fail("KvCache::set_length: sequence ", seq, ": length ", len, " outside its reserved capacity [0, ", cap, "]");
  seqs_[seq].length = len;
}

const std::vector<int32_t>& KvCache::block_table(int64_t seq) const { return seq_or_fail(seq, "block_table").blocks; }

const void* KvCache::entry(int layer, int64_t seq, int64_t pos) const {
  const Seq& s = seq_or_fail(seq, "entry");
  if (layer < 0 || layer >= n_layers_) fail("KvCache::entry: layer ", layer, " out of range [0, ", n_layers_, ")");
  if (!host_storage_) fail("KvCache::entry: this cache keeps its blocks in device memory");
  const int64_t cap = static_cast<int64_t>(s.blocks.size()) * block_size_;
  if (pos < 0 || pos >= cap)
    fail("KvCache::entry: sequence ", seq, ": position ", pos, " outside its reserved capacity [0, ", cap, ")");
  return static_cast<const uint8_t*>(block_layer(s.blocks[pos / block_size_], layer)) +
         static_cast<size_t>(pos % block_size_) * width_ * elem_;
}

void* KvCache::entry(int layer, int64_t seq, int64_t pos) {
  return const_cast<void*>(static_cast<const KvCache*>(this)->entry(layer, seq, pos));
}

KvStats KvCache::stats() const {
  KvStats s;
  s.bytes_per_token_layer = width_ * static_cast<int64_t>(elem_);
  s.block_size = block_size_;
  s.total_blocks = total_blocks_;
  s.free_blocks = static_cast<int>(free_list_.size());
  s.sequences = static_cast<int>(seqs_.size());
  return s;
}

}  // namespace ew
