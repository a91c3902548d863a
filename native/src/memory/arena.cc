#include "memory/arena.h"

#include <algorithm>
#include <cstdlib>

#include "util/error.h"

namespace ew {
namespace {

constexpr size_t kAlign = 256;

size_t align_up(size_t n) { return (n + kAlign - 1) & ~(kAlign - 1); }

class HostArenaMemory final : public ArenaMemory {
 public:
  void* allocate(size_t bytes) override {
    void* p = std::aligned_alloc(kAlign, align_up(bytes));
    if (!p) fail("scratch arena: could not allocate ", bytes, " bytes of host memory");
    return p;
  }
  void release(void* p) override { std::free(p); }
};

}  // namespace

std::unique_ptr<ArenaMemory> host_arena_memory() { return std::make_unique<HostArenaMemory>(); }

Arena::Arena(std::unique_ptr<ArenaMemory> memory, size_t first_chunk_bytes)
    : memory_(std::move(memory)), first_chunk_bytes_(align_up(first_chunk_bytes ? first_chunk_bytes : kAlign)) {}

Arena::~Arena() {
  for (Chunk& c : chunks_) memory_->release(c.p);
}

void Arena::add_chunk(size_t bytes) {
  Chunk c;
  c.bytes = bytes;
  c.p = memory_->allocate(bytes);
  chunks_.push_back(c);
  ++generation_;
}

void* Arena::take(size_t bytes) {
  const size_t n = align_up(bytes ? bytes : 1);
  if (chunks_.empty()) add_chunk(std::max(n, first_chunk_bytes_));
  while (off_ + n > chunks_[cur_].bytes) {  // on to the next chunk, made the first time a step needs it
    if (cur_ + 1 == chunks_.size()) add_chunk(std::max(n, chunks_.back().bytes));
    ++cur_;
    off_ = 0;
    last_used_ = std::max(last_used_, cur_);
  }
  void* p = static_cast<char*>(chunks_[cur_].p) + off_;
  off_ += n;
  return p;
}

void Arena::rewind(const Mark& m) {
  cur_ = m.chunk;
  off_ = m.offset;
}

void Arena::reset() {
  if (last_used_ > 0) {  // the last step spilled over: one chunk for all of it
    size_t total = 0;
    for (size_t i = 0; i <= last_used_ && i < chunks_.size(); ++i) total += chunks_[i].bytes;
    for (Chunk& c : chunks_) memory_->release(c.p);
    chunks_.clear();
    add_chunk(align_up(total + total / 4));  // headroom: a slightly longer step does not spill again
  }
  cur_ = off_ = last_used_ = 0;
}

size_t Arena::capacity() const {
  size_t n = 0;
  for (const Chunk& c : chunks_) n += c.bytes;
  return n;
}

}  // namespace ew
