// Arena: the scratch memory of one forward step (activations and op workspaces) in a
// backend's memory, bump-allocated from chunks that are reused step after step.
//  - take() bumps a pointer (256-byte aligned); when the current chunk is full it moves on
//    to the next chunk, allocating one only the first time a step needs it.
//  - mark() / rewind() let the forward pass give back a layer's intermediates before the
//    next layer, so a step needs its largest layer's scratch, not the sum over layers.
//  - reset() starts the next step; when the last step used more than one chunk it replaces
//    them by one chunk that holds them all (and a quarter more), so steady-state steps run in one chunk and
//    never allocate. Every replacement bumps generation(): addresses handed out before
//    (e.g. captured in a CUDA graph) are stale from then on.
// Memory comes from an ArenaMemory: host_arena_memory() here, device memory in
// memory/cuda/device_arena.h. Not thread-safe; reset() only once no work still uses it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace ew {

class ArenaMemory {
 public:
  virtual ~ArenaMemory() = default;
  virtual void* allocate(size_t bytes) = 0;  // throws ew::Error when refused
  virtual void release(void* p) = 0;
};

std::unique_ptr<ArenaMemory> host_arena_memory();

class Arena {
 public:
  struct Mark {
    size_t chunk = 0, offset = 0;
  };

  explicit Arena(std::unique_ptr<ArenaMemory> memory, size_t first_chunk_bytes = size_t{1} << 20);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  void* take(size_t bytes);
  template <typename T>
  T* take_n(int64_t n) {
    return static_cast<T*>(take(static_cast<size_t>(n) * sizeof(T)));
  }
  Mark mark() const { return {cur_, off_}; }
  void rewind(const Mark& m);
  void reset();

  uint64_t generation() const { return generation_; }
  size_t capacity() const;    // bytes in all chunks
  size_t chunks() const { return chunks_.size(); }

 private:
  struct Chunk {
    void* p = nullptr;
    size_t bytes = 0;
  };
  void add_chunk(size_t bytes);

  std::unique_ptr<ArenaMemory> memory_;
  size_t first_chunk_bytes_;
  std::vector<Chunk> chunks_;
  size_t cur_ = 0, off_ = 0;  // position: chunk index, offset in it
  size_t last_used_ = 0;      // highest chunk index this step reached
  uint64_t generation_ = 0;
};

}  // namespace ew
